"""Thin wrappers around the DCMTK command-line tools, the independent client in our tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

ENV = {**os.environ, "TCP_NODELAY": "1"}
# storescu offers only uncompressed syntaxes unless told to propose the file's own one.
PROPOSE = {
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.5": ["-xr"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
}


def run(
    args: list[str], cwd: Path | None = None, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def storescu(
    port: int, files: list[Path], ts: str = "", aet: str = "STORESCU", aec: str = "PACSBROKER"
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "storescu",
            "-aet",
            aet,
            "-aec",
            aec,
            *PROPOSE.get(ts, []),
            "127.0.0.1",
            str(port),
            *map(str, files),
        ]
    )


def findscu(
    port: int,
    keys: dict[str, str],
    model: str = "-S",
    aet: str = "FINDSCU",
    aec: str = "PACSBROKER",
) -> list[Dataset]:
    with tempfile.TemporaryDirectory() as out:
        args = ["findscu", model, "-aet", aet, "-aec", aec, "-X", "-od", out]
        for k, v in keys.items():
            args += ["-k", f"{k}={v}" if v else k]
        r = run([*args, "127.0.0.1", str(port)])
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return [dcmread(p) for p in sorted(Path(out).glob("rsp*.dcm"))]


def echoscu(port: int, aet: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return run(["echoscu", "-aet", aet, "-aec", "PACSBROKER", "127.0.0.1", str(port)])


def movescu(port: int, dest: str, study_uid: str) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            "PACSBROKER",
            "-aem",
            dest,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(port),
        ]
    )
