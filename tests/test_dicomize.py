"""DICOM-ization of photos and PDFs: valid objects (dciodvfy), originals kept, clear refusals,
and the CLI end to end with demographics from PAS."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.encaps import generate_frames

from broker.dicomize.batch import Upload, build, encode
from broker.dicomize.common import Device, DicomizeError
from storage.patientmodule import PatientModule
from storage.settings import Settings
from tests.conftest import Broker
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import findscu
from tests.test_dimse import wait_instances
from tests.test_pas import KARI, pas  # noqa: F401  (fixture)

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

PATIENT = PatientModule("12345678901", "", "Nordmann^Kari", "19800101", "F")
PIXELS = (np.random.default_rng(5).random((90, 120, 3)) * 255).astype("uint8")


def encoded(fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(PIXELS).save(buf, fmt, **kw)
    return buf.getvalue()


def pdf() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(buf, "PDF")
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90° clockwise
    return encoded("JPEG", exif=exif.tobytes())


def valid(ds: object, tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    assert dciodvfy_errors(path) == []
    return path


def test_builders_keep_originals_and_make_valid_objects(tmp_path: Path) -> None:
    jpeg, png, doc = encoded("JPEG", quality=92), encoded("PNG"), pdf()
    objects = build(
        [Upload("eye.jpg", jpeg), Upload("scan.png", png), Upload("henvisning.pdf", doc)],
        PATIENT,
        uid_root="",
        accession="A123",
        device=Device("Topcon", "TRC-50", "EYE1"),
    )
    photo_jpeg, photo_png, epdf = (
        dcmread(valid(o, tmp_path, str(i))) for i, o in enumerate(objects)
    )
    assert photo_jpeg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert next(generate_frames(photo_jpeg.PixelData, number_of_frames=1)) == jpeg  # not re-encoded
    assert (photo_png.pixel_array == PIXELS).all()
    assert epdf.EncapsulatedDocument[: len(doc)] == doc and epdf.DocumentTitle == "henvisning"
    assert {o.StudyInstanceUID for o in objects} == {objects[0].StudyInstanceUID}  # accession
    series = [o.SeriesInstanceUID for o in objects]
    assert series[0] == series[1] != series[2]  # one batch: a series per modality (XC, DOC)
    assert all(o.PatientName == "Nordmann^Kari" and o.StationName == "EYE1" for o in objects)

    (turned,) = build([Upload("turned.jpg", rotated_jpeg())], PATIENT, uid_root="")
    ds = dcmread(valid(turned, tmp_path, "turned"))
    assert (ds.Rows, ds.Columns) == (120, 90)  # EXIF orientation applied


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("cut.jpg", encoded("JPEG")[:600], "not a readable image"),
        ("fake.pdf", b"hello, not a pdf", "not a PDF"),
        ("empty.png", b"", "empty"),
        ("../../etc/passwd.jpg", encoded("JPEG"), "not a plain file name"),
        ("notes.docx", b"PK\x03\x04", "unsupported file type"),
    ],
)
def test_bad_files_are_refused_with_a_reason(name: str, data: bytes, message: str) -> None:
    with pytest.raises(DicomizeError, match=message):
        build([Upload("fine.png", encoded("PNG")), Upload(name, data)], PATIENT, uid_root="")


@pytest.fixture
def broker(broker_factory, pas: str) -> Broker:  # noqa: F811
    peers = [{"ae": "PB-DICOMIZE", "query": False, "retrieve": False}, {"ae": "FINDSCU"}]
    return broker_factory(
        {"PACSBROKER_PEERS": json.dumps(peers), "PACSBROKER_PAS_FHIR_URL": f"{pas}/fhir"}
    ).start()


def test_cli_dicomizes_for_a_pas_patient(broker: Broker, tmp_path: Path) -> None:
    photo, doc = tmp_path / "photo.jpg", tmp_path / "report.pdf"
    photo.write_bytes(encoded("JPEG"))
    doc.write_bytes(pdf())
    r = broker.cli("dicomize", str(photo), str(doc), "--patient", KARI, "--station", "EYE1")
    assert r.returncode == 0, r.stderr + r.stdout
    wait_instances(broker, 2)
    found = findscu(
        broker.dicom_port,
        {"QueryRetrieveLevel": "IMAGE", "PatientID": KARI, "PatientName": "", "SOPClassUID": ""},
    )
    assert len(found) == 2 and {str(f.PatientName) for f in found} == {"Nordmann^Kari"}
    bad = tmp_path / "fake.pdf"
    bad.write_bytes(b"nope")
    r = broker.cli("dicomize", str(bad), "--patient", KARI)
    assert r.returncode == 2 and "not a PDF" in r.stdout + r.stderr
    r = broker.cli("dicomize", str(photo), "--patient", "00000000000")
    assert r.returncode == 2 and "unknown patient" in r.stdout + r.stderr


def place_order(b: Broker, accession: str, patient: dict[str, str], study: str) -> None:
    tok = b.cli("token", "--user", "ris", "--role", "integration").stdout.strip()
    order = {
        "accession_number": accession,
        "patient": patient,
        "scheduled_start": "2026-11-25T10:30:00",
        "modality": "XC",
        "study_instance_uid": study,
    }
    r = httpx.post(
        f"http://127.0.0.1:{b.http_port}/api/v1/orders",
        json=order,
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert r.status_code == 200, r.text


def test_cli_files_into_the_ordered_study(broker: Broker, tmp_path: Path) -> None:
    """As an upload does: the order's Study Instance UID, and no other patient's order."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encoded("JPEG"))
    place_order(broker, "EYE2027", {"id": KARI}, "1.2.826.0.1.3680043.10.1432.77.2")
    r = broker.cli("dicomize", str(photo), "--patient", KARI, "--accession", "EYE2027")
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.split("\t")[1] == "1.2.826.0.1.3680043.10.1432.77.2"
    other = {"id": "LOCAL42", "system": "urn:local", "name": "Annen^Per"}
    place_order(broker, "EYE2028", other, "1.2.826.0.1.3680043.10.1432.77.3")
    r = broker.cli("dicomize", str(photo), "--patient", KARI, "--accession", "EYE2028")
    assert r.returncode == 2 and "order for another patient" in r.stdout + r.stderr


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims this size (its pixels are never reached)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def grey_png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_header(18000, 10000), "too large to decode"),  # Pillow: a decompression bomb
        (grey_png((70000, 20)), "Rows and Columns stop at 65535"),
        (grey_png((20, 70000)), "Rows and Columns stop at 65535"),
    ],
    ids=["bomb", "wide", "tall"],
)
def test_images_too_large_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(DicomizeError, match=f"big.png: .*{message}"):
        build([Upload("big.png", data)], PATIENT, uid_root="")


