"""DICOMweb against a real broker: QIDO-RS, WADO-RS (retrieve, metadata, bulk data, frames),
STOW-RS, access control, and Orthanc's DICOMweb plugin as an independent client."""

from __future__ import annotations

import time
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_frames
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from python_multipart import MultipartParser
from sqlalchemy import select

from storage.archive import Archive
from storage.models import AuditEvent, Patient
from tests.conftest import SAMPLES, Broker
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import storescu
from tests.orthanc import Orthanc
from tests.test_dimse import by_syntax, same_object, wait_instances
from viewer.render import View, render

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

ALL = sorted(SAMPLES.rglob("*.dcm"))
KARI_CT = sorted((SAMPLES / "kari-ct").glob("*.dcm"))
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def token(b: Broker, role: str, user: str = "dr-test") -> str:
    return b.cli("token", "--user", user, "--role", role).stdout.strip()


def client(b: Broker, role: str = "clinician") -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{b.http_port}/dicomweb",
        headers={"Authorization": f"Bearer {token(b, role)}"},
        timeout=60,
    )


def multipart(resp: httpx.Response) -> list[tuple[str, bytes]]:
    """Split a multipart/related body with an independent parser (python-multipart)."""
    ctype = resp.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary")
    )
    parts: list[tuple[str, bytes]] = []
    current: dict[str, Any] = {}

    def begin() -> None:
        current.update(headers=b"", data=bytearray())

    def header(data: bytes, s: int, e: int) -> None:
        current["headers"] += data[s:e] + b"\n"

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": header,
            "on_header_value": header,
            "on_part_data": lambda d, s, e: current["data"].extend(d[s:e]),
            "on_part_end": lambda: parts.append(
                (current["headers"].decode(), bytes(current["data"]))
            ),
        },
    )
    parser.write(resp.content)
    parser.finalize()
    return parts


def stow_body(files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f + b"\r\n"
        for f in files
    ]
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def renumbered(src: Path, study: str) -> bytes:
    """A sample copied into another study with fresh UIDs, as a new upload would be."""
    ds = dcmread(src)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def loaded(broker_factory) -> Broker:
    b = broker_factory().start()
    send(b, SAMPLES)
    wait_instances(b, len(ALL))
    return b


def send(b: Broker, root: Path) -> None:
    for ts, files in by_syntax(root).items():
        assert storescu(b.dicom_port, files, ts).returncode == 0


