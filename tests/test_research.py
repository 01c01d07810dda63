"""Research and teaching archives against a real broker: de-identified exports into their own
database and bucket (CLI and durable job), the project's DICOMweb view with dicomweb-client,
the ZIP with a DICOMDIR, re-identification, teaching notes, and who may read what."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError
from sqlalchemy import select

from storage.archive import Archive
from storage.models import AuditEvent
from tests.conftest import SAMPLES, Broker
from tests.dciodvfy import errors as dciodvfy_errors
from tests.test_deid import assert_clean, encapsulated_pdf, identity, walk
from tests.test_dicomweb import send, token
from tests.test_dimse import wait_instances

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

ALL = sorted(SAMPLES.rglob("*.dcm"))
KARI_CT, OLA_CR, OLA_US, AASE_MR = (
    str(dcmread(next((SAMPLES / d).glob("*.dcm"))).StudyInstanceUID)
    for d in ("kari-ct", "ola-cr", "ola-us", "aase-mr")
)
ADMIN = "radiology-admin"


def burned_in_us(folder: Path) -> Path:
    """A second ultrasound image in Ola's study whose pixels carry annotation."""
    ds = dcmread(SAMPLES / "ola-us" / "us-0000.dcm")
    ds.BurnedInAnnotation = "YES"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 2
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "us-burned.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def loaded(broker_factory: Any, tmp_path: Path) -> tuple[Broker, Path]:
    b = broker_factory().start()
    burned = burned_in_us(tmp_path / "burned")
    send(b, SAMPLES)
    send(b, burned.parent)
    wait_instances(b, len(ALL) + 1)
    return b, burned


def http(b: Broker, role: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(b, role)}"} if role else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{b.http_port}", headers=headers, timeout=120)


def cli_json(b: Broker, *args: str) -> Any:
    r = b.cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def research_client(b: Broker, project: str, role: str) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"http://127.0.0.1:{b.http_port}/research/{project}/dicomweb",
        headers={"Authorization": f"Bearer {token(b, role)}"},
    )


