"""The DICOM side of legacy PACS migration (storage/migration.py): C-FIND, C-MOVE to ourselves
or C-GET, one association at a time per worker, released between studies."""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context, build_role

from broker.dimse.contexts import (
    STORAGE_SYNTAXES,
    STUDY_FIND,
    STUDY_GET,
    STUDY_MOVE,
    UNCOMPRESSED,
    storage_classes,
)
from storage import jobs, migration
from storage.migration import MigrationParams
from storage.migration_source import (
    Retrieved,
    SeriesCount,
    SourceCounts,
    SourceError,
    SourceUnavailable,
    StudyRefused,
)
from storage.migration_windows import Answer, Found, Window, is_capped
from storage.settings import Settings

log = logging.getLogger("pacsbroker.migrate")
VERIFICATION = "1.2.840.10008.1.1"
MOVE_DESTINATION_UNKNOWN = 0xA801
STUDY_KEYS = {
    "StudyInstanceUID": "",
    "StudyDate": "",
    "StudyTime": "",
    "PatientID": "",
    "AccessionNumber": "",
    "NumberOfStudyRelatedInstances": "",
}


def _nodelay(event: Event) -> None:
    """Without it, each small DIMSE message waits ~40 ms for the peer's delayed ACK."""
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def parse_source(text: str) -> tuple[str, str, int]:
    """`AE@host:port` (or just `AE`, found in PEERS) → (AE, host, port)."""
    ae, _, where = text.partition("@")
    if not where:
        return ae, "", 0
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r}: expected AE@host:port")
    return ae, host.strip("[]"), int(port)


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _count(ds: Dataset, keyword: str) -> int | None:
    value = _text(ds, keyword)
    return int(value) if value.isdigit() else None