def test_qido_wado_metadata_frames_and_access(loaded: Broker, tmp_path: Path) -> None:
    b = loaded
    kari = dcmread(KARI_CT[0], stop_before_pixels=True)
    study = str(kari.StudyInstanceUID)
    with client(b) as web:
        studies = web.get("/studies").json()
        assert len(studies) == len({str(dcmread(p).StudyInstanceUID) for p in ALL})
        found = web.get("/studies", params={"PatientID": kari.PatientID}).json()
        assert [s["0020000D"]["Value"][0] for s in found] == [study]
        assert found[0]["00100010"]["Value"][0]["Alphabetic"] == str(kari.PatientName)
        assert found[0]["00201208"]["Value"][0] == len(KARI_CT)
        assert found[0]["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{study}")
        assert web.get("/studies", params={"PatientName": "nobody*"}).json() == []
        page = web.get("/studies", params={"limit": 1, "offset": 1}).json()
        assert len(page) == 1 and page[0] != studies[0]

        series = web.get(f"/studies/{study}/series").json()
        assert len(series) == len({str(dcmread(p).SeriesInstanceUID) for p in KARI_CT})
        one = series[0]["0020000E"]["Value"][0]
        insts = web.get(f"/studies/{study}/series/{one}/instances").json()
        assert all(i["0020000E"]["Value"][0] == one for i in insts)
        full = web.get(f"/studies/{study}/instances", params={"includefield": "all"}).json()
        assert all("00180050" in i or "00280010" in i for i in full)  # stored attributes
        assert web.get("/studies", params={"NoSuchKeyword": "x"}).status_code == 400

        # WADO-RS retrieve, as stored: every data set as archived from the C-STORE
        resp = web.get(f"/studies/{study}", headers={"Accept": ANY_SYNTAX})
        assert resp.status_code == 200
        got = {dcmread_bytes(body).SOPInstanceUID: body for _, body in multipart(resp)}
        assert len(got) == len(KARI_CT)
        for p in KARI_CT:
            out = tmp_path / p.name
            out.write_bytes(got[dcmread(p).SOPInstanceUID])
            same_object(p, out)

        # default Accept: explicit VR little endian, pixels equal to the original's
        originals = {str(dcmread(p).SOPInstanceUID): p for p in KARI_CT}
        resp = web.get(f"/studies/{study}")
        for _, body in multipart(resp):
            ds = dcmread_bytes(body)
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            original = dcmread(originals[ds.SOPInstanceUID])
            assert (ds.pixel_array == original.pixel_array).all()
            converted = tmp_path / f"elvr-{ds.SOPInstanceUID}.dcm"
            converted.write_bytes(body)
            assert dciodvfy_errors(converted) == []
        assert (
            web.get(f"/studies/{study}", headers={"Accept": "application/json"}).status_code == 406
        )
        assert web.get("/studies/1.2.3.4").status_code == 404

        # metadata from the index, with bulk data and frames that match the object
        native = next(
            p for p in KARI_CT if read_file_meta_info(p).TransferSyntaxUID == ExplicitVRLittleEndian
        )
        ds = dcmread(native)
        path = f"/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        (meta,) = web.get(f"{path}/metadata").json()
        assert meta["00080018"]["Value"][0] == ds.SOPInstanceUID
        bulk_uri = meta["7FE00010"]["BulkDataURI"]
        bulk = web.get(bulk_uri.split("/dicomweb", 1)[1])
        assert multipart(bulk)[0][1] == ds.PixelData
        frame = multipart(web.get(f"{path}/frames/1"))
        assert frame[0][1] == ds.PixelData
        assert web.get(f"{path}/frames/9").status_code == 404

        # rendered, as the viewer and the EPR show it
        png = web.get(f"{path}/rendered", headers={"Accept": "image/png"})
        assert png.headers["content-type"] == "image/png"
        assert png.content == render(ds, View(fmt="png"))
        jpeg = Image.open(BytesIO(web.get(f"{path}/frames/1/rendered").content))
        assert jpeg.format == "JPEG" and jpeg.size == (ds.Columns, ds.Rows)
        thumb = Image.open(
            BytesIO(web.get(f"{path}/thumbnail", params={"viewport": "32,32"}).content)
        )
        assert max(thumb.size) == 32
        lung = web.get(
            f"{path}/rendered", params={"window": "lung"}, headers={"Accept": "image/png"}
        )
        assert lung.content != png.content
        assert web.get(f"{path}/rendered", params={"window": "x"}).status_code == 400

        # WADO-URI, as older EPRs and viewers call it
        uri = {
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": str(ds.SeriesInstanceUID),
            "objectUID": str(ds.SOPInstanceUID),
        }
        part10 = web.get("/wado", params={**uri, "contentType": "application/dicom"})
        assert part10.headers["content-type"] == "application/dicom"
        assert dcmread_bytes(part10.content).PixelData == ds.PixelData
        assert web.get("/wado", params=uri).headers["content-type"] == "image/jpeg"
        assert web.get("/wado", params={**uri, "requestType": "X"}).status_code == 400

    # security: no token, a forged token, a role without clinical access
    base = f"http://127.0.0.1:{b.http_port}/dicomweb"
    assert httpx.get(f"{base}/studies").status_code == 401
    forged = {"Authorization": "Bearer " + token(b, "clinician")[:-4] + "AAAA"}
    assert httpx.get(f"{base}/studies", headers=forged).status_code == 401
    with client(b, role="research-project-7") as research:
        assert research.get("/studies").status_code == 403

    archive = Archive(b.settings())
    try:
        with archive.sessions() as session:
            reads = session.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "dicomweb.retrieve", AuditEvent.study_uid == study
                )
            ).all()
    finally:
        archive.close()
    assert reads and all(
        e.actor == "dr-test" and e.patient_id == kari.PatientID and e.source for e in reads
    )


def dcmread_bytes(body: bytes) -> Any:
    return dcmread(BytesIO(body))


