"""Durable spool: a C-STORE is acknowledged only after its bytes are fdatasynced here.

Records are appended to preallocated, zero-filled segment files. Overwriting blocks that
already exist needs no metadata journaling, so an fdatasync costs a fraction of creating and
fsyncing a new file (measured 0.4 ms against 3 ms per object on the CI machine). Each open
segment is used by one writer at a time, so a torn record can only be the last one of a
segment; a record is valid only if its header and payload checksums match.
Objects larger than a quarter segment are written as single-record files instead, reported
sealed (with one record) as soon as they are written.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PBS1"
_HEAD = struct.Struct("<4sIQI")  # magic, meta length, payload length, crc32(meta + payload)
_HEAD_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size
SEGMENT_SUFFIX = ".seg"
SINGLE_SUFFIX = ".rec"


@dataclass(frozen=True)
class RecordRef:
    """Where one spooled record lives: file, byte offset and total length on disk."""

    path: str
    offset: int
    length: int


@dataclass
class Record:
    ref: RecordRef
    meta: dict[str, Any]
    payload: bytes


def received(source: str, address: str, sop_uid: str) -> dict[str, Any]:
    """The record metadata ingest relies on: who sent it, from where, when, which object."""
    return {"calling_ae": source, "address": address, "received": time.time(), "sop_uid": sop_uid}


def _encode(meta: dict[str, Any], payload: bytes) -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode()
    crc = zlib.crc32(payload, zlib.crc32(m))
    head = _HEAD.pack(MAGIC, len(m), len(payload), crc)
    return b"".join((head, _HEAD_CRC.pack(zlib.crc32(head)), m, payload))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_record(fd: int, ref: RecordRef) -> Record | None:
    """Read and verify one record; None if it is torn, absent or corrupt."""
    raw = os.pread(fd, ref.length, ref.offset) if ref.length else b""
    rec = _decode(raw, 0, ref.path)
    return rec if rec and rec.ref.length == ref.length else None


def _head(raw: bytes) -> tuple[int, int, int] | None:
    """(meta length, payload length, crc) of a record header whose checksum matches."""
    if len(raw) < HEADER_SIZE:
        return None
    magic, mlen, plen, crc = _HEAD.unpack_from(raw)
    (hcrc,) = _HEAD_CRC.unpack_from(raw, _HEAD.size)
    if magic != MAGIC or hcrc != zlib.crc32(raw[: _HEAD.size]):
        return None
    return mlen, plen, crc


def _decode(buf: bytes | memoryview, pos: int, path: str) -> Record | None:
    head = _head(bytes(buf[pos : pos + HEADER_SIZE]))
    if head is None:
        return None
    mlen, plen, crc = head
    start = pos + HEADER_SIZE
    end = start + mlen + plen
    if end > len(buf):
        return None
    m = bytes(buf[start : start + mlen])
    payload = bytes(buf[start + mlen : end])
    if zlib.crc32(payload, zlib.crc32(m)) != crc:
        return None
    return Record(RecordRef(path, pos, end - pos), json.loads(m), payload)


def scan(path: Path) -> Iterator[Record]:
    """Every valid record of a segment or single-record file, in order."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while True:
        rec = _decode(data, pos, str(path))
        if rec is None:
            return
        yield rec
        pos += rec.ref.length


class _Segment:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.used = 0
        self.count = 0
        self.fd = os.open(path, os.O_RDWR)

    def close(self) -> None:
        os.close(self.fd)


