"""Audit events as DICOM PS3.15 audit messages (A.5) over syslog, for the trust's audit
record repository (IHE ATNA): RFC 5424 over UDP, or over TCP or TLS with octet counting
(RFC 6587/5425), set by `AUDIT_SYSLOG`.

The audit table stays the system of record: messages are sent from a queue by a thread of
their own, so an unreachable repository slows no read; what it misses is logged.
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import logging
import queue
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger("pacsbroker.audit")

# PS3.15 A.5 / CID 400 (DCM) event IDs with their EventActionCode, by our action's prefix
_EVENTS: list[tuple[str, tuple[str, str], str]] = [
    ("audit", ("110101", "Audit Log Used"), "R"),
    ("dicom.find", ("110112", "Query"), "E"),
    ("dicom.worklist", ("110112", "Query"), "E"),
    ("dicomweb.search", ("110112", "Query"), "E"),
    ("epr.studies", ("110112", "Query"), "E"),
    ("dicom.move", ("110104", "DICOM Instances Transferred"), "R"),
    ("dicom.get", ("110104", "DICOM Instances Transferred"), "R"),
    ("research.download", ("110106", "Export"), "R"),
    ("research.export", ("110106", "Export"), "R"),
    ("pas-", ("110110", "Patient Record"), "U"),
    ("order", ("110109", "Order Record"), "U"),
    ("quarantine-reject", ("110105", "DICOM Study Deleted"), "D"),
    ("retention", ("110105", "DICOM Study Deleted"), "D"),
    ("rejection-delete", ("110105", "DICOM Study Deleted"), "D"),
    ("dicomize", ("110107", "Import"), "C"),
    ("upload", ("110107", "Import"), "C"),
    ("dicomweb.store", ("110107", "Import"), "C"),
    ("migration", ("110107", "Import"), "C"),
    ("fixity-mismatch", ("110113", "Security Alert"), "E"),
    ("research.reidentify", ("110110", "Patient Record"), "R"),
    ("quarantine", ("110110", "Patient Record"), "U"),
    ("legal-hold", ("110110", "Patient Record"), "U"),
]
_ACCESSED = (("110103", "DICOM Instances Accessed"), "R")
_SYSLOG_PRI = 10 * 8 + 5  # facility authpriv, severity notice (RFC 5424, IHE ITI TF-2 3.20)
_QUEUE = 10_000


def message(row: dict[str, Any], source_id: str) -> ET.Element:
    """The PS3.15 AuditMessage for one audit row."""
    action = str(row["action"])
    (code, meaning), verb = next(
        ((event, verb) for prefix, event, verb in _EVENTS if action.startswith(prefix)),
        _ACCESSED,
    )
    at = row["at"]
    stamp = at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        EventActionCode=verb,
        EventDateTime=stamp,
        EventOutcomeIndicator="0" if row["outcome"] == "success" else "4",
    )
    ET.SubElement(ident, "EventID", {"csd-code": code, "codeSystemName": "DCM"}).set(
        "originalText", meaning
    )
    ET.SubElement(ident, "EventOutcomeDescription").text = f"{action}: {row['detail']}"[:1024]
    requestor = ET.SubElement(
        root, "ActiveParticipant", UserID=str(row["actor"]), UserIsRequestor="true"
    )
    if row["source"]:
        requestor.attrib.update(_access_point(str(row["source"])))
    if row["role"]:
        ET.SubElement(
            requestor, "RoleIDCode", {"csd-code": str(row["role"]), "codeSystemName": "local"}
        ).set("originalText", str(row["role"]))
    ET.SubElement(root, "ActiveParticipant", UserID=source_id, UserIsRequestor="false")
    ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=source_id)
    if row["patient_id"]:
        _participant(root, row["patient_id"], "1", "1", ("2", "RFC-3881", "Patient Number"))
    if row["study_uid"]:
        _participant(root, row["study_uid"], "2", "3", ("110180", "DCM", "Study Instance UID"))
    return root


def _access_point(source: str) -> dict[str, str]:
    """NetworkAccessPointID and its type (1 machine name, 2 IP address; RFC 3881) of a source
    written as an address, an IPv4 address with its port, or a name (cli, pas, ...)."""
    host = source.rsplit(":", 1)[0] if source.count(":") == 1 else source
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "1"}
    return {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "2"}


def _participant(
    root: ET.Element, value: str, kind: str, role: str, id_type: tuple[str, str, str]
) -> None:
    obj = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=value,
        ParticipantObjectTypeCode=kind,
        ParticipantObjectTypeCodeRole=role,
    )
    code, system, meaning = id_type
    ET.SubElement(obj, "ParticipantObjectIDTypeCode", {"csd-code": code}).attrib.update(
        {"codeSystemName": system, "originalText": meaning}
    )


def syslog_frame(xml: ET.Element, host: str) -> bytes:
    """RFC 5424: header, no structured data, the message as UTF-8 with its BOM."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = f"<{_SYSLOG_PRI}>1 {now} {host or '-'} pacsbroker - IHE+RFC-3881 - "
    return (
        head.encode() + b"\xef\xbb\xbf" + ET.tostring(xml, encoding="utf-8", xml_declaration=True)
    )


