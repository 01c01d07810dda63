"""Entry points of DICOM-ization: HTTP upload and hot folders, through the spool into the
archive, with PAS demographics, and clear refusals that leave nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from broker import hotfolder
from broker.dicomize.batch import Upload, build
from storage.settings import HotFolder
from tests.conftest import Broker, free_port
from tests.dciodvfy import errors as dciodvfy_errors
from tests.dcmtk import findscu, movescu
from tests.test_dicomize import PATIENT, encoded, grey_png, pdf, png_header
from tests.test_dicomize_media import ecg_export, mp4, respiratory_modules_valid, spirometer_export
from tests.test_dimse import counts, storescp, wait_instances
from tests.test_pas import KARI, pas  # noqa: F401  (fixture)

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

JPEG = encoded("JPEG", quality=90)
FILES = {
    "photo.jpg": JPEG,
    "scan.png": encoded("PNG"),
    "henvisning.pdf": pdf(),
    "scope.mp4": mp4(),
    "ekg.csv": ecg_export(),
    "spiro.csv": spirometer_export(),
}
RESPIRATORY = {"1.2.840.10008.5.1.4.1.1.9.6.1", "1.2.840.10008.5.1.4.1.1.9.6.2"}
BAD = [
    ("cut.jpg", JPEG[:700], "not a readable image"),
    ("fake.pdf", b"hello, not a pdf", "not a PDF"),
    ("empty.png", b"", "empty"),
    ("bomb.png", png_header(18000, 10000), "too large to decode"),
    ("wide.png", grey_png((70000, 20)), "Rows and Columns stop at 65535"),
    ("../../etc/passwd.jpg", JPEG, "not a plain file name"),
]
IN_FOLDER = BAD[:-1]  # a file in a folder cannot have a path for a name


@pytest.fixture
def dest() -> int:
    return free_port()


@pytest.fixture
def broker(broker_factory, pas: str, tmp_path: Path, dest: int) -> Broker:  # noqa: F811
    peers = [{"ae": "FINDSCU"}, {"ae": "MOVESCU"}, {"ae": "STORESCP", "port": dest}]
    folders = [
        {"path": str(tmp_path / "eye"), "station": "EYE1", "settle": 0.3},
        {
            "path": str(tmp_path / "lab"),
            "station": "LAB1",
            "pattern": r"(?P<patient>\d{11})_(?P<accession>[A-Z0-9]+)_.*",
            "settle": 0.3,
        },
    ]
    return broker_factory(
        {
            "PACSBROKER_PEERS": json.dumps(peers),
            "PACSBROKER_PAS_FHIR_URL": f"{pas}/fhir",
            "PACSBROKER_HOTFOLDERS": json.dumps(folders),
            "PACSBROKER_HOTFOLDER_INTERVAL": "0.2",
        }
    ).start()


def upload(
    b: Broker, files: dict[str, bytes], role: str = "modality", **form: str
) -> httpx.Response:
    tok = b.cli("token", "--user", "camera-1", "--role", role).stdout.strip()
    return httpx.post(
        f"http://127.0.0.1:{b.http_port}/api/v1/dicomize",
        data={"patient_id": KARI, **form},
        files=[("files", (name, data)) for name, data in files.items()],
        headers={"Authorization": f"Bearer {tok}"},
        timeout=60,
    )


def archived_and_valid(b: Broker, study_uid: str, n: int, dest: int, tmp: Path) -> None:
    """Findable by findscu, retrievable by movescu, valid under dciodvfy, PAS demographics."""
    found = findscu(
        b.dicom_port,
        {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": study_uid, "PatientName": ""},
    )
    assert len(found) == n and {str(f.PatientName) for f in found} == {"Nordmann^Kari"}
    scp = storescp(dest, tmp)
    try:
        r = movescu(b.dicom_port, "STORESCP", study_uid)
        assert r.returncode == 0, r.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    got = sorted(tmp.iterdir())
    assert len(got) == n
    for path in got:
        ds = dcmread(path)
        if ds.SOPClassUID in RESPIRATORY:
            respiratory_modules_valid(ds, tmp, path.stem)
        else:
            assert dciodvfy_errors(path) == [], path
        assert ds.PatientID == KARI


def test_http_upload_files_every_kind_and_refuses_bad_input(
    broker: Broker, dest: int, tmp_path: Path
) -> None:
    r = upload(broker, FILES, accession="ACC77", station="EYE1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["patient_name"] == "Nordmann^Kari"
    assert [i["file"] for i in body["instances"]] == list(FILES)
    wait_instances(broker, len(FILES))
    archived_and_valid(broker, body["study_uid"], len(FILES), dest, tmp_path / "moved")

    order = {
        "accession_number": "EYE2026",
        "patient": {"id": KARI},
        "scheduled_start": "2026-11-25T10:30:00",
        "modality": "XC",
        "study_instance_uid": "1.2.826.0.1.3680043.10.1432.77.1",
    }
    tok = broker.cli("token", "--user", "ris", "--role", "integration").stdout.strip()
    placed = httpx.post(
        f"http://127.0.0.1:{broker.http_port}/api/v1/orders",
        json=order,
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert placed.status_code == 200, placed.text
    r = upload(broker, {"fundus.jpg": JPEG}, accession="EYE2026")
    assert r.json()["study_uid"] == order["study_instance_uid"]  # the worklist item's study
    wait_instances(broker, len(FILES) + 1)

    for name, data, message in BAD:
        r = upload(broker, {"fine.png": encoded("PNG"), name: data})
        assert r.status_code == 422 and message in r.json()["detail"], (name, r.text)
    r = upload(broker, {"photo.jpg": JPEG}, patient_id="00000000000")
    assert r.status_code == 422 and "unknown patient" in r.json()["detail"]
    assert upload(broker, {"photo.jpg": JPEG}, role="clinician").status_code == 403
    assert httpx.post(f"http://127.0.0.1:{broker.http_port}/api/v1/dicomize").status_code == 401
    time.sleep(1)
    assert counts(broker)["instances"] == len(FILES) + 1  # no partial object from any refusal


def wait_for(check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_hot_folders_file_ready_files_and_explain_refusals(
    broker: Broker, dest: int, tmp_path: Path
) -> None:
    eye, lab = tmp_path / "eye", tmp_path / "lab"
    (eye / "fundus.jpg.part").write_bytes(JPEG[:500])  # still being copied
    for name, data in FILES.items():
        (eye / name).write_bytes(data)
        (eye / f"{name}.json").write_text(json.dumps({"patient": KARI, "accession": "EYE9"}))
    (lab / f"{KARI}_LAB5_result.pdf").write_bytes(pdf())
    for name, data, _ in IN_FOLDER:
        (eye / name).write_bytes(data)
        (eye / f"{name}.json").write_text(json.dumps({"patient": KARI}))
    (eye / "stray.jpg").write_bytes(JPEG)
    (eye / "stray.jpg.json").write_text("{not json")
    (lab / "nobody.pdf").write_bytes(pdf())

    wait_for(lambda: not any(p.is_file() for p in eye.iterdir() if p.suffix != ".part"))
    wait_for(lambda: not any(p.is_file() for p in lab.iterdir()))
    wait_instances(broker, len(FILES) + 1)
    assert (eye / "fundus.jpg.part").exists()  # partial files are never taken
    done = sorted(p.name for p in (eye / "done").rglob("*") if p.is_file())
    assert done == sorted([*FILES, *(f"{n}.json" for n in FILES)])
    reasons = {
        p.name.removesuffix(".reason.txt"): p.read_text()
        for p in [*(eye / "error").glob("*.reason.txt"), *(lab / "error").glob("*.reason.txt")]
    }
    for name, _, message in IN_FOLDER:
        assert message in reasons[name], reasons
    assert "not valid JSON" in reasons["stray.jpg"]
    assert "does not match" in reasons["nobody.pdf"]

    found = findscu(
        broker.dicom_port,
        {"QueryRetrieveLevel": "STUDY", "AccessionNumber": "EYE9", "StudyInstanceUID": ""},
    )
    assert len(found) == 1
    archived_and_valid(broker, str(found[0].StudyInstanceUID), len(FILES), dest, tmp_path / "m")
    (lab_study,) = findscu(
        broker.dicom_port,
        {"QueryRetrieveLevel": "STUDY", "AccessionNumber": "LAB5", "PatientID": ""},
    )
    assert lab_study.PatientID == KARI


def test_a_batch_sent_again_gives_the_same_objects() -> None:
    """A hot folder that crashed after spooling refiles the same UIDs, which ingest dedupes."""
    files = [Upload(n, d) for n, d in FILES.items()]
    first, again = (build(files, PATIENT, uid_root="", batch="b1") for _ in range(2))
    other = build(files, PATIENT, uid_root="", batch="b2")
    uids = [o.SOPInstanceUID for o in first]
    assert uids == [o.SOPInstanceUID for o in again] and len(set(uids)) == len(files)
    assert not set(uids) & {o.SOPInstanceUID for o in other}


def test_each_modality_of_a_batch_is_its_own_series(tmp_path: Path) -> None:
    """dcentvfy: Modality is a series attribute, so one upload of a PDF, waveforms and photos
    gives one series per modality in the one study, the same ones when sent again."""
    files = [Upload(n, d) for n, d in FILES.items()]
    objects = build(files, PATIENT, uid_root="", accession="A1", batch="b1")
    series: dict[str, set[str]] = {}
    for o in objects:
        series.setdefault(o.SeriesInstanceUID, set()).add(o.Modality)
    assert sorted("/".join(m) for m in series.values()) == ["DOC", "ECG", "RESP", "XC"]
    assert len({o.StudyInstanceUID for o in objects}) == 1
    again = build(files, PATIENT, uid_root="", accession="A1", batch="b1")
    assert [o.SeriesInstanceUID for o in again] == [o.SeriesInstanceUID for o in objects]
    paths = []
    for i, o in enumerate(objects):
        paths.append(tmp_path / f"{i}.dcm")
        o.save_as(paths[-1], enforce_file_format=True)
    r = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True)
    assert [x for x in (r.stdout + r.stderr).splitlines() if x.startswith("Error")] == []


def ready(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(JPEG)
        (folder / f"{name}.json").write_text(json.dumps({"patient": KARI}))


def test_an_unexpected_error_refuses_that_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose conversion fails unexpectedly goes to error/ with the reason; it holds back
    neither the other files of its batch nor other folders, nor does a broken folder."""

    def fake_submit(archive, intake, uploads, req, **kw):
        if any(u.name == "boom.jpg" for u in uploads):
            raise RuntimeError("decoder crashed")
        filed = [Dataset() for _ in uploads]
        for i, ds in enumerate(filed):
            ds.SOPInstanceUID = f"1.2.3.{i}"
        return filed

    monkeypatch.setattr(hotfolder, "submit", fake_submit)
    a, gone, b = tmp_path / "a", tmp_path / "gone", tmp_path / "b"
    folders = [HotFolder(path=p, settle=0, sidecar_wait=0) for p in (a, gone, b)]
    watch = hotfolder.HotFolders(None, None, folders)  # type: ignore[arg-type]
    ready(a, ["boom.jpg", "good.jpg"])
    ready(b, ["other.jpg"])
    shutil.rmtree(gone)  # the share went away after start-up
    assert sum(watch.poll() for _ in range(3)) == 2  # files and sidecars settle first
    assert (
        "unexpected error: RuntimeError: decoder crashed"
        in (a / "error" / "boom.jpg.reason.txt").read_text()
    )
    done = {p.name for p in (a / "done").rglob("*.jpg")} | {
        p.name for p in (b / "done").rglob("*.jpg")
    }
    assert done == {"good.jpg", "other.jpg"}
