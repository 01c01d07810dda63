"""dicom3tools' dciodvfy, the independent validator every object we create must pass."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from pydicom.filereader import read_file_meta_info


def errors(path: Path) -> list[str]:
    """The `Error - ...` lines dciodvfy reports (warnings are not errors)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = path
        if read_file_meta_info(path).TransferSyntaxUID.is_deflated:
            # dciodvfy cannot inflate; DCMTK re-encodes the same data set for it
            target = Path(tmp) / "inflated.dcm"
            subprocess.run(["dcmconv", "+te", str(path), str(target)], check=True)
        r = subprocess.run(["dciodvfy", str(target)], capture_output=True, text=True)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
