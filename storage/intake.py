"""Objects that arrive over HTTP enter like C-STOREs: validated, spooled durably, then ingested."""

from __future__ import annotations

from collections.abc import Callable

from storage import spool
from storage.dicomheader import Identity, validate_part10
from storage.spool import RecordRef, SpoolWriter


class Intake:
    def __init__(self, writer: SpoolWriter, notify: Callable[[RecordRef], None]) -> None:
        self.writer = writer
        self.notify = notify

    def accept(self, payload: bytes, *, source: str, address: str) -> Identity:
        """Spool one Part 10 file; returns its UIDs once it is on disk (raises InvalidObject,
        or OSError when the spool cannot be written)."""
        ident = validate_part10(payload)
        meta = spool.received(source, address, ident.sop_uid)
        self.notify(self.writer.append(meta, payload))
        return ident
