"""Legacy PACS migration with Orthanc (Debian package) as the legacy PACS, capping every C-FIND
at 2 answers so that date windows must be split; plus the window logic on its own."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from storage.archive import Archive, sha256_of
from storage.dicomheader import dataset_offset
from storage.migration import Hours, MigrationError, MigrationParams, resolve
from storage.migration_windows import (
    MIN_SLICE,
    Answer,
    Found,
    Window,
    initial,
    is_capped,
    seconds_of,
    step,
)
from storage.models import Conflict, Instance
from storage.settings import Peer, Settings
from tests.conftest import PACSBROKER, SAMPLES, Broker
from tests.orthanc import Orthanc
from tests.test_prefetch import api

pytestmark = pytest.mark.sqlite_only  # the index under it is tested on both

CAP = 2
BAD_ID = "12345678901"  # 11 digits with wrong check digits: ingest quarantines its patient
# (sample set, StudyDate, StudyTime): several studies per year and four on one day
PLAN = [
    ("kari-ct", "20240301", "101500"),
    ("kari-ct", "20240302", "090000"),
    ("kari-ct", "20230115", "120000"),
    ("kari-ct", "20190312", "080000"),
    ("aase-mr", "20220607", "080000"),
    ("aase-mr", "20220607", "101500"),
    ("aase-mr", "20220607", "133000"),
    ("aase-mr", "20220607", "160000"),
    ("aase-mr", "20220608", "101500"),
    ("aase-mr", "20210704", "101500"),
    ("ola-cr", "20231120", "101500"),
    ("ola-cr", "20231121", "101500"),
    ("ola-cr", "20231122", "101500"),
    ("ola-cr", "20200115", "101500"),
    ("ola-cr", "20200116", "101500"),
    ("ola-us", "20250115", "101500"),
    ("ola-us", "20250116", "101500"),
    ("ola-us", "20180101", "101500"),
    ("ola-us", "20170505", "101500"),
    ("ola-cr", "20160606", "101500"),  # the bad one: an invalid national ID
]


def copy_study(src: str, date: str, tm: str, out: Path, patient_id: str = "") -> list[Path]:
    """The sample study as a new study on `date` at `tm`, transfer syntaxes as they are."""
    uid, series = generate_uid(), dict[str, str]()
    folder = out / f"{src}-{date}-{tm}"
    folder.mkdir(parents=True)
    files = []
    for path in sorted((SAMPLES / src).glob("*.dcm")):
        ds = dcmread(path)
        ds.StudyInstanceUID = uid
        ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = date
        ds.StudyTime = tm
        if patient_id:
            ds.PatientID = patient_id
        files.append(folder / path.name)
        ds.save_as(files[-1], enforce_file_format=True)
    return files


@pytest.fixture
def legacy(broker_factory, tmp_path: Path) -> Iterator[tuple[Broker, Orthanc, list[Path]]]:
    """A broker that knows Orthanc as a peer, and Orthanc holding PLAN, knowing the broker."""
    orthanc = Orthanc(tmp_path / "orthanc")
    peers = [{"ae": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]
    b = broker_factory({"PACSBROKER_PEERS": json.dumps(peers), "PACSBROKER_JOB_LEASE": "3"}).start()
    orthanc.start(
        {"broker": ("PACSBROKER", "127.0.0.1", b.dicom_port)},
        {"LimitFindResults": CAP, "LimitFindInstances": 0},
    )
    files: list[Path] = []
    for i, (src, date, tm) in enumerate(PLAN):
        bad = BAD_ID if i == len(PLAN) - 1 else ""
        files += copy_study(src, date, tm, tmp_path / "legacy", bad)
    for p in files:
        orthanc.upload(p)
    yield b, orthanc, files
    orthanc.stop()


def api_token(b: Broker) -> str:
    return b.cli("token", "--user", "admin", "--role", "radiology-admin").stdout.strip()


def source(orthanc: Orthanc) -> str:
    return f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"


def assert_archived_as_sent(b: Broker, files: list[Path]) -> None:
    """Every object in the archive once, its data set byte-identical to what Orthanc holds."""
    archive = Archive(b.settings())
    try:
        with archive.sessions() as s:
            held = {i.sop_uid: i for i in s.query(Instance)}
            assert s.query(Conflict).count() == 0
        sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
        assert set(held) == set(sent)
        assert len(list(archive.store.keys())) == len(sent)  # no object stored twice
        for uid, path in sent.items():
            a, got = path.read_bytes(), archive.store.get(held[uid].object_key)
            assert sha256_of(got) == held[uid].sha256
            if "Deflate" not in str(dcmread(path, stop_before_pixels=True).file_meta):
                assert got[dataset_offset(got) :] == a[dataset_offset(a) :], path.name
    finally:
        archive.close()


def test_migrate_moves_verifies_and_reports(legacy: tuple[Broker, Orthanc, list[Path]]) -> None:
    b, orthanc, files = legacy
    r = b.cli("migrate", "--from", source(orthanc), "--window-days", "3650", "--wait", "--json")
    assert r.returncode == 1, r.stderr  # 1: one study has a discrepancy
    job = json.loads(r.stdout)
    res = job["result"]
    assert job["state"] == "succeeded" and job["done"] == job["total"] == len(PLAN)
    assert (res["verified"], res["discrepancy"], res["failed"]) == (len(PLAN) - 1, 1, 0)
    assert res["source_instances"] == res["archived_instances"] == len(files)
    assert res["incomplete_windows"] == []
    assert_archived_as_sent(b, files)

    report = api(b, "GET", f"/api/v1/admin/migrations/{job['id']}/report?problems_only=true")
    (bad,) = report["studies"]
    assert bad["study_date"] == PLAN[-1][1] and bad["patient_id"] == BAD_ID
    assert [p["kind"] for p in bad["problems"]] == ["quarantined"]
    assert "invalid national ID" in bad["problems"][0]["detail"]
    full = api(b, "GET", f"/api/v1/admin/migrations/{job['id']}/report")
    ct = next(st for st in full["studies"] if st["study_date"] == "20240301")
    assert len(ct["series"]) == 6 and all(s["source"] == s["archived"] == 2 for s in ct["series"])
    assert len(ct["instances"]) == 12 and all(len(i["sha256"]) == 64 for i in ct["instances"])

    csv_out = b.cli("migrate", "--report", str(job["id"]), "--csv")
    assert csv_out.returncode == 0, csv_out.stderr
    lines = csv_out.stdout.strip().splitlines()
    assert len(lines) == 1 + len(PLAN) and sum("quarantined:" in ln for ln in lines) == 1

    # A second run finds everything archived already and retrieves nothing.
    again = b.cli("migrate", "--from", source(orthanc), "--since", "20220101", "--wait", "--json")
    res2 = json.loads(again.stdout)["result"]
    assert res2["retrievals"] == 0 and res2["verified"] == sum(d >= "2022" for _, d, _ in PLAN)


def test_kill9_mid_migration_resumes_without_duplicates(
    legacy: tuple[Broker, Orthanc, list[Path]],
) -> None:
    b, _orthanc, files = legacy
    body = {"source_ae": "ORTHANC", "pause": 0.3, "find_limit": CAP}
    job = api(b, "POST", "/api/v1/admin/migrations", json=body)
    deadline = time.time() + 40
    while api(b, "GET", f"/api/v1/admin/jobs/{job['id']}")["done"] < len(PLAN) // 2:
        assert time.time() < deadline, "migration made no progress"
        time.sleep(0.1)
    b.kill9()
    # the job is still "running": the same migration is that job, another one is refused
    same = ("migrate", "--from", "ORTHANC", "--pause", "0.3", "--find-limit", str(CAP), "--json")
    queued = b.cli(*same, "--background")
    assert queued.returncode == 0 and f"resuming job {job['id']}" in queued.stderr
    assert json.loads(queued.stdout)["id"] == job["id"]
    other = b.cli("migrate", "--from", "ORTHANC", "--since", "20200101", "--background")
    assert other.returncode == 2 and "other parameters" in other.stderr
    # the documented recovery: the same command again, which follows the job until it ends
    again = subprocess.Popen(
        [str(PACSBROKER), *same],
        env=b.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert again.stderr and again.stderr.readline().strip() == f"resuming job {job['id']}"
    b.start()
    out, err = again.communicate(timeout=120)
    assert again.returncode == 1, err  # 1: the quarantined study's discrepancy
    done = json.loads(out)
    assert done["id"] == job["id"], done
    assert done["state"] == "succeeded" and done["attempts"] >= 2, done
    res = done["result"]
    assert res["studies"] == len(PLAN) and res["verified"] == len(PLAN) - 1
    assert res["retrievals"] <= len(PLAN) + 1  # only the study in flight is asked for again
    assert_archived_as_sent(b, files)


def test_migrate_with_c_get(broker_factory, tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    peers = [{"ae": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]
    b = broker_factory({"PACSBROKER_PEERS": json.dumps(peers)}).start()
    orthanc.start({"broker": ("PACSBROKER", "127.0.0.1", b.dicom_port)})
    try:
        files = copy_study("kari-ct", "20240301", "101500", tmp_path / "legacy")
        files += copy_study("aase-mr", "20220607", "101500", tmp_path / "legacy")
        for p in files:
            orthanc.upload(p)
        r = b.cli(
            "migrate", "--from", "ORTHANC", "--get", "--max-associations", "2", "--wait", "--json"
        )
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)["result"]
        assert res["verified"] == 2 and res["archived_instances"] == len(files)
        assert_archived_as_sent(b, files)
    finally:
        orthanc.stop()


def test_refusals_before_and_during_the_job(broker_factory, tmp_path: Path) -> None:
    """The API refuses other roles, unknown peers and bad hours; a PACS that refuses every
    C-MOVE (Orthanc: it does not know us as a destination) stops the job, saying why."""
    orthanc = Orthanc(tmp_path / "orthanc")
    peers = [{"ae": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]
    b = broker_factory({"PACSBROKER_PEERS": json.dumps(peers)}).start()
    url = f"http://127.0.0.1:{b.http_port}/api/v1/admin/migrations"
    tok = b.cli("token", "--user", "u", "--role", "radiologist").stdout.strip()
    body = {"source_ae": "LEGACY", "host": "127.0.0.1", "port": 104}
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 403
    admin = {"Authorization": f"Bearer {api_token(b)}"}
    r = httpx.post(url, json=body, headers=admin)
    assert r.status_code == 409 and "PEERS" in r.text  # LEGACY may not store into us
    r = httpx.post(url, json={**body, "hours": "25-7"}, headers=admin)
    assert r.status_code == 422

    allow = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True}
    orthanc.start({}, allow)  # knows no modality, so no move destination either
    try:
        for date in ("20240101", "20240102", "20240103"):
            for p in copy_study("ola-cr", date, "101500", tmp_path / "legacy"):
                orthanc.upload(p)
        r = b.cli("migrate", "--from", "ORTHANC", "--wait", "--json")
        job = json.loads(r.stdout)
        assert r.returncode == 1 and job["state"] == "failed", job
        assert "3 studies in a row refused" in job["message"]
        assert "know PACSBROKER as a move destination" in job["message"]
    finally:
        orthanc.stop()


# --- the window logic, against a PACS made of a list ------------------------------------------


def fake_pacs(studies: list[tuple[str, str, str]], cap: int, *, time_aware: bool = True) -> Any:
    """C-FIND over (date, time, modality) studies, answering at most `cap` and saying so."""
    asked: list[Window] = []

    def find(w: Window) -> Answer:
        asked.append(w)
        hits = [
            Found(f"1.2.{i}", d, t)
            for i, (d, t, m) in enumerate(studies)
            if w.start <= dt.datetime.strptime(d, "%Y%m%d").date() <= w.end
            and (not time_aware or w.holds_time(t))
            and (not w.modality or w.modality == m)
        ]
        return Answer(hits[:cap], len(hits) > cap)

    find.asked = asked  # type: ignore[attr-defined]
    return find


def walk(find: Any, windows: list[Window]) -> tuple[set[str], list[Window]]:
    """What the job does, without the database: pop the newest window, keep or split."""
    found: set[str] = set()
    incomplete: list[Window] = []
    stack = list(windows)
    while stack:
        w = stack.pop()
        s = step(w, find(w))
        found |= {f.study_uid for f in s.keep}
        stack += s.more
        if s.incomplete:
            incomplete.append(w)
    return found, incomplete


def test_windows_split_until_every_study_is_found() -> None:
    today = dt.date(2025, 6, 1)
    studies = [(f"2024{m:02d}15", "101500", "CT") for m in range(1, 13)]
    studies += [("20240301", f"{h:02d}0000", "MR") for h in range(8, 16)]  # eight on one day
    studies += [("19790101", "", "CR"), ("20300101", "", "US")]  # pre-grid and future dates
    find = fake_pacs(studies, cap=3)
    found, incomplete = walk(find, initial(None, None, 365, today))
    assert len(found) == len(studies) and incomplete == []
    assert len(find.asked) < 150
    assert all(w.time is None or w.start == w.end for w in find.asked)


def test_windows_fall_back_to_modality_when_time_is_ignored_or_too_fine() -> None:
    day = dt.date(2024, 3, 1)
    studies = [("20240301", "101500", m) for m in ("CT", "CT", "MR", "MR", "US")]
    for time_aware in (True, False):
        find = fake_pacs(studies, cap=2, time_aware=time_aware)
        found, incomplete = walk(find, [Window(day, day)])
        assert len(found) == len(studies)  # one minute, split by modality
        assert [w.modality for w in incomplete] == []
        assert any(w.modality == "US" for w in find.asked)
        slices = [w.time for w in find.asked if w.time]
        if time_aware:
            assert min(b - a for a, b in slices) < MIN_SLICE * 2
    find = fake_pacs([*studies, ("20240301", "101500", "CT")], cap=2)
    found, incomplete = walk(find, [Window(day, day)])
    assert [w.modality for w in incomplete] == ["CT"]  # three CT in one minute: reported


def test_window_keys_and_helpers() -> None:
    w = Window(dt.date(2024, 1, 1), dt.date(2024, 1, 31))
    assert w.keys() == {"StudyDate": "20240101-20240131"}
    assert Window.load(w.dump()) == w
    one = Window(dt.date(2024, 1, 1), dt.date(2024, 1, 1), (36000, 39599), "CT")
    assert one.keys() == {
        "StudyDate": "20240101",
        "StudyTime": "100000-105959",
        "ModalitiesInStudy": "CT",
    }
    assert Window.load(one.dump()) == one
    assert all(Window.load(w.dump()) == w for w in initial(None, None, 9999, dt.date.today()))
    grid = initial(dt.date(2020, 1, 1), dt.date(2020, 12, 31), 100, dt.date(2025, 1, 1))
    assert [w.keys()["StudyDate"] for w in (grid[0], grid[-1])] == [
        "20200101-20200409",
        "20201027-20201231",
    ]
    open_ended = initial(None, None, 10000, dt.date(2025, 1, 1))
    assert open_ended[0].keys()["StudyDate"] == "-19891231"
    assert open_ended[-1].keys()["StudyDate"] == "20250102-"
    assert seconds_of("10:15:30.5") == 36930 and seconds_of("") is None
    assert is_capped(0xFE00, 1, 0) and is_capped(0, 5, 5) and not is_capped(0, 4, 5)


def test_allowed_hours() -> None:
    night = Hours("18-07")
    at = lambda h, m=0: dt.datetime(2025, 1, 1, h, m)  # noqa: E731
    assert night.wait(at(19)) == 0 and night.wait(at(6, 59)) == 0
    assert night.wait(at(12)) == 6 * 3600 and night.wait(at(7)) == 11 * 3600
    assert Hours("08:30-16").wait(at(8)) == 1800 and Hours("").wait(at(3)) == 0
    with pytest.raises(ValueError):
        Hours("7")


def test_a_source_our_store_policy_refuses_is_refused_at_once(tmp_path: Path) -> None:
    """The PACS's C-MOVE sub-operations store under its AE title from its host: a source that
    C-STORE would refuse is refused when the job is asked for, not study by study later."""
    no_peers = Settings(data_dir=tmp_path)  # only loopback may store
    remote = MigrationParams(source_ae="EYEPACS", host="10.1.2.3", port=104)
    with pytest.raises(MigrationError) as refused:
        resolve(remote, no_peers)
    assert "add EYEPACS@10.1.2.3 to PEERS with store permission" in str(refused.value)
    assert resolve(remote.model_copy(update={"host": "localhost"}), no_peers).port == 104
    assert resolve(remote.model_copy(update={"method": "get"}), no_peers)  # relayed by us
    peer = Peer(ae="EYEPACS", host="10.1.2.3")
    known = resolve(MigrationParams(source_ae="EYEPACS"), Settings(data_dir=tmp_path, peers=[peer]))
    assert (known.host, known.port) == ("10.1.2.3", 104)
    mute = Settings(data_dir=tmp_path, peers=[peer.model_copy(update={"store": False})])
    with pytest.raises(MigrationError, match="not allowed to store"):
        resolve(remote, mute)