def test_an_object_that_cannot_be_encoded_is_a_refusal() -> None:
    files = [Upload("scan.png", encoded("PNG"))]
    objects = build(files, PATIENT, uid_root="")
    objects[0].Rows = 70000  # what a builder without its size check wrote
    with pytest.raises(DicomizeError, match=r"scan\.png: cannot be encoded as DICOM"):
        encode(files, objects)


def test_sixteen_bit_grey_keeps_its_range(tmp_path: Path) -> None:
    ramp = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    (obj,) = build([Upload("ramp.png", buf.getvalue())], PATIENT, uid_root="")
    ds = dcmread(valid(obj, tmp_path, "ramp"))
    assert (ds.BitsAllocated, ds.PhotometricInterpretation) == (8, "MONOCHROME2")
    assert (ds.pixel_array == (ramp >> 8)).all()  # the top 8 bits, not clipped at 255
    assert len(np.unique(ds.pixel_array)) == 256


def sof1(jpeg: bytes) -> bytes:
    """The same baseline JPEG labelled extended sequential (SOF1), as some cameras write."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at] + b"\xff\xc1" + jpeg[at + 2 :]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("full-chroma.jpg", encoded("JPEG", quality=92, subsampling=0)),  # 4:4:4: YBR_FULL
        ("extended.jpg", sof1(encoded("JPEG", quality=92))),
    ],
)
def test_jpegs_jpeg_baseline_cannot_carry_are_decoded(
    name: str, data: bytes, tmp_path: Path
) -> None:
    (obj,) = build([Upload(name, data)], PATIENT, uid_root="")
    ds = dcmread(valid(obj, tmp_path, "photo"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PhotometricInterpretation == "RGB" and ds.LossyImageCompression == "01"
    assert (ds.pixel_array == np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).all()


def test_uid_root_with_or_without_its_dot() -> None:
    longest = "1.2.826.0.1.3680043.10.1432.77777777777."  # 40 characters
    for given, root in [
        ("1.2.826.0.1.3680043.10.1432", "1.2.826.0.1.3680043.10.1432."),
        (" 1.2.3. ", "1.2.3."),
        (longest, longest),
        ("", ""),
    ]:
        s = Settings(uid_root=given)
        assert s.uid_root == root
        (obj,) = build([Upload("scan.png", encoded("PNG"))], PATIENT, uid_root=s.uid_root)
        uids = [obj.StudyInstanceUID, obj.SeriesInstanceUID, obj.SOPInstanceUID]
        assert all(u.startswith(root or "2.25.") and len(u) <= 64 for u in uids), uids
    for bad, reason in [
        ("1.2.abc", "not a UID prefix"),
        ("1.02.3", "not a UID prefix"),
        ("1..2", "not a UID prefix"),
        (longest + "1", "at most 40"),
    ]:
        with pytest.raises(ValidationError, match=reason):
            Settings(uid_root=bad)