class DimseSource:
    """A legacy PACS reached over DIMSE as `params` say; `settings` name us."""

    def __init__(self, settings: Settings, params: MigrationParams) -> None:
        self.p = params
        self.settings = settings
        self.ae = AE(settings.ae_title)
        self.ae.acse_timeout = 30
        self.ae.network_timeout = settings.network_timeout
        self.ae.dimse_timeout = settings.network_timeout
        self.ae.maximum_pdu_size = settings.max_pdu
        # C-GET sends the objects on to our own receivers under the PACS's AE title, so they
        # enter through the spool exactly as C-MOVE sub-operations would.
        self.relay_ae = AE(params.source_ae)
        self.relay_ae.acse_timeout = 30
        self.relay_ae.dimse_timeout = settings.network_timeout
        self.where = f"{params.source_ae}@{params.host}:{params.port}"

    @contextmanager
    def _association(self, contexts: list[PresentationContext], **kw: Any) -> Iterator[Association]:
        handlers = [(evt.EVT_CONN_OPEN, _nodelay), *kw.pop("evt_handlers", [])]
        try:
            assoc = self.ae.associate(
                self.p.host,
                self.p.port,
                contexts,
                ae_title=self.p.source_ae,
                evt_handlers=handlers,
                **kw,
            )
        except OSError as e:
            raise SourceUnavailable(f"{self.where}: {e}") from None
        if not assoc.is_established:
            why = "rejected our association" if assoc.is_rejected else "did not answer"
            raise SourceUnavailable(
                f"{self.where} {why} (does it know {self.settings.ae_title} at this address?)"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self) -> None:
        with self._association([build_context(VERIFICATION)]) as assoc:
            status = assoc.send_c_echo()
        if not status or status.Status != 0:
            raise SourceError(f"{self.where} answered C-ECHO with {status}")

    def _find(self, level: str, keys: dict[str, str], limit: int) -> tuple[list[Dataset], bool]:
        """Answers and whether they were capped; a refusal other than for size is an error."""
        out: list[Dataset] = []
        with self._association([build_context(STUDY_FIND, UNCOMPRESSED)]) as assoc:
            for status, ident in assoc.send_c_find(_identifier(level, keys), STUDY_FIND):
                if not status:
                    raise SourceUnavailable(f"{self.where}: C-FIND broke off")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if ident is not None:
                        out.append(ident)
                    continue
                if code == 0 or is_capped(code, len(out), limit):
                    return out, is_capped(code, len(out), limit)
                comment = _text(status, "ErrorComment")
                raise StudyRefused(f"C-FIND {level} refused: status 0x{code:04X} {comment}")
        raise SourceUnavailable(f"{self.where}: C-FIND ended without a final status")

    def find(self, window: Window) -> Answer:
        try:
            found, capped = self._find("STUDY", {**STUDY_KEYS, **window.keys()}, self.p.find_limit)
        except StudyRefused as e:
            raise SourceError(f"{self.where}: {e}") from None
        return Answer(
            [
                Found(
                    _text(ds, "StudyInstanceUID"),
                    _text(ds, "StudyDate"),
                    _text(ds, "StudyTime"),
                    _text(ds, "PatientID"),
                    _text(ds, "AccessionNumber"),
                    _count(ds, "NumberOfStudyRelatedInstances"),
                )
                for ds in found
                if _text(ds, "StudyInstanceUID")
            ],
            capped,
        )

    def counts(self, study_uid: str) -> SourceCounts:
        """Per series: NumberOfSeriesRelatedInstances, else IMAGE-level answers counted."""
        keys = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": "",
            "Modality": "",
            "NumberOfSeriesRelatedInstances": "",
        }
        answers, capped = self._find("SERIES", keys, self.p.find_limit)
        series = {
            uid: SeriesCount(
                uid, _text(ds, "Modality"), _count(ds, "NumberOfSeriesRelatedInstances")
            )
            for ds in answers
            if (uid := _text(ds, "SeriesInstanceUID"))
        }
        if not capped and all(s.instances is not None for s in series.values()):
            return SourceCounts(series)
        images, capped = self._images(study_uid)
        if capped:
            total = self._study_total(study_uid)
            return SourceCounts(series, per_series=False, total=total)
        counted: dict[str, SeriesCount] = {}
        for ds in images:
            uid = _text(ds, "SeriesInstanceUID")
            s = counted.setdefault(
                uid, SeriesCount(uid, series.get(uid, SeriesCount(uid)).modality, 0)
            )
            s.instances = (s.instances or 0) + 1
        return SourceCounts(counted)

    def _images(self, study_uid: str) -> tuple[list[Dataset], bool]:
        keys = {
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": "",
            "SOPInstanceUID": "",
            "SOPClassUID": "",
        }
        return self._find("IMAGE", keys, 0)  # instance-level limits, if any, say so by status

    def _study_total(self, study_uid: str) -> int | None:
        keys = {"StudyInstanceUID": study_uid, "NumberOfStudyRelatedInstances": ""}
        found, _ = self._find("STUDY", keys, 0)
        return _count(found[0], "NumberOfStudyRelatedInstances") if found else None

    def retrieve(self, study_uid: str) -> Retrieved:
        ident = _identifier("STUDY", {"StudyInstanceUID": study_uid})
        if self.p.method == "get":
            return self._get(study_uid, ident)
        with self._association([build_context(STUDY_MOVE, UNCOMPRESSED)]) as assoc:
            responses = assoc.send_c_move(ident, self.settings.ae_title, STUDY_MOVE)
            return self._outcome("C-MOVE", responses)

    def _outcome(self, service: str, responses: Iterator[tuple[Dataset, Any]]) -> Retrieved:
        got = Retrieved()
        for status, _ident in responses:
            if not status:
                raise SourceUnavailable(f"{self.where}: {service} broke off")
            code = int(status.Status)
            got.completed = _count(status, "NumberOfCompletedSuboperations") or got.completed
            got.failed = _count(status, "NumberOfFailedSuboperations") or got.failed
            got.warning = _count(status, "NumberOfWarningSuboperations") or got.warning
            if code in (0xFF00, 0xFF01):
                continue
            got.comment = f"status 0x{code:04X} {_text(status, 'ErrorComment')}".strip()
            if code == MOVE_DESTINATION_UNKNOWN:
                raise SourceError(
                    f"{self.where} does not know {self.settings.ae_title} as a move destination: "
                    "add us to its DICOM nodes"
                )
            if code not in (0x0000, 0xB000) and not got.completed:
                raise StudyRefused(f"{service} refused: {got.comment}")
            return got
        raise SourceUnavailable(f"{self.where}: {service} ended without a final status")

    # -- C-GET, relayed to our own receivers

    def _get(self, study_uid: str, ident: Dataset) -> Retrieved:
        images, _capped = self._images(study_uid)
        # all storage classes (uncompressed only) if the PACS will not name the study's own
        classes = sorted({_text(ds, "SOPClassUID") for ds in images} - {""}) or storage_classes()
        storage = _storage_contexts(classes)
        roles = [build_role(c, scp_role=True) for c in classes]
        relay = self.relay_ae.associate(
            migration.relay_host(self.settings),
            self.settings.dicom_port,
            storage,
            ae_title=self.settings.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        )
        if not relay.is_established:
            raise SourceError(f"our own DICOM port {self.settings.dicom_port} refused the relay")
        try:
            with tempfile.TemporaryDirectory(prefix="migrate-get-") as tmp:
                handler = (evt.EVT_C_STORE, _relay_store(relay, Path(tmp)))
                contexts = [build_context(STUDY_GET, UNCOMPRESSED), *storage]
                with self._association(contexts, ext_neg=roles, evt_handlers=[handler]) as assoc:
                    return self._outcome("C-GET", assoc.send_c_get(ident, STUDY_GET))
        finally:
            relay.release()


def _storage_contexts(classes: list[str]) -> list[PresentationContext]:
    """One context per (class, syntax), so the PACS can send each object as it holds it;
    uncompressed first, as many syntaxes as 127 contexts allow."""
    if not classes:
        return []
    per_class = max(1, 127 // len(classes))
    return [
        build_context(UID(c), [UID(ts)]) for ts in STORAGE_SYNTAXES[:per_class] for c in classes
    ][:127]


def _relay_store(relay: Association, tmp: Path) -> Any:
    """A C-STORE handler for C-GET sub-operations: pass the object on, bytes unchanged, and
    answer with what our receiver answered (its success means the object is in our spool)."""

    def handle(event: Event) -> int:
        path = tmp / "object.dcm"
        path.write_bytes(event.encoded_dataset())
        status = relay.send_c_store(path)
        return int(status.Status) if status else 0xA700

    return handle


@jobs.handler(migration.MIGRATION)
def run(ctx: jobs.JobContext) -> dict[str, Any]:
    """The migration job: this process's receivers take what the legacy PACS sends."""
    source = DimseSource(ctx.archive.settings, MigrationParams(**ctx.params))
    return migration.Migration(ctx, source).run()