class SpoolWriter:
    """Appends records for one receiver process; thread-safe, one writer per segment."""

    def __init__(self, root: Path, segment_bytes: int, on_sealed: Any = None) -> None:
        self.root = root
        self.segment_bytes = segment_bytes
        self.single_limit = segment_bytes // 4
        self.on_sealed = on_sealed
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._free: list[_Segment] = []
        self._spare: _Segment | None = None
        self._spare_ready = threading.Condition(self._lock)
        self._seq = 0
        self._closed = False
        self._prealloc = threading.Thread(target=self._preallocate_loop, daemon=True)
        self._prealloc.start()

    def _new_segment(self) -> _Segment:
        with self._lock:
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}{SEGMENT_SUFFIX}"
        tmp = self.root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            zeros = bytes(1 << 20)
            for _ in range(self.segment_bytes >> 20):
                os.write(fd, zeros)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.root / name
        os.rename(tmp, final)
        _fsync_dir(self.root)
        return _Segment(final, self.segment_bytes)

    def _preallocate_loop(self) -> None:
        while True:
            with self._lock:
                while self._spare is not None and not self._closed:
                    self._spare_ready.wait()
                if self._closed:
                    return
            seg = self._new_segment()
            with self._lock:
                self._spare = seg
                self._spare_ready.notify_all()

    def _take_segment(self, need: int) -> _Segment:
        with self._lock:
            for i, seg in enumerate(self._free):
                if seg.size - seg.used >= need:
                    return self._free.pop(i)
            while self._spare is None:
                self._spare_ready.wait()
            seg, self._spare = self._spare, None
            self._spare_ready.notify_all()
            full = [s for s in self._free if s.size - s.used < HEADER_SIZE + 4096]
            for s in full:
                self._free.remove(s)
        for s in full:
            self._seal(s)
        return seg

    def _seal(self, seg: _Segment) -> None:
        seg.close()
        if self.on_sealed:
            self.on_sealed(str(seg.path), seg.count)

    def append(self, meta: dict[str, Any], payload: bytes) -> RecordRef:
        """Write one record durably and return where it is."""
        blob = _encode(meta, payload)
        if len(blob) > self.single_limit:
            return self._append_single(blob)
        seg = self._take_segment(len(blob))
        try:
            offset = seg.used
            os.pwrite(seg.fd, blob, offset)
            os.fdatasync(seg.fd)
            seg.used += len(blob)
            seg.count += 1
        finally:
            with self._lock:
                self._free.append(seg)
        return RecordRef(str(seg.path), offset, len(blob))

    def _append_single(self, blob: bytes) -> RecordRef:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}{SINGLE_SUFFIX}"
        tmp = self.root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.root / name
        os.rename(tmp, final)
        _fsync_dir(self.root)
        if self.on_sealed:  # complete with its one record, so ingest may delete it once filed
            self.on_sealed(str(final), 1)
        return RecordRef(str(final), 0, len(blob))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._spare_ready.notify_all()
            segs, self._free = self._free, []
        # a preallocation still running would otherwise rename into a spool being torn down
        self._prealloc.join()
        for s in segs:
            self._seal(s)


def discard_unfinished(spool_root: Path) -> None:
    """Delete what writers left half-written in tmp/ (never acknowledged). Only the process
    that owns the spool may call this, at its start: a live writer's tmp/ holds objects being
    written and segments being preallocated."""
    if not spool_root.exists():
        return
    for sub in spool_root.iterdir():
        for tmp in (sub / "tmp").glob("*"):
            tmp.unlink(missing_ok=True)


def pending_files(spool_root: Path) -> list[Path]:
    """Spool files (segments and single records), oldest first; read-only."""
    out: list[Path] = []
    if not spool_root.exists():
        return out
    for sub in sorted(p for p in spool_root.iterdir() if p.is_dir()):
        out.extend(p for p in sub.iterdir() if p.suffix in (SEGMENT_SUFFIX, SINGLE_SUFFIX))
    return sorted(out, key=lambda p: p.name)


def spooled_sop_uids(spool_root: Path) -> list[str]:
    """The SOP Instance UID of every record in the spool, read from record headers and
    metadata only (payloads are skipped, not read or verified)."""
    uids: list[str] = []
    for path in pending_files(spool_root):
        try:
            with open(path, "rb") as f:
                uids.extend(str(meta.get("sop_uid", "")) for meta in _metas(f.fileno()))
        except FileNotFoundError:  # ingested and deleted meanwhile
            continue
    return uids


def _metas(fd: int) -> Iterator[dict[str, Any]]:
    pos = 0
    # ends at the zero-filled rest of a segment, or at a torn record
    while (head := _head(os.pread(fd, HEADER_SIZE, pos))) is not None:
        mlen, plen, _ = head
        try:
            meta = json.loads(os.pread(fd, mlen, pos + HEADER_SIZE))
        except ValueError:
            return
        yield meta
        pos += HEADER_SIZE + mlen + plen
