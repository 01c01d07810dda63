import os
import threading
import time
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from storage import spool
from storage.dicomheader import valid_uid
from tests.conftest import SAMPLES


def test_records_survive_and_torn_tail_is_ignored(tmp_path: Path) -> None:
    sealed: list[tuple[str, int]] = []
    w = spool.SpoolWriter(tmp_path / "r0", 4 << 20, on_sealed=lambda p, n: sealed.append((p, n)))
    refs = [w.append({"n": i}, os.urandom(1000 + i)) for i in range(10)]
    big = w.append({"n": "big"}, os.urandom(2 << 20))
    assert big.path.endswith(spool.SINGLE_SUFFIX)
    seg = Path(refs[0].path)
    # a crash mid-write: garbage after the last good record must not be read as a record
    with open(seg, "r+b") as f:
        f.seek(refs[-1].offset + refs[-1].length)
        f.write(spool.MAGIC + b"\x05\x00\x00\x00" + b"\xff" * 20)
    recs = list(spool.scan(seg))
    assert [r.meta["n"] for r in recs] == list(range(10))
    fd = os.open(seg, os.O_RDONLY)
    assert spool.read_record(fd, refs[3]).meta == {"n": 3}  # type: ignore[union-attr]
    os.close(fd)
    w.close()
    assert (str(seg), 10) in sealed
    files = spool.pending_files(tmp_path)
    assert seg in files and Path(big.path) in files


def test_a_single_record_file_is_sealed_and_deleted_once_ingested(tmp_path: Path) -> None:
    from broker.ingest import SpoolTracker

    tracker = SpoolTracker()
    w = spool.SpoolWriter(tmp_path / "r0", 4 << 20, on_sealed=tracker.sealed)
    big = w.append({"n": "big"}, os.urandom(2 << 20))
    assert big.path.endswith(spool.SINGLE_SUFFIX)
    tracker.done(big.path)
    assert not Path(big.path).exists()
    w.close()


def test_corrupted_payload_is_rejected(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path / "r0", 4 << 20)
    ref = w.append({"a": 1}, b"x" * 5000)
    with open(ref.path, "r+b") as f:
        f.seek(ref.offset + ref.length - 10)
        f.write(b"y")
    fd = os.open(ref.path, os.O_RDONLY)
    assert spool.read_record(fd, ref) is None
    os.close(fd)
    w.close()


def _ingest(tmp_path: Path, payloads: list[bytes]) -> dict[str, int]:
    """File payloads through the spool and a real ingest worker; the archive's counts after."""
    from broker.ingest import IngestWorker
    from broker.pas.reconcile import Reconciler
    from storage.archive import Archive
    from storage.settings import Settings
    from storage.stats import archive_counts

    archive = Archive(Settings(data_dir=tmp_path), run_migrations=True)
    worker = IngestWorker(archive, Reconciler(None, allow_synthetic=True))
    w = spool.SpoolWriter(tmp_path / "spool" / "r0", 4 << 20)
    for p in payloads:
        worker.queue.put(w.append(spool.received("TEST", "127.0.0.1", ""), p))
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    done = sum(worker.stats.values())
    while done < len(payloads) and time.time() < deadline:
        time.sleep(0.05)
        done = sum(worker.stats.values())
    worker.stop()
    t.join(5)
    w.close()
    with archive.sessions() as session:
        counts = archive_counts(session)
    archive.close()
    return counts


def _part10(path: Path, **changes: str) -> bytes:
    ds = dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_an_object_with_a_bad_uid_is_quarantined_and_ingest_goes_on(tmp_path: Path) -> None:
    good = sorted(SAMPLES.rglob("ct-s1-*.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value we set
        bad = _part10(good[0], SOPInstanceUID="1.2.3.4.5", SeriesInstanceUID="1.2//3")
    counts = _ingest(tmp_path, [good[0].read_bytes(), bad, good[1].read_bytes()])
    assert counts["instances"] == 2 and counts["quarantined"] == 1


def test_an_index_error_quarantines_only_its_object(tmp_path: Path, monkeypatch) -> None:
    import broker.ingest

    files = sorted(SAMPLES.rglob("ct-s2-*.dcm"))
    poisoned = str(dcmread(files[0]).SOPInstanceUID)
    real = broker.ingest.file_instances

    def file_instances(session, items, patient_of):  # type: ignore[no-untyped-def]
        if any(a.header.sop_uid == poisoned for a in items):
            raise ValueError("a value the index cannot take")
        return real(session, items, patient_of)

    monkeypatch.setattr(broker.ingest, "file_instances", file_instances)
    counts = _ingest(tmp_path, [f.read_bytes() for f in files])
    assert counts["instances"] == len(files) - 1 and counts["quarantined"] == 1


def test_listing_the_spool_leaves_a_live_writers_tmp_alone(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path / "r0", 4 << 20)
    refs = [w.append(spool.received("TEST", "127.0.0.1", f"1.2.{i}"), b"x" * 100) for i in range(3)]
    in_progress = tmp_path / "r0" / "tmp" / f"0-being-written{spool.SINGLE_SUFFIX}"
    in_progress.write_bytes(b"half")
    assert Path(refs[0].path) in spool.pending_files(tmp_path)
    assert in_progress.exists()
    assert spool.spooled_sop_uids(tmp_path) == ["1.2.0", "1.2.1", "1.2.2"]
    w.close()
    spool.discard_unfinished(tmp_path)  # what the owning process does at its start
    assert not list((tmp_path / "r0" / "tmp").iterdir())


@pytest.mark.parametrize(
    ("uid", "fileable"),
    [("1.2.840.10008.5.1.4.1.1.2", True), ("1.2.03", True), ("1.2//3", False), ("1..2", False)],
)
def test_uids_with_leading_zeros_are_filed_but_nothing_else_shapes_a_key(
    uid: str, fileable: bool
) -> None:
    """Leading zeros break PS3.5 but occur in real modality output and name one object safely."""
    assert valid_uid(uid) is fileable
