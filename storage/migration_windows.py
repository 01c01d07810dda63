"""C-FIND windows over a legacy PACS: StudyDate ranges halved while the PACS caps its answer,
then, within one day, StudyTime ranges and finally one window per modality."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

OLDEST = dt.date(1, 1, 1)  # a window starting here has no lower bound
NEWEST = dt.date(9999, 12, 31)  # … and one ending here no upper bound
GRID_START = dt.date(1990, 1, 1)  # without --since, older studies come in one open window
DAY = 86400
MIN_SLICE = 60  # seconds: a capped slice this short is split by modality instead
# Defined terms of Modality (PS3.3 C.7.3.1.1.1) a department archive is likely to hold.
MODALITIES = (
    "CT", "MR", "CR", "DX", "US", "NM", "PT", "XA", "RF", "MG", "IO", "PX", "OP", "OPT", "OCT",
    "ES", "XC", "GM", "SM", "ECG", "HD", "EPS", "IVUS", "BMD", "RTIMAGE", "RTSTRUCT", "RTPLAN",
    "RTDOSE", "RTRECORD", "SEG", "REG", "SR", "KO", "PR", "DOC", "AU", "OT",
)  # fmt: skip


@dataclass(frozen=True)
class Found:
    """One STUDY-level answer of the legacy PACS."""

    study_uid: str
    study_date: str = ""
    study_time: str = ""
    patient_id: str = ""
    accession_number: str = ""
    instances: int | None = None  # NumberOfStudyRelatedInstances, if the PACS gave it


@dataclass(frozen=True)
class Answer:
    studies: list[Found]
    capped: bool  # the PACS said, or the count shows, that it left answers out


def is_capped(status: int, count: int, limit: int) -> bool:
    """A cancelled or refused-for-resources C-FIND, or as many answers as the PACS's limit."""
    return status in (0xFE00, 0xA700) or (limit > 0 and count >= limit)


def _da(d: dt.date) -> str:
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"  # strftime drops the zeros of year 1


def _tm(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def seconds_of(tm: str) -> int | None:
    """A DICOM TM value (HHMMSS.FFFFFF, HHMM, HH, or with colons) as seconds of the day."""
    digits = tm.split(".")[0].replace(":", "").strip()
    if len(digits) < 2 or not digits.isdigit():
        return None
    hh, mm, ss = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    return hh * 3600 + mm * 60 + ss


@dataclass(frozen=True)
class Window:
    start: dt.date
    end: dt.date
    time: tuple[int, int] | None = None  # seconds of the day, both ends included
    modality: str = ""

    def keys(self) -> dict[str, str]:
        """The C-FIND matching keys that select this window."""
        lo = "" if self.start == OLDEST else _da(self.start)
        hi = "" if self.end == NEWEST else _da(self.end)
        keys = {"StudyDate": lo if lo and lo == hi else f"{lo}-{hi}"}
        if self.time is not None:
            keys["StudyTime"] = f"{_tm(self.time[0])}-{_tm(self.time[1])}"
        if self.modality:
            keys["ModalitiesInStudy"] = self.modality
        return keys

    def label(self) -> str:
        return " ".join(self.keys().values())

    def dump(self) -> list[Any]:
        return [
            _da(self.start),
            _da(self.end),
            list(self.time) if self.time else None,
            self.modality,
        ]

    @classmethod
    def load(cls, raw: list[Any]) -> Window:
        start, end, time, modality = raw
        day = dt.datetime.strptime
        return cls(
            day(start, "%Y%m%d").date(),
            day(end, "%Y%m%d").date(),
            (int(time[0]), int(time[1])) if time else None,
            str(modality),
        )

    def holds_time(self, tm: str) -> bool:
        """Whether an answer's StudyTime lies in the window (an empty one is given the benefit)."""
        s = seconds_of(tm)
        return self.time is None or s is None or self.time[0] <= s <= self.time[1]


def initial(
    since: dt.date | None, until: dt.date | None, days: int, today: dt.date
) -> list[Window]:
    """The first windows, oldest first, `days` wide; open ends get one window each."""
    hi = until or today
    lo = since or min(GRID_START, hi)
    out = [] if since is not None or lo <= OLDEST else [Window(OLDEST, lo - dt.timedelta(1))]
    d = lo
    while d <= hi:
        e = min(d + dt.timedelta(days - 1), hi)
        out.append(Window(d, e))
        d = e + dt.timedelta(1)
    if until is None and hi < NEWEST:
        out.append(Window(hi + dt.timedelta(1), NEWEST))  # studies the PACS dates in the future
    return out


def split(w: Window, *, time_ignored: bool = False) -> list[Window]:
    """Smaller windows that cover `w`, older first; [] when `w` cannot be split further."""
    if w.end > w.start:
        mid = dt.date.fromordinal((w.start.toordinal() + w.end.toordinal()) // 2)
        return [replace(w, end=mid), replace(w, start=mid + dt.timedelta(1))]
    if w.modality:
        return []
    a, b = w.time or (0, DAY - 1)
    if not time_ignored and b - a >= MIN_SLICE:
        half = (a + b) // 2
        return [replace(w, time=(a, half)), replace(w, time=(half + 1, b))]
    # The day (or the PACS, ignoring StudyTime) cannot be cut finer in time: one per modality.
    time = None if time_ignored else w.time
    return [replace(w, time=time, modality=m) for m in MODALITIES]


@dataclass(frozen=True)
class Step:
    keep: list[Found]  # studies to migrate
    more: list[Window]  # windows to ask next, older first
    incomplete: bool  # capped at the smallest window: studies may be missing


def step(w: Window, answer: Answer) -> Step:
    """What one answer means: keep its studies, or split the window and ask again."""
    if not answer.capped:
        return Step(answer.studies, [], False)
    ignored = any(not w.holds_time(s.study_time) for s in answer.studies)
    parts = split(w, time_ignored=ignored)
    if parts:
        return Step([], parts, False)
    return Step(answer.studies, [], True)
