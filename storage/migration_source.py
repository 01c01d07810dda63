"""What a migration job needs of a legacy PACS (broker/migrate.py speaks DICOM for it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from storage.migration_windows import Answer, Window


class SourceError(Exception):
    """The legacy PACS cannot be used (refused us, does not know our AE): the job stops."""


class SourceUnavailable(SourceError):
    """The legacy PACS did not answer; retried, then the job stops (a retry resumes it)."""


class StudyRefused(Exception):
    """The legacy PACS refused to send one study: reported, and the job goes on."""


@dataclass
class SeriesCount:
    series_uid: str
    modality: str = ""
    instances: int | None = None  # None: the PACS would not say


@dataclass
class SourceCounts:
    series: dict[str, SeriesCount] = field(default_factory=dict)
    per_series: bool = True  # False: the PACS capped series and image queries alike
    total: int | None = None  # the study's total, when per-series counts are unknown

    def complete_in(self, ours: dict[str, int]) -> bool:
        """Whether the index already holds at least what the source has."""
        if not self.series:
            return False
        if self.per_series:
            return all(
                ours.get(s.series_uid, 0) >= (s.instances or 0) for s in self.series.values()
            )
        return self.total is not None and sum(ours.values()) >= self.total


@dataclass
class Retrieved:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    comment: str = ""


class LegacySource(Protocol):
    def echo(self) -> None: ...
    def find(self, window: Window) -> Answer: ...
    def counts(self, study_uid: str) -> SourceCounts: ...
    def retrieve(self, study_uid: str) -> Retrieved: ...
