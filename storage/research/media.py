"""A project's studies as a ZIP of a DICOM File-set: the objects plus a DICOMDIR (PS3.10),
written with pydicom's FileSet so any DICOM media reader can open it."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.fileset import FileSet
from sqlalchemy import select

from storage.archive import Archive
from storage.models import Instance, Patient, Series, Study

# Directory records need these (Type 1 there); objects lacking a value get a placeholder in
# their media copy only (e.g. when the project does not keep dates).
_RECORD_KEYS = {
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "SeriesNumber": "1",
    "InstanceNumber": "1",
}


def _keys(research: Archive, scope: str, study_uids: list[str]) -> list[str]:
    stmt = (
        select(Instance.object_key)
        .join(Instance.series)
        .join(Series.study)
        .join(Study.patient)
        .where(Patient.issuer == scope)
        .order_by(Study.id, Series.id, Instance.id)
    )
    if study_uids:
        stmt = stmt.where(Study.study_uid.in_(study_uids))
    with research.sessions() as session:
        return list(session.scalars(stmt))


def write_zip(research: Archive, scope: str, study_uids: list[str], out: BinaryIO) -> int:
    """Write the ZIP to `out`; returns the number of objects (0: nothing to write)."""
    keys = _keys(research, scope, study_uids)
    if not keys:
        return 0
    with tempfile.TemporaryDirectory(prefix="pacsbroker-media-") as tmp:
        fs = FileSet()
        fs.ID = re.sub(r"[^A-Z0-9_]", "_", scope.split(":", 1)[-1].upper())[:16]
        for key in keys:
            ds = dcmread(BytesIO(research.store.get(key)))
            for keyword, placeholder in _RECORD_KEYS.items():
                if not ds.get(keyword):
                    setattr(ds, keyword, placeholder)
            fs.add(ds)
        root = Path(tmp) / "media"
        fs.write(root)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for dirpath, _dirs, files in os.walk(root):
                for name in sorted(files):
                    path = Path(dirpath) / name
                    zf.write(path, path.relative_to(root).as_posix())
    return len(keys)