def run_job(admin: httpx.Client, project: str, body: dict[str, Any]) -> dict[str, Any]:
    r = admin.post(f"/api/v1/admin/research/projects/{project}/exports", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        job = admin.get(f"/api/v1/admin/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            assert job["state"] == "succeeded", job
            return dict(job["result"])
        time.sleep(0.3)
    raise TimeoutError(f"export job {job_id} did not finish")


def studies_by_modality(web: DICOMwebClient) -> dict[str, dict[str, Any]]:
    out = {}
    for s in web.search_for_studies(fields=["ModalitiesInStudy", "StudyDate"]):
        out[s["00080061"]["Value"][0]] = s
    return out


def test_research_export_view_and_access(loaded: tuple[Broker, Path], tmp_path: Path) -> None:
    b, burned = loaded
    research_dir = b.data_dir / "research"
    create: tuple[str, ...] = ("research", "create", "--title", "Lung nodules")
    create += ("--owner", "dr-forsker", "--purpose", "Growth of lung nodules")
    create += ("--expires", "2099-12-31")
    cli_json(b, *create, "lungs", "--approval", "REK 2025/12345")
    cli_json(b, *create, "other", "--approval", "REK 2025/99")

    # export of 3 studies from the CLI, then again: the second run finds it all done
    args = ("research", "export", "lungs", "--json")
    studies = ("--study", KARI_CT, "--study", OLA_CR, "--study", AASE_MR)
    first = cli_json(b, *args, *studies)
    assert (first["studies"], first["exported"], first["held_back"]) == (3, 16, [])
    again = cli_json(b, *args, *studies)
    assert (again["exported"], again["already"]) == (0, 16)

    # Ola's ultrasound study as a durable job: the burned-in image is held back and listed
    with http(b, ADMIN) as admin:
        result = run_job(admin, "lungs", {"study_uids": [OLA_US]})
        assert result["exported"] == 1
        assert [h["sop_uid"] for h in result["held_back"]] == [str(dcmread(burned).SOPInstanceUID)]
        assert "burned-in" in result["held_back"][0]["reason"]
        listed = admin.get("/api/v1/admin/research/projects/lungs/held-back").json()
        assert str(dcmread(burned).SOPInstanceUID) in listed[0]["detail"]
    cli_json(b, "research", "export", "other", "--json", "--study", OLA_CR)

    # every exported object passes dciodvfy and carries nothing of the source
    strings, uids = identity([*ALL, burned])
    stored = sorted((research_dir / "archive").rglob("*.dcm"))
    assert len(stored) == 16 + 1 + 1
    for path in stored:
        assert dciodvfy_errors(path) == [], path
        assert_clean(path.read_bytes(), strings, uids)

    # the project's read-only DICOMweb view, with an independent client
    web = research_client(b, "lungs", "research:lungs")
    found = studies_by_modality(web)
    assert sorted(found) == ["CR", "CT", "MR", "US"]
    retrieved = 0
    for study in found.values():
        uid = study["0020000D"]["Value"][0]
        for ds in web.retrieve_study(uid, media_types=(("application/dicom", "*"),)):
            retrieved += 1
            for elem in walk(ds):
                text = str(elem.value) if elem.VR not in ("OB", "OW", "UN") else ""
                assert not any(s in text for s in strings | uids), elem
    assert retrieved == 17
    patient = {m: s["00100020"]["Value"][0] for m, s in found.items()}
    assert patient["CR"] == patient["US"]  # Ola, exported twice: one pseudonym
    assert len({patient["CR"], patient["CT"], patient["MR"]}) == 3
    other = studies_by_modality(research_client(b, "other", "research:other"))
    assert other["CR"]["00100020"]["Value"][0] != patient["CR"]  # another project, another

    # intervals between a patient's studies are kept, the dates themselves are not
    def day(s: dict[str, Any]) -> dt.date:
        return dt.datetime.strptime(s["00080020"]["Value"][0], "%Y%m%d").date()

    assert (day(found["US"]) - day(found["CR"])).days == (
        dt.date(2025, 1, 15) - dt.date(2023, 11, 20)
    ).days
    assert day(found["CR"]) != dt.date(2023, 11, 20)

    # who may read what
    clinician = DICOMwebClient(
        url=f"http://127.0.0.1:{b.http_port}/research/lungs/dicomweb",
        headers={"Authorization": f"Bearer {token(b, 'clinician')}"},
    )
    with pytest.raises(HTTPError) as denied:
        clinician.search_for_studies()
    assert denied.value.response is not None and denied.value.response.status_code == 403
    with http(b, None) as anonymous:
        assert anonymous.get("/research/lungs/dicomweb/studies").status_code == 401
    with http(b, "research:lungs") as researcher:
        assert researcher.get("/dicomweb/studies").status_code == 403
        assert researcher.get("/epj/v1/patients/03914802244/studies").status_code == 403
        assert researcher.get("/research/other/dicomweb/studies").status_code == 403
        assert researcher.get("/api/v1/admin/research/projects").status_code == 403
        # the ZIP: a DICOM File-set any media reader opens
        r = researcher.get("/research/lungs/studies.zip")
        assert r.status_code == 200, r.text
        unpacked = tmp_path / "zip"
        zipfile.ZipFile(io.BytesIO(r.content)).extractall(unpacked)
        fs = FileSet(unpacked / "DICOMDIR")
        assert len(fs) == 17
        assert {str(i.PatientID) for i in fs} == set(patient.values())
    with http(b, "clinician") as clinical:
        assert len(clinical.get("/dicomweb/studies").json()) == 4  # research copies stay apart

    # re-identification: admins only, with the key, audited
    with http(b, ADMIN) as admin:
        r = admin.post(
            "/api/v1/admin/research/projects/lungs/reidentify", json={"pseudonym": patient["CR"]}
        )
        assert r.status_code == 200, r.text
        who = r.json()
        assert who["patient_id"] == str(dcmread(SAMPLES / "ola-cr" / "cr-0000.dcm").PatientID)
        assert {s["clinical"] for s in who["studies"]} == {OLA_CR, OLA_US}
        assert {s["research"] for s in who["studies"]} == {
            found["CR"]["0020000D"]["Value"][0],
            found["US"]["0020000D"]["Value"][0],
        }
    with http(b, "research:lungs") as researcher:
        r = researcher.post(
            "/api/v1/admin/research/projects/lungs/reidentify", json={"pseudonym": patient["CR"]}
        )
        assert r.status_code == 403
    clinical_archive = Archive(b.settings())
    with clinical_archive.sessions() as session:
        actions = [
            (e.action, e.study_uid)
            for e in session.scalars(select(AuditEvent).where(AuditEvent.action.like("research.%")))
        ]
    clinical_archive.close()
    assert {s for a, s in actions if a == "research.export"} == {KARI_CT, OLA_CR, AASE_MR, OLA_US}
    assert ("research.held-back", OLA_US) in actions
    assert any(a == "research.reidentify" for a, _ in actions)
    assert (research_dir / "research.db").exists()


def test_teaching_collection(loaded: tuple[Broker, Path]) -> None:
    b, _ = loaded
    with http(b, ADMIN) as admin:
        r = admin.post(
            "/api/v1/admin/research/projects",
            json={
                "project": "thorax-teaching",
                "kind": "teaching",
                "title": "Thorax CT",
                "owner": "dr-lærer",
                "purpose": "Teaching chest radiology",
                "expires": "2099-12-31",
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["role"] == "teaching:thorax-teaching"
        bare = {"project": "no-approval", "title": "x", "owner": "y"}
        bounded = {**bare, "purpose": "z", "expires": "2099-12-31"}
        assert (
            admin.post("/api/v1/admin/research/projects", json=bounded).status_code == 409
        )  # a research project needs its ethics approval reference
        run_job(admin, "thorax-teaching", {"filters": {"ModalitiesInStudy": "CT"}})
    with http(b, "teaching:thorax-teaching") as teacher:
        studies = teacher.get("/research/thorax-teaching/teaching").json()["studies"]
        assert len(studies) == 1 and studies[0]["modalities"] == ["CT"]
        note = {
            "study_uid": studies[0]["study_uid"],
            "text": "Classic solitary nodule, right upper lobe.",
            "codes": [["RID3875", "RADLEX", "nodule"]],
        }
        assert (
            teacher.post("/research/thorax-teaching/teaching/notes", json=note).status_code == 201
        )
        listed = teacher.get("/research/thorax-teaching/teaching").json()["studies"][0]
        assert listed["notes"][0]["text"] == note["text"]
        assert listed["notes"][0]["codes"] == [
            {"value": "RID3875", "scheme": "RADLEX", "meaning": "nodule"}
        ]
        page = teacher.get("/research/thorax-teaching/teaching.html")
        assert page.status_code == 200 and "teaching" in page.text
        first = teacher.get("/research/thorax-teaching/dicomweb/instances").json()[0]
        ids = [first[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018")]
        thumb = teacher.get(
            "/research/thorax-teaching/dicomweb/studies/{}/series/{}/instances/{}/thumbnail".format(
                *ids
            )
        )
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with http(b, "research:thorax-teaching") as wrong_kind:
        assert wrong_kind.get("/research/thorax-teaching/teaching").status_code == 403


def test_research_store_is_its_own_bucket(minio: Any, tmp_path: Path) -> None:
    from storage.research.archive import NotSeparate, ResearchArchive
    from storage.research.keys import KeyStore
    from storage.settings import Settings

    env = minio.env("pacs-clinical")
    common = {
        "data_dir": tmp_path,
        "s3_endpoint": env["PACSBROKER_S3_ENDPOINT"],
        "s3_access_key": env["PACSBROKER_S3_ACCESS_KEY"],
        "s3_secret_key": env["PACSBROKER_S3_SECRET_KEY"],
        "s3_bucket": "pacs-clinical",
    }
    research = ResearchArchive(Settings(**common))
    clinical = Archive(Settings(**common), run_migrations=True)
    try:
        assert research.store.name.endswith("/pacs-research")
        research.store.put("a/b.dcm", b"research")
        assert research.store.get("a/b.dcm") == b"research"
        assert not clinical.store.exists("a/b.dcm")
        assert str(research.engine.url) != str(clinical.engine.url)
    finally:
        research.close()
        clinical.close()
    with pytest.raises(NotSeparate):
        ResearchArchive(Settings(**{**common, "research_s3_bucket": "pacs-clinical"}))
    with pytest.raises(NotSeparate):
        url = f"sqlite:///{tmp_path / 'same.db'}"
        ResearchArchive(Settings(**{**common, "database_url": url, "research_database_url": url}))
    keys = KeyStore(tmp_path)
    keys.create("lungs")
    key_file = tmp_path / "keys" / "research" / "lungs.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.parent.stat().st_mode & 0o777 == 0o700
    assert not list((tmp_path / "research").rglob("*.key"))


def test_research_roles_cannot_read_the_clinical_status(broker_factory: Any) -> None:
    b = broker_factory().start()
    for role in ("research:lungs", "teaching:thorax"):
        with http(b, role) as outsider:
            assert outsider.get("/api/v1/status").status_code == 403
    for role in ("clinician", ADMIN):
        with http(b, role) as reader:
            r = reader.get("/api/v1/status")
            assert r.status_code == 200 and "archive" in r.json()
    with http(b, None) as anonymous:
        assert anonymous.get("/api/v1/status").status_code == 401


def test_projects_need_purpose_and_expiry(broker_factory: Any) -> None:
    b = broker_factory().start()
    create = ("research", "create", "other", "--title", "x", "--owner", "y", "--approval", "REK 2")
    for missing in ("--expires", "--purpose"):
        given = {"--expires": "2099-12-31", "--purpose": "Growth of lung nodules"}
        given.pop(missing)
        r = b.cli(*create, *(a for pair in given.items() for a in pair))
        assert r.returncode == 2 and missing in r.stderr, r.stderr
    body = {"project": "other", "title": "x", "owner": "y", "approval": "REK 2"}
    with http(b, ADMIN) as admin:
        for extra in (
            {"purpose": "z"},
            {"expires": "2099-12-31"},
            {"purpose": " ", "expires": "2099-12-31"},
        ):
            r = admin.post("/api/v1/admin/research/projects", json={**body, **extra})
            assert r.status_code == 422, r.text
        assert admin.get("/api/v1/admin/research/projects").json() == []


def test_encapsulated_documents_only_where_the_project_allows_them(
    broker_factory: Any, tmp_path: Path
) -> None:
    b = broker_factory().start()
    kari = next((SAMPLES / "kari-ct").glob("*.dcm"))
    pdf = encapsulated_pdf(kari, tmp_path / "doc", "Referral for Nordmann Kari, 12846101282")
    send(b, pdf.parent)
    wait_instances(b, 1)
    create = ("research", "create", "--owner", "o", "--purpose", "Referrals", "--approval", "R 1")
    until = ("--expires", "2099-12-31")
    cli_json(b, *create, *until, "plain", "--title", "Images only")
    allow = ("--title", "Letters", "--allow-encapsulated-documents")
    letters = cli_json(b, *create, *until, "letters", *allow)
    assert "allow_encapsulated_documents" in letters["options"]
    study = ("--json", "--study", str(dcmread(pdf).StudyInstanceUID))
    held = cli_json(b, "research", "export", "plain", *study)
    assert held["exported"] == 0 and len(held["held_back"]) == 1
    assert "encapsulated PDF document" in held["held_back"][0]["reason"]
    assert not list((b.data_dir / "research" / "archive").rglob("*.dcm"))
    taken = cli_json(b, "research", "export", "letters", *study)
    assert taken["exported"] == 1 and taken["held_back"] == []
    (out,) = (b.data_dir / "research" / "archive").rglob("*.dcm")
    assert dcmread(out).EncapsulatedDocument == dcmread(pdf).EncapsulatedDocument
