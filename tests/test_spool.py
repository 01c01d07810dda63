import os
from pathlib import Path

from storage import spool


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