class SyslogSender:
    """Sends audit rows to one syslog destination from a thread of its own."""

    def __init__(self, url: str, source_id: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname:
            raise ValueError(f"AUDIT_SYSLOG {url!r}: use udp://, tcp:// or tls://host:port")
        self.url = url
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (6514 if parts.scheme == "tls" else 514)
        self.source_id = source_id
        self.hostname = socket.gethostname()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(_QUEUE)
        self._sock: socket.socket | None = None
        self._dropped = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="audit-syslog", daemon=True).start()

    def send(self, rows: list[dict[str, Any]]) -> None:
        """Queue the rows; when the queue is full they are dropped and that is logged."""
        for row in rows:
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                with self._lock:
                    self._dropped += 1
                    dropped = self._dropped
                if dropped in (1, 100, 10_000):
                    log.error(
                        "audit syslog %s:%d is behind: %d events not sent",
                        self.host,
                        self.port,
                        dropped,
                    )

    def _run(self) -> None:
        while True:
            row = self._queue.get()
            frame = syslog_frame(message(row, self.source_id), self.hostname)
            try:
                self._write(frame)
            except OSError as e:
                log.warning("audit syslog %s:%d: %s; event not sent", self.host, self.port, e)
                self._close()
            finally:
                self._queue.task_done()

    def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the queued events to be sent; log what is left."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._queue.unfinished_tasks:
            log.error(
                "audit syslog %s:%d: %d events not sent before exit",
                self.host,
                self.port,
                self._queue.unfinished_tasks,
            )

    def _write(self, frame: bytes) -> None:
        if self.scheme == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(frame, (self.host, self.port))
            return
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=10)
            if self.scheme == "tls":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
            self._sock = sock
        self._sock.sendall(f"{len(frame)} ".encode() + frame)  # RFC 6587 octet counting

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_sender: SyslogSender | None = None


def configure(url: str, source_id: str) -> None:
    """Send this process's audit events to `url` too (empty: the audit table only)."""
    global _sender
    if url and (_sender is None or (_sender.url, _sender.source_id) != (url, source_id)):
        if _sender is None:
            atexit.register(close)  # also for CLI commands, which may never close an Archive
        _sender = SyslogSender(url, source_id)


def forward(rows: list[dict[str, Any]]) -> None:
    """Queue audit rows for the syslog destination, if one is configured."""
    if _sender is not None:
        _sender.send(rows)


def forward_on_commit(session: Session, rows: list[dict[str, Any]]) -> None:
    """`forward` once the session commits the rows; never, if it rolls them back."""
    if _sender is None:
        return
    pending = [True]  # SQLAlchemy refuses to remove a listener while it runs

    def committed(_session: Session) -> None:
        if pending:
            pending.clear()
            forward(rows)

    def rolled_back(*_args: object) -> None:
        pending.clear()

    event.listen(session, "after_commit", committed, once=True)
    event.listen(session, "after_rollback", rolled_back, once=True)


def close(timeout: float = 5.0) -> None:
    """Send what is queued before the process exits (CLI commands exit right away)."""
    if _sender is not None:
        _sender.drain(timeout)