def test_stow_rs_stores_reports_and_refuses(broker_factory) -> None:
    b = broker_factory({"PACSBROKER_STOW_MAX_MB": "1"}).start()
    study = generate_uid()
    good = [renumbered(p, study) for p in KARI_CT[:2]]
    with client(b, role="epr") as web:
        body, ctype = stow_body(good)
        r = web.post(f"/studies/{study}", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        refs = r.json()["00081199"]["Value"]
        assert len(refs) == 2 and all("00081190" in x for x in refs)

        body, ctype = stow_body([renumbered(KARI_CT[2], study), b"not dicom at all" * 20])
        r = web.post("/studies", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 202
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"][0] == 0xC000

        other = renumbered(KARI_CT[3], generate_uid())
        body, ctype = stow_body([other])
        r = web.post(f"/studies/{study}", content=body, headers={"Content-Type": ctype})
        assert r.status_code == 409
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"][0] == 0xA900

        r = web.post("/studies", content=b"x", headers={"Content-Type": "application/dicom"})
        assert r.status_code == 415
        body, ctype = stow_body([bytes(2 << 20)])
        assert (
            web.post("/studies", content=body, headers={"Content-Type": ctype}).status_code == 413
        )

    with client(b, role="clinician") as reader:
        body, ctype = stow_body(good)
        assert (
            reader.post("/studies", content=body, headers={"Content-Type": ctype}).status_code
            == 403
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            found = reader.get(f"/studies/{study}/instances").json()
            if len(found) == 3:
                break
            time.sleep(0.3)
        assert len(found) == 3  # the two good uploads and the good half of the mixed one


def test_orthanc_is_a_dicomweb_client_of_the_broker(broker_factory, tmp_path: Path) -> None:
    b = broker_factory().start()
    send(b, SAMPLES / "kari-ct")
    wait_instances(b, len(KARI_CT))
    study = str(dcmread(KARI_CT[0]).StudyInstanceUID)
    orthanc = Orthanc(tmp_path / "orthanc")
    server = {
        "Url": f"http://127.0.0.1:{b.http_port}/dicomweb/",
        "HttpHeaders": {"Authorization": f"Bearer {token(b, 'radiologist', 'orthanc')}"},
    }
    orthanc.start(
        {},
        extra={
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": {"Enable": True, "Servers": {"broker": server}},
        },
    )
    try:
        # QIDO-RS through Orthanc
        answer = orthanc.post("/dicom-web/servers/broker/get", {"Uri": "/studies"})
        assert [s["0020000D"]["Value"][0] for s in answer] == [study]
        # WADO-RS retrieve into Orthanc: every instance arrives
        orthanc.post("/dicom-web/servers/broker/retrieve", {"Resources": [{"Study": study}]})
        assert len(orthanc.get("/instances")) == len(KARI_CT)
        # STOW-RS from Orthanc: a new study uploaded to the broker
        new_study = generate_uid()
        uploaded = orthanc.upload_bytes(renumbered(KARI_CT[0], new_study))
        orthanc.post("/dicom-web/servers/broker/stow", {"Resources": [uploaded["ID"]]})
        wait_instances(b, len(KARI_CT) + 1)
    finally:
        orthanc.stop()


def test_dicomweb_client_library_searches_retrieves_and_stores(loaded: Broker) -> None:
    """dicomweb-client, an independent implementation of the client side of PS3.18."""
    from dicomweb_client.api import DICOMwebClient

    b = loaded
    web = DICOMwebClient(
        url=f"http://127.0.0.1:{b.http_port}/dicomweb",
        headers={"Authorization": f"Bearer {token(b, 'radiologist')}"},
    )
    native = next(
        p for p in KARI_CT if read_file_meta_info(p).TransferSyntaxUID == ExplicitVRLittleEndian
    )
    sent = dcmread(native)
    study, series, sop = sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID
    found = web.search_for_studies(search_filters={"PatientID": sent.PatientID})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert len(web.search_for_instances(study_instance_uid=study)) == len(KARI_CT)

    got = web.retrieve_instance(study, series, sop)
    assert got.SOPInstanceUID == sop and got.PixelData == sent.PixelData
    metadata = web.retrieve_study_metadata(study)
    assert {m["00080018"]["Value"][0] for m in metadata} == {
        str(dcmread(p).SOPInstanceUID) for p in KARI_CT
    }
    (frame,) = web.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
    assert frame == sent.PixelData

    new_study = generate_uid()
    upload = dcmread_bytes(renumbered(native, new_study))
    answer = web.store_instances([upload])
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == upload.SOPInstanceUID
    wait_instances(b, len(ALL) + 1)
    assert web.search_for_studies(search_filters={"StudyInstanceUID": new_study})


def test_includefield_all_shows_the_registry_patient_module(broker_factory) -> None:
    b = broker_factory().start()
    assert storescu(b.dicom_port, KARI_CT[:2]).returncode == 0
    wait_instances(b, 2)
    archive = Archive(b.settings())
    try:
        with archive.sessions() as session, session.begin():
            (patient,) = session.scalars(select(Patient)).all()
            # as an ADT A08 from PAS would: the stored headers keep the old values
            patient.name, patient.birth_date = "Nordmann^Kari^Elisabeth", "19610413"
    finally:
        archive.close()
    study = str(dcmread(KARI_CT[0]).StudyInstanceUID)
    with client(b) as web:
        for path in (f"/studies/{study}/series", f"/studies/{study}/instances"):
            answers = web.get(path, params={"includefield": "all"}).json()
            named = web.get(path, params={"includefield": "PatientName,PatientBirthDate"}).json()
            assert answers and len(answers) == len(named)
            for full, one in zip(answers, named, strict=True):
                assert full["00100010"] == one["00100010"]
                assert full["00100010"]["Value"][0]["Alphabetic"] == "Nordmann^Kari^Elisabeth"
                assert full["00100030"]["Value"] == ["19610413"]
        (meta, *_) = web.get(f"/studies/{study}/metadata").json()
        assert meta["00100010"]["Value"][0]["Alphabetic"] == "Nordmann^Kari^Elisabeth"


J2K = SAMPLES / "kari-ct" / "ct-s6-0000.dcm"  # JPEG 2000 lossless
RLE = SAMPLES / "kari-ct" / "ct-s5-0000.dcm"
US = SAMPLES / "ola-us" / "us-0000.dcm"  # JPEG baseline, 128x96
JPEG_LS = "1.2.840.10008.1.2.4.80"


@pytest.fixture
def compressed(broker_factory) -> Broker:
    """A broker holding one JPEG 2000, one RLE and one JPEG baseline object."""
    b = broker_factory().start()
    send(b, SAMPLES / "kari-ct")
    send(b, SAMPLES / "ola-us")
    wait_instances(b, len(KARI_CT) + 1)
    return b


def instance_path(p: Path) -> str:
    ds = dcmread(p, stop_before_pixels=True)
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def part_syntax(headers: str) -> str:
    return headers.split("transfer-syntax=")[1].split()[0].strip()


def test_retrieve_answers_only_in_a_syntax_the_client_accepts(compressed: Broker) -> None:
    path = instance_path(J2K)
    ls_only = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}'
    with client(compressed) as web:
        assert web.get(path, headers={"Accept": ls_only}).status_code == 406
        # the first acceptable range by q-value wins: JPEG-LS cannot be made, ELVR can
        ranked = (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90;'
            f" q=0.2, {ls_only}, "
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1;q=0.5'
        )
        ((headers, body),) = multipart(web.get(path, headers={"Accept": ranked}))
        assert part_syntax(headers) == ExplicitVRLittleEndian
        got = dcmread_bytes(body)
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (got.pixel_array == dcmread(J2K).pixel_array).all()
        as_stored = multipart(web.get(path, headers={"Accept": ANY_SYNTAX}))
        assert part_syntax(as_stored[0][0]) == "1.2.840.10008.1.2.4.90"

        ds = dcmread(J2K, stop_before_pixels=True)
        uri = {
            "requestType": "WADO",
            "studyUID": str(ds.StudyInstanceUID),
            "seriesUID": str(ds.SeriesInstanceUID),
            "objectUID": str(ds.SOPInstanceUID),
            "contentType": "application/dicom",
        }
        assert web.get("/wado", params={**uri, "transferSyntax": JPEG_LS}).status_code == 406
        implicit = web.get("/wado", params={**uri, "transferSyntax": "1.2.840.10008.1.2"})
        assert dcmread_bytes(implicit.content).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def stored_frame(p: Path) -> bytes:
    ds = dcmread(p)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def native_pixels(p: Path) -> bytes:
    pixels = dcmread(p).pixel_array
    return bytes(pixels.astype(pixels.dtype.newbyteorder("<")).tobytes())


def test_frames_follow_the_accept_header(compressed: Broker) -> None:
    path = instance_path(J2K) + "/frames/1"
    with client(compressed) as web:
        jp2 = web.get(path, headers={"Accept": 'multipart/related; type="image/jp2"'})
        assert jp2.status_code == 200 and 'type="image/jp2"' in jp2.headers["content-type"]
        ((headers, body),) = multipart(jp2)
        assert "image/jp2" in headers and part_syntax(headers) == "1.2.840.10008.1.2.4.90"
        assert body == stored_frame(J2K)
        star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        ((headers, body),) = multipart(
            web.get(instance_path(RLE) + "/frames/1", headers={"Accept": star})
        )
        assert "image/x-dicom-rle" in headers and body == stored_frame(RLE)

        ((headers, body),) = multipart(web.get(path))
        assert "application/octet-stream" in headers
        assert body == native_pixels(J2K)
        for refused in (
            "application/dicom+json",
            'multipart/related; type="image/jpeg"',
            "image/jp2",
            f'multipart/related; type="image/jp2"; transfer-syntax={JPEG_LS}',
        ):
            assert web.get(path, headers={"Accept": refused}).status_code == 406, refused


def test_compressed_pixel_bulk_data_comes_frame_by_frame(compressed: Broker) -> None:
    path = instance_path(J2K)
    with client(compressed) as web:
        (meta,) = web.get(f"{path}/metadata").json()
        uri = meta["7FE00010"]["BulkDataURI"].split("/dicomweb", 1)[1]
        resp = web.get(uri)
        assert 'type="image/jp2"' in resp.headers["content-type"]
        ((headers, body),) = multipart(resp)
        assert "image/jp2" in headers
        assert body == stored_frame(J2K) and not body.startswith(b"\xfe\xff\x00\xe0")
        octets = web.get(
            uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
        )
        ((headers, body),) = multipart(octets)
        assert "application/octet-stream" in headers and body == native_pixels(J2K)


def test_stow_refuses_other_bytes_under_a_stored_sop_uid(broker_factory) -> None:
    b = broker_factory().start()
    study = generate_uid()
    original = renumbered(KARI_CT[0], study)
    ds = dcmread_bytes(original)
    changed = dcmread_bytes(original)
    changed.StudyDescription = "a different object under the same UID"
    out = BytesIO()
    changed.save_as(out, enforce_file_format=True)
    with client(b, role="epr") as web:

        def stow(*files: bytes) -> httpx.Response:
            body, ctype = stow_body(list(files))
            return web.post("/studies", content=body, headers={"Content-Type": ctype})

        assert stow(original).status_code == 200
        wait_instances(b, 1)
        assert stow(original).status_code == 200  # the same bytes again: a duplicate, fine
        r = stow(out.getvalue())
        assert r.status_code == 409, r.text
        (item,) = r.json()["00081198"]["Value"]
        assert item["00081197"]["Value"] == [0x0111]
        assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
        assert "00081190" not in item

        truncated = renumbered(KARI_CT[1], study)[:-200]
        r = stow(truncated)
        (item,) = r.json()["00081198"]["Value"]
        assert item["00081197"]["Value"] == [0xC000]
        assert item["00081155"]["Value"] == [dcmread_bytes(truncated).SOPInstanceUID]
        assert item["00081150"]["Value"] == [ds.SOPClassUID]


def test_qido_warns_on_fuzzy_matching_and_checks_parameters(compressed: Broker) -> None:
    study = str(dcmread(US, stop_before_pixels=True).StudyInstanceUID)
    with client(compressed) as web:
        fuzzy = web.get("/studies", params={"PatientName": "x*", "fuzzymatching": "true"})
        assert fuzzy.status_code == 200
        assert fuzzy.headers["warning"].startswith("299 ")
        assert "fuzzymatching parameter is not supported" in fuzzy.headers["warning"]
        assert "warning" not in web.get("/studies").headers
        xml = {"Accept": "application/dicom+xml"}
        assert web.get("/studies", headers=xml).status_code == 406
        assert web.get(f"/studies/{study}/metadata", headers=xml).status_code == 406
        both = {"Accept": "application/dicom+xml, application/dicom+json;q=0.5"}
        assert web.get("/studies", headers=both).status_code == 200
        for field in ("00081199", "ReferencedImageSequence"):
            r = web.get(f"/studies/{study}/instances", params={"includefield": field})
            assert r.status_code == 200, r.text
        for bad in ("abc", "-1", "1_0", "+5", "99999999999999999999"):
            for name in ("limit", "offset"):
                r = web.get("/studies", params={name: bad})
                assert r.status_code == 400 and name in r.text, (name, bad, r.text)
        both_options = {"emptyvaluematching": "true", "multiplevaluematching": "true"}
        warned = web.get("/studies", params=both_options).headers["warning"]
        assert "emptyvaluematching" in warned and "multiplevaluematching" in warned
        for date in ("20200101-", "-20301231", "19000101-20301231", "20200229", "*"):
            assert web.get("/studies", params={"StudyDate": date}).status_code == 200, date
        for date in ("abc", "2024-03-01", "20241301", "20230229", "-", "1-2-3"):
            r = web.get("/studies", params={"StudyDate": date})
            assert r.status_code == 400 and "StudyDate" in r.text, (date, r.text)
        assert web.get("/studies", params={"StudyTime": "2500"}).status_code == 400
    with client(compressed, role="epr") as uploader:
        body, ctype = stow_body([US.read_bytes()])
        r = uploader.post("/studies", content=body, headers={"Content-Type": ctype, **xml})
        assert r.status_code == 406


def test_rendered_viewport_fits_the_image_into_the_box(compressed: Broker) -> None:
    def size(path: str, viewport: str) -> tuple[int, int]:
        r = web.get(f"{path}/rendered", params={"viewport": viewport})
        return Image.open(BytesIO(r.content)).size

    with client(compressed) as web:
        ct, us = instance_path(J2K), instance_path(US)  # 64x64 and 128x96
        assert size(ct, "100,20") == (20, 20)
        assert size(ct, "32,100") == (32, 32)
        assert size(us, "64,64") == (64, 48)
        width, height = size(us, "100,20")
        assert height <= 20 and width <= 100 and width / height == pytest.approx(128 / 96, 0.1)


def test_one_malformed_value_fails_neither_searches_nor_metadata(broker_factory) -> None:
    """An IS of '1A' (pydicom's badVR.dcm has one) is stored as sent; JSON leaves it out."""
    b = broker_factory().start()
    ds = dcmread(KARI_CT[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 2, b"1A", 0, False, True)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with client(b, role="epr") as web:
        body, ctype = stow_body([out.getvalue()])
        assert web.post("/studies", content=body, headers={"Content-Type": ctype}).is_success
        wait_instances(b, 1)
        sop = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
        sop += ds.SOPInstanceUID
        for path in ("/studies", "/instances", f"/studies/{ds.StudyInstanceUID}/metadata"):
            r = web.get(path)
            assert r.status_code == 200, (path, r.text)
            assert "00280008" not in r.json()[0] and r.json()[0]["0020000D"]
        rendered = web.get(f"{sop}/rendered", headers={"Accept": "image/jpeg"})
        assert 400 <= rendered.status_code < 500 and "NumberOfFrames" in rendered.text


def test_frames_of_ybr_full_422_are_two_bytes_a_pixel(broker_factory) -> None:
    """PS3.3 C.7.6.3.1.2: 4:2:2 native pixel data has one Cb and one Cr for every two Y."""
    from pydicom.data import get_testdata_file

    b = broker_factory().start()
    path = Path(str(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")))
    assert storescu(b.dicom_port, [path]).returncode == 0
    wait_instances(b, 1)
    ds = dcmread(path)
    sop = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
    with client(b) as web:
        r = web.get(f"{sop}{ds.SOPInstanceUID}/frames/1")
        assert r.status_code == 200, r.text
        ((_, frame),) = multipart(r)
    assert len(frame) == ds.Rows * ds.Columns * 2
    assert frame == ds.PixelData[: len(frame)]


def test_frames_of_bit_packed_pixel_data_start_at_their_own_first_bit(broker_factory) -> None:
    """Three 5x5 masks: frames 2 and 3 start mid-byte in the stored data (PS3.5 8.1.1)."""
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import pack_bits

    masks = np.random.default_rng(3).integers(0, 2, (3, 5, 5), dtype=np.uint8)
    ds = dcmread(KARI_CT[0])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.1"  # Multi-frame Single Bit SC Image
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Rows = ds.Columns = 5
    ds.NumberOfFrames = 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = pack_bits(masks)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    b = broker_factory().start()
    with client(b, role="epr") as web:
        body, ctype = stow_body([out.getvalue()])
        assert web.post("/studies", content=body, headers={"Content-Type": ctype}).is_success
        wait_instances(b, 1)
        url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
        r = web.get(f"{url}{ds.SOPInstanceUID}/frames/2,3")
        assert r.status_code == 200, r.text
    got = [data for _, data in multipart(r)]
    assert got == [pack_bits(masks[1]), pack_bits(masks[2])]
