"""Key findings from structured documents, indexed at ingest for the EPR.

A Key Object Selection document (TID 2010) names the key images of a study under a title
(CID 7010) and may describe them; an IHE IOCM rejection note is a KOS whose title withdraws the
instances it references. SR reports (Basic Text, Enhanced, Comprehensive) give the finding text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Finding, KeyImage, Rejection

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
REPORTS = {
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
}
REJECTION_TITLES = {"113001", "113037", "113038", "113039"}


@dataclass(frozen=True)
class Reference:
    series_uid: str
    sop_uid: str
    frames: str


@dataclass
class Selection:
    title_code: str
    title_meaning: str
    text: str
    references: list[Reference] = field(default_factory=list)

    @property
    def rejects(self) -> bool:
        return self.title_code in REJECTION_TITLES


def wanted(sop_class_uid: str) -> bool:
    return sop_class_uid == KOS or sop_class_uid in REPORTS


def _title(ds: Dataset) -> tuple[str, str]:
    code = (ds.get("ConceptNameCodeSequence") or [Dataset()])[0]
    return str(code.get("CodeValue", "")), str(code.get("CodeMeaning", ""))


def _items(ds: Dataset) -> Iterator[Dataset]:
    """Every content item of the tree, depth first."""
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _items(item)


def _texts(ds: Dataset) -> list[str]:
    return [
        str(item.TextValue).strip()
        for item in _items(ds)
        if item.get("ValueType") == "TEXT" and str(item.get("TextValue", "")).strip()
    ]


def _series_of(ds: Dataset) -> dict[str, str]:
    """SOP Instance UID → Series Instance UID from the evidence sequence."""
    out: dict[str, str] = {}
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for sop in series.get("ReferencedSOPSequence") or []:
                out[str(sop.ReferencedSOPInstanceUID)] = str(series.SeriesInstanceUID)
    return out


def parse_kos(ds: Dataset) -> Selection:
    code, meaning = _title(ds)
    series = _series_of(ds)
    refs: dict[str, Reference] = {}
    for item in _items(ds):
        if item.get("ValueType") not in ("IMAGE", "COMPOSITE", "WAVEFORM"):
            continue
        for sop in item.get("ReferencedSOPSequence") or []:
            uid = str(sop.ReferencedSOPInstanceUID)
            frames = sop.get("ReferencedFrameNumber")
            refs[uid] = Reference(
                series.get(uid, ""), uid, "" if frames is None else _frames(frames)
            )
    return Selection(code, meaning, "\n".join(_texts(ds)), list(refs.values()))


def _frames(value: Any) -> str:
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    return "\\".join(str(int(v)) for v in values)


def index(session: Session, ds: Dataset) -> None:
    """Record what a KOS or SR document says about its study; the caller commits."""
    sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    if str(ds.SOPClassUID) in REPORTS:
        title = _title(ds)[1]
        _finding(session, sop_uid, study_uid, "report", title, "\n".join(_texts(ds)))
        return
    sel = parse_kos(ds)
    if sel.rejects:
        for ref in [*sel.references, Reference("", sop_uid, "")]:
            if session.scalar(select(Rejection.id).where(Rejection.sop_uid == ref.sop_uid)):
                continue
            session.add(
                Rejection(
                    sop_uid=ref.sop_uid,
                    by_sop_uid=sop_uid,
                    code=sel.title_code,
                    meaning=sel.title_meaning[:64],
                )
            )
        return
    for ref in sel.references:
        session.add(
            KeyImage(
                kos_sop_uid=sop_uid,
                study_uid=study_uid,
                series_uid=ref.series_uid,
                sop_uid=ref.sop_uid,
                frames=ref.frames[:200],
                title_code=sel.title_code[:16],
                title_meaning=sel.title_meaning[:64],
            )
        )
    if sel.text:
        _finding(session, sop_uid, study_uid, "key-images", sel.title_meaning, sel.text)


def _finding(
    session: Session, sop_uid: str, study_uid: str, kind: str, title: str, text: str
) -> None:
    session.add(
        Finding(sop_uid=sop_uid, study_uid=study_uid, kind=kind, title=title[:64], text=text)
    )
