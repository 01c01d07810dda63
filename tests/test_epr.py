"""Key findings in the EPR: KOS key images and rejection notes sent by storescu, the /epj/v1 API,
signed links to the key-image page, and the audit trail of every read."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
import httpx
import jwt
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from sqlalchemy import select

from bench.data import files, one_study
from storage.archive import Archive
from storage.models import AuditEvent
from tests.conftest import Broker
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import findscu, storescu
from tests.test_dimse import wait_instances

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

PATIENT = "BCT300"


def kos(images: list[Path], title: object, out: Path, description: str | None = None) -> Path:
    """A Key Object Selection document made by highdicom, as a workstation would send it."""
    refs = [dcmread(p, stop_before_pixels=True) for p in images]
    content = hd.ko.KeyObjectSelection(
        document_title=title,  # type: ignore[arg-type]
        referenced_objects=refs,
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name="Radiolog^Rita"
            ),
        ),
        description=description,
    )
    doc = hd.ko.KeyObjectSelectionDocument(
        evidence=refs,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pacsbroker-test",
    )
    doc.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []
    return out


@pytest.fixture
def ct300(broker_factory, tmp_path: Path) -> tuple[Broker, list[Path]]:
    b = broker_factory().start()
    ct = files(one_study(tmp_path, "ct300", 300, 64))
    assert storescu(b.dicom_port, ct).returncode == 0
    wait_instances(b, len(ct))
    return b, ct


def api(b: Broker, role: str = "epr", user: str = "dips-epj") -> httpx.Client:
    tok = b.cli("token", "--user", user, "--role", role).stdout.strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{b.http_port}/epj/v1",
        headers={"Authorization": f"Bearer {tok}"},
        timeout=60,
    )


def test_kos_key_images_reach_the_epr_and_rejections_hide(
    ct300: tuple[Broker, list[Path]], tmp_path: Path
) -> None:
    b, ct = ct300
    keys = [ct[41], ct[187]]
    note = kos(keys, codes.DCM.ForReferringProvider, tmp_path / "kos.dcm", "Lesjon i segment 7")
    assert storescu(b.dicom_port, [note]).returncode == 0
    wait_instances(b, len(ct) + 1)
    study = str(dcmread(ct[0]).StudyInstanceUID)

    with api(b) as epj:
        listing = epj.get(f"/patients/{PATIENT}/studies").json()
        (st,) = listing["studies"]
        assert st["study_uid"] == study and st["key_image_count"] == 2
        assert {k["sop_uid"] for k in st["key_images"]} == {
            str(dcmread(p).SOPInstanceUID) for p in keys
        }
        assert "Lesjon i segment 7" in st["finding_text"]
        assert st["key_images"][0]["title"] == "For Referring Provider"
        image = epj.get(st["key_images"][0]["image_url"].split("/epj/v1", 1)[1])
        assert image.headers["content-type"] == "image/jpeg"
        assert Image.open(BytesIO(image.content)).size == (64, 64)
        assert epj.get("/patients/NOBODY/studies").status_code == 404

    rejected = ct[5]
    head = dcmread(rejected, stop_before_pixels=True)
    bearer = {
        "Authorization": f"Bearer {b.cli('token', '--user', 'dr', '--role', 'clinician').stdout.strip()}"
    }
    rendered = (
        f"http://127.0.0.1:{b.http_port}/dicomweb/studies/{study}/series/"
        f"{head.SeriesInstanceUID}/instances/{head.SOPInstanceUID}/rendered"
    )
    assert httpx.get(rendered, headers=bearer).status_code == 200  # now in the render cache
    withdrawal = kos([rejected], codes.DCM.RejectedForQualityReasons, tmp_path / "rej.dcm")
    assert storescu(b.dicom_port, [withdrawal]).returncode == 0
    wait_instances(b, len(ct) + 2)
    sop = str(dcmread(rejected).SOPInstanceUID)
    # the next read after the rejection no longer finds it, cached image or not
    assert httpx.get(rendered, headers=bearer).status_code == 404
    answer = findscu(
        b.dicom_port,
        {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study, "SOPInstanceUID": sop},
    )
    assert answer == []
    qido = httpx.get(
        f"http://127.0.0.1:{b.http_port}/dicomweb/studies/{study}/instances",
        headers={
            "Authorization": f"Bearer {b.cli('token', '--user', 'dr', '--role', 'clinician').stdout.strip()}"
        },
    ).json()
    shown = {i["00080018"]["Value"][0] for i in qido}
    assert sop not in shown and str(dcmread(withdrawal).SOPInstanceUID) not in shown
    assert len(shown) == len(ct) - 1 + 1  # the other CT images and the key-image KOS


def test_signed_links_open_the_key_image_page_and_expire(
    ct300: tuple[Broker, list[Path]], tmp_path: Path
) -> None:
    b, ct = ct300
    note = kos([ct[10], ct[20]], codes.DCM.ForReferringProvider, tmp_path / "kos.dcm", "Funn")
    assert storescu(b.dicom_port, [note]).returncode == 0
    wait_instances(b, len(ct) + 1)
    with api(b) as epj:
        r = epj.post("/links", json={"clinician": "lege-lise", "patient_id": PATIENT})
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        bad = epj.post(
            "/links", json={"clinician": "x", "patient_id": PATIENT, "ttl_seconds": 99999}
        )
        assert bad.status_code == 422
    page = httpx.get(url)  # the link alone is the credential: no bearer token
    assert page.status_code == 200 and "Funn" in page.text
    images = [part.split('"', 1)[0] for part in page.text.split('<img src="')[1:]]
    assert len(images) == 2
    shown = httpx.get(images[0].replace("&amp;", "&"))
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"

    # the same link from the command line, for admins and scripts
    study = str(dcmread(ct[0]).StudyInstanceUID)
    for scope in ([], ["--study", study]):
        cli = b.cli("link", "--user", "lege-lise", "--patient", PATIENT, *scope)
        assert cli.returncode == 0, cli.stderr
        assert "Funn" in httpx.get(cli.stdout.strip(), follow_redirects=True).text
    named = b.cli("link", "--user", "lege-lise", "--patient", PATIENT, "--host", "pacs.example")
    assert named.stdout.startswith(f"http://pacs.example:{b.http_port}/epj/v1/open/")
    unknown = b.cli("link", "--user", "lege-lise", "--patient", "NOSUCH")
    assert unknown.returncode == 1 and "no such patient" in unknown.stderr
    assert unknown.stdout == ""

    key = (b.data_dir / "keys" / "signing.key").read_bytes()
    claims = jwt.decode(
        url.rsplit("/", 1)[1], key, algorithms=["HS256"], audience="pacsbroker-epr-link"
    )
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, key, algorithm="HS256")
    base = url.rsplit("/", 1)[0]
    gone = httpx.get(f"{base}/{expired}")
    assert gone.status_code == 401 and "utløpt" in gone.text and "<img" not in gone.text
    assert httpx.get(f"{base}/{expired}/images/x/y").status_code == 401
    forged = jwt.encode(claims, b"not-the-key" * 3, algorithm="HS256")
    assert httpx.get(f"{base}/{forged}?lang=en").status_code == 401
    other = jwt.encode({**claims, "pid": claims["pid"] + 999}, key, algorithm="HS256")
    assert httpx.get(images[0].replace(url.rsplit("/", 1)[1], other)).status_code == 403

    archive = Archive(b.settings())
    try:
        with archive.sessions() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.action.like("epr.%"))
            ).all()
    finally:
        archive.close()
    seen = {(e.action, e.actor) for e in events}
    assert ("epr.key-image-page", "lege-lise") in seen and ("epr.image", "lege-lise") in seen
    assert any(a.startswith("epr.link-issued") and u == "dips-epj" for a, u in seen)
    assert any(a == "epr.link-issued for lege-lise" and u.startswith("cli:") for a, u in seen)
    assert all(e.patient_id == PATIENT for e in events)


def test_iid_launches_the_viewer_behind_authentication(ct300: tuple[Broker, list[Path]]) -> None:
    b, ct = ct300
    study = str(dcmread(ct[0]).StudyInstanceUID)
    root = f"http://127.0.0.1:{b.http_port}"
    tok = b.cli("token", "--user", "lege-lise", "--role", "clinician").stdout.strip()
    auth = {"Authorization": f"Bearer {tok}"}
    iid = f"{root}/IHEInvokeImageDisplay"
    r = httpx.get(iid, params={"requestType": "STUDY", "studyUID": study}, headers=auth)
    assert r.status_code == 303 and r.headers["location"].endswith(f"/studies/{study}")
    viewer = httpx.get(r.headers["location"])
    assert viewer.status_code == 200 and 'id="view"' in viewer.text
    listing = httpx.get(r.headers["location"] + ".json").json()
    (series,) = listing["series"]
    assert len(series["instances"]) == len(ct) and listing["patient"]["id"] == PATIENT

    r = httpx.get(
        iid, params={"requestType": "PATIENT", "patientID": f"{PATIENT}^^^"}, headers=auth
    )
    assert r.status_code == 303 and "/studies/" not in r.headers["location"]
    assert httpx.get(r.headers["location"]).status_code == 200
    assert httpx.get(iid, params={"requestType": "STUDY"}, headers=auth).status_code == 400
    assert httpx.get(iid, params={"requestType": "STUDY", "studyUID": study}).status_code == 401


def test_marking_key_images_creates_a_valid_kos(
    ct300: tuple[Broker, list[Path]], tmp_path: Path
) -> None:
    b, ct = ct300
    study = str(dcmread(ct[0]).StudyInstanceUID)
    picked = [str(dcmread(p).SOPInstanceUID) for p in (ct[3], ct[250])]
    with api(b, role="radiologist", user="rita") as epj:
        r = epj.post(
            f"/studies/{study}/key-images",
            json={"sop_uids": picked, "title_code": "113002", "description": "Fraktur costa 7"},
        )
        assert r.status_code == 202, r.text
        kos_uid = r.json()["kos_sop_uid"]
        wait_instances(b, len(ct) + 1)
        (st,) = epj.get(f"/patients/{PATIENT}/studies").json()["studies"]
        assert {k["sop_uid"] for k in st["key_images"]} == set(picked)
        assert "Fraktur costa 7" in st["finding_text"]
        bad = epj.post(f"/studies/{study}/key-images", json={"sop_uids": ["1.2.3"]})
        assert bad.status_code == 404
        bad = epj.post(
            f"/studies/{study}/key-images", json={"sop_uids": picked, "title_code": "999"}
        )
        assert bad.status_code == 400
    web = httpx.Client(
        base_url=f"http://127.0.0.1:{b.http_port}/dicomweb",
        headers={
            "Authorization": f"Bearer {b.cli('token', '--user', 'x', '--role', 'clinician').stdout.strip()}"
        },
    )
    (meta,) = web.get(f"/studies/{study}/instances", params={"SOPInstanceUID": kos_uid}).json()
    series = meta["0020000E"]["Value"][0]
    raw = web.get(
        f"/studies/{study}/series/{series}/instances/{kos_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    body = raw.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
    path = tmp_path / "created-kos.dcm"
    path.write_bytes(body)
    assert dciodvfy_errors(path) == []
    assert dcmread(path).PatientID == PATIENT


def report(images: list[Path], text: str, out: Path) -> Path:
    """A Comprehensive SR with one TEXT finding about `images`, made by highdicom."""
    refs = [dcmread(p, stop_before_pixels=True) for p in images]
    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=hd.sr.CodedConcept("121071", "DCM", "Finding"),
                value=text,
                relationship_type="CONTAINS",
            )
        ]
    )
    doc = hd.sr.ComprehensiveSR(
        evidence=refs,
        content=root,
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pacsbroker-test",
    )
    doc.save_as(out, enforce_file_format=True)
    return out


def test_rejecting_a_kos_or_sr_takes_its_findings_out_of_the_epr(
    ct300: tuple[Broker, list[Path]], tmp_path: Path
) -> None:
    b, ct = ct300
    note = kos([ct[41]], codes.DCM.ForReferringProvider, tmp_path / "kos.dcm", "Feil pasient")
    sr = report([ct[41]], "Feilskrevet funn", tmp_path / "sr.dcm")
    assert storescu(b.dicom_port, [note, sr]).returncode == 0
    wait_instances(b, len(ct) + 2)
    with api(b) as epj:
        (st,) = epj.get(f"/patients/{PATIENT}/studies").json()["studies"]
        assert st["key_image_count"] == 1
        assert "Feil pasient" in st["finding_text"] and "Feilskrevet funn" in st["finding_text"]

        withdrawal = kos([note, sr], codes.DCM.RejectedForPatientSafetyReasons, tmp_path / "r.dcm")
        assert storescu(b.dicom_port, [withdrawal]).returncode == 0
        wait_instances(b, len(ct) + 3)
        (st,) = epj.get(f"/patients/{PATIENT}/studies").json()["studies"]
        assert st["key_image_count"] == 0 and st["key_images"] == []
        assert st["finding_text"] == ""


def test_only_the_epr_system_issues_links_for_someone_else(
    ct300: tuple[Broker, list[Path]],
) -> None:
    b, _ = ct300
    with api(b, role="clinician", user="lege-lise") as lise:
        r = lise.post("/links", json={"clinician": "dr-someone-else", "patient_id": PATIENT})
        assert r.status_code == 403 and "'epr'" in r.json()["detail"]
        own = lise.post("/links", json={"clinician": "lege-lise", "patient_id": PATIENT})
        assert own.status_code == 200, own.text
    with api(b, role="radiologist", user="rita") as rita:
        r = rita.post("/links", json={"clinician": "lege-lise", "patient_id": PATIENT})
        assert r.status_code == 403
    with api(b) as epj:
        issued = epj.post("/links", json={"clinician": "dr-other", "patient_id": PATIENT})
        assert issued.status_code == 200, issued.text
    assert httpx.get(own.json()["url"]).status_code == 200
    assert httpx.get(issued.json()["url"]).status_code == 200

    time.sleep(0.5)  # reads are audited in batches just after them
    archive = Archive(b.settings())
    try:
        with archive.sessions() as session:
            pages = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "epr.key-image-page")
            ).all()
    finally:
        archive.close()
    assert {(e.actor, e.detail) for e in pages} == {
        ("lege-lise", "link issued by lege-lise"),
        ("dr-other", "link issued by dips-epj"),
    }


def test_iid_opens_by_accession_number_and_answers_errors_as_pages(
    ct300: tuple[Broker, list[Path]],
) -> None:
    b, ct = ct300
    first = dcmread(ct[0])
    study, accession = str(first.StudyInstanceUID), str(first.AccessionNumber)
    iid = f"http://127.0.0.1:{b.http_port}/IHEInvokeImageDisplay"
    tok = b.cli("token", "--user", "lege-lise", "--role", "clinician").stdout.strip()
    auth = {"Authorization": f"Bearer {tok}"}

    r = httpx.get(iid, params={"requestType": "STUDY", "accessionNumber": accession}, headers=auth)
    assert r.status_code == 303 and r.headers["location"].endswith(f"/studies/{study}")
    assert 'id="view"' in httpx.get(r.headers["location"]).text
    cx = f"{PATIENT}^^^&2.16.578.1.12.4.1.4.1&ISO"
    r = httpx.get(iid, params={"requestType": "PATIENT", "patientID": cx}, headers=auth)
    assert r.status_code == 303 and httpx.get(r.headers["location"]).status_code == 200

    unknown = {"requestType": "STUDY", "accessionNumber": "NOSUCH"}
    r = httpx.get(iid, params=unknown, headers=auth)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Finner ikke" in r.text and '<html lang="nb"' in r.text
    r = httpx.get(iid, params={**unknown, "lang": "en"}, headers=auth)
    assert r.status_code == 404 and "No such patient or study" in r.text
    r = httpx.get(iid, params={"requestType": "STUDY"}, headers=auth)
    assert r.status_code == 400 and "accessionNumber" in r.text and "<h1>" in r.text
    r = httpx.get(iid, params={"requestType": "STUDY", "accessionNumber": accession})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "logget inn" in r.text
    research = b.cli("token", "--user", "forsker", "--role", "researcher").stdout.strip()
    r = httpx.get(iid, params=unknown, headers={"Authorization": f"Bearer {research}"})
    assert r.status_code == 403 and "tilgang" in r.text

    # a second study of the patient: a list of both opens the patient's page
    second = dcmread(ct[0])
    second.StudyInstanceUID, second.SeriesInstanceUID = generate_uid(), generate_uid()
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    second.AccessionNumber = "ACC-SECOND"
    second.save_as(ct[0].parent / "second.dcm")
    assert storescu(b.dicom_port, [ct[0].parent / "second.dcm"]).returncode == 0
    wait_instances(b, len(ct) + 1)
    both = {"requestType": "STUDY", "studyUID": f"{study},{second.StudyInstanceUID}"}
    r = httpx.get(iid, params=both, headers=auth)
    assert r.status_code == 303 and "/studies/" not in r.headers["location"]
    assert httpx.get(r.headers["location"]).text.count(str(second.StudyInstanceUID)) >= 1
    r = httpx.get(iid, params={**both, "studyUID": f"{study},1.2.3.4.5"}, headers=auth)
    assert r.status_code == 404 and "1.2.3.4.5" in r.text
    conflict = {"requestType": "STUDY", "studyUID": study, "accessionNumber": "ACC-SECOND"}
    r = httpx.get(iid, params=conflict, headers=auth)
    assert r.status_code == 400 and "different studies" in r.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_frames_out_of_range_and_study_and_series_thumbnails(
    ct300: tuple[Broker, list[Path]],
) -> None:
    b, ct = ct300
    headers = [dcmread(p, stop_before_pixels=True) for p in ct]
    first = headers[0]
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    with api(b) as epj:
        r = epj.get(f"/studies/{study}/key-images/{first.SOPInstanceUID}/image?frame=2")
        assert r.status_code == 400 and "frame 2 out of range" in r.json()["detail"]

    tok = b.cli("token", "--user", "lege-lise", "--role", "clinician").stdout.strip()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{b.http_port}/dicomweb",
        headers={"Authorization": f"Bearer {tok}"},
        timeout=60,
    ) as web:
        inst = f"/studies/{study}/series/{series}/instances/{first.SOPInstanceUID}"
        assert web.get(f"{inst}/frames/2/rendered").status_code == 400
        middle = sorted(headers, key=lambda d: int(d.InstanceNumber))[len(headers) // 2]
        mid = web.get(
            f"/studies/{study}/series/{series}/instances/{middle.SOPInstanceUID}/thumbnail"
        )
        assert mid.status_code == 200
        for level in (f"/studies/{study}", f"/studies/{study}/series/{series}"):
            thumb = web.get(f"{level}/thumbnail")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            assert thumb.content == mid.content
            rendered = web.get(f"{level}/rendered")
            assert rendered.status_code == 406 and "thumbnail" in rendered.json()["detail"]
        assert web.get("/studies/1.2.3.999/thumbnail").status_code == 404
