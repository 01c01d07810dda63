"""The two systems under test, started fresh for each scenario, and what we sample from them."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Broker, MinioServer
from tests.dcmtk import ENV
from tests.orthanc import Orthanc

_ROLLUP = re.compile(r"^(Rss|Pss):\s+(\d+) kB", re.M)
_COUNT = re.compile(r"\(0020,1208\) IS \[(\d+)")


@dataclass
class Target:
    """What a DCMTK client needs to talk to one system, and the pids that make up the system."""

    name: str
    ae: str
    port: int
    process_group: int

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, PSS) summed over every process of the system.

        RSS counts shared libraries once per process; PSS splits shared pages between the
        processes that map them, so it is what a multi-process system really occupies.
        """
        rss_kb = pss_kb = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) != self.process_group:
                    continue
                rollup = (stat.parent / "smaps_rollup").read_text()
            except (OSError, IndexError):
                continue
            for name, value in _ROLLUP.findall(rollup):
                if name == "Rss":
                    rss_kb += int(value)
                else:
                    pss_kb += int(value)
        return rss_kb / 1024, pss_kb / 1024

    def instances_in(self, study_uid: str) -> int:
        r = subprocess.run(
            [
                "findscu",
                "-v",
                "-S",
                "-aet",
                "BENCH",
                "-aec",
                self.ae,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study_uid}",
                "-k",
                "NumberOfStudyRelatedInstances",
                "127.0.0.1",
                str(self.port),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
        )
        m = _COUNT.search(r.stdout + r.stderr)
        return int(m.group(1)) if m else 0


class PeakRss:
    """Peak memory of a target, sampled every 50 ms in a background thread."""

    def __init__(self, target: Target) -> None:
        self.target, self.rss, self.pss = target, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            rss, pss = self.target.memory_mb()
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def broker(work: Path) -> Iterator[Target]:
    """`pacsbroker serve` on embedded SQLite with a real MinIO as the archive."""
    minio = MinioServer(work / "minio").start()
    b = Broker(work / "broker", {**minio.env("bench"), "PACSBROKER_LOG_LEVEL": "WARNING"})
    try:
        b.start()
        assert b.proc is not None
        yield Target("broker", "PACSBROKER", b.dicom_port, b.proc.pid)
    finally:
        b.stop()
        minio.stop()


@contextmanager
def orthanc(work: Path) -> Iterator[Target]:
    """Debian's Orthanc on its defaults: SQLite index, file storage."""
    o = Orthanc(work / "orthanc")
    try:
        o.start({}, extra={"DicomAlwaysAllowFind": True})
        assert o.proc is not None
        yield Target("orthanc", o.ae, o.dicom_port, o.proc.pid)
    finally:
        o.stop()
