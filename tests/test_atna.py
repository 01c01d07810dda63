"""Audit events as DICOM PS3.15 audit messages over syslog (RFC 5424), received by a socket
standing in for the trust's audit record repository."""

from __future__ import annotations

import datetime as dt
import re
import socket
import time
from xml.etree import ElementTree as ET

import httpx
from sqlalchemy.orm import Session

from storage import atna, audit, nationalid
from storage.atna import SyslogSender
from storage.db import make_engine, migrate
from tests.conftest import SAMPLES, Broker, free_port
from tests.dcmtk import findscu, storescu
from tests.test_dimse import wait_instances
from tools.pas_sim import adt_message, send

FRAME = re.compile(
    rb"<85>1 \S+ \S+ pacsbroker - IHE\+RFC-3881 - \xef\xbb\xbf(?P<xml><\?xml.*)", re.S
)


def audit_message(frame: bytes) -> ET.Element:
    found = FRAME.fullmatch(frame)
    assert found, frame[:200]
    return ET.fromstring(found["xml"])


def attr(m: ET.Element, path: str, name: str) -> str:
    found = m.find(path)
    assert found is not None, path
    return found.get(name, "")


def received(sock: socket.socket, want: int, timeout: float = 10) -> list[ET.Element]:
    sock.settimeout(0.5)
    out: list[ET.Element] = []
    deadline = time.time() + timeout
    while len(out) < want and time.time() < deadline:
        try:
            out.append(audit_message(sock.recv(65536)))
        except TimeoutError:
            continue
    return out


def test_reads_over_dicomweb_and_c_find_reach_the_repository(broker_factory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as repository:
        repository.bind(("127.0.0.1", 0))
        port = repository.getsockname()[1]
        b: Broker = broker_factory({"PACSBROKER_AUDIT_SYSLOG": f"udp://127.0.0.1:{port}"}).start()
        files = sorted((SAMPLES / "kari-ct").glob("*.dcm"))[:1]
        assert storescu(b.dicom_port, files).returncode == 0
        wait_instances(b, 1)
        tok = b.cli("token", "--user", "dr-atna", "--role", "clinician").stdout.strip()
        r = httpx.get(
            f"http://127.0.0.1:{b.http_port}/dicomweb/studies",
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert r.status_code == 200 and r.json()
        patient = r.json()[0]["00100020"]["Value"][0]
        assert findscu(b.dicom_port, {"QueryRetrieveLevel": "STUDY", "PatientID": patient})
        a04 = adt_message("A04", nationalid.make(dt.date(1970, 1, 2), 123, synthetic=True), "A^B")
        assert b"|AA|" in send("127.0.0.1", b.hl7_port, a04)
        messages = received(repository, 3)
    by_user = {attr(m, "ActiveParticipant", "UserID"): m for m in messages}
    assert {"dr-atna", "FINDSCU", "PASSIM|HF"} <= set(by_user), [ET.tostring(m) for m in messages]
    pas = by_user.pop("PASSIM|HF")  # a change: the patient record, updated
    assert attr(pas, "EventIdentification/EventID", "csd-code") == "110110"
    assert attr(pas, "EventIdentification", "EventActionCode") == "U"
    for user, m in by_user.items():
        assert attr(m, "EventIdentification", "EventActionCode") == "E"
        assert attr(m, "EventIdentification/EventID", "csd-code") == "110112"  # Query
        ids = {
            attr(o, "ParticipantObjectIDTypeCode", "csd-code"): o.get("ParticipantObjectID")
            for o in m.iter("ParticipantObjectIdentification")
        }
        assert ids["2"] == patient, user  # Patient Number
        assert attr(m, "AuditSourceIdentification", "AuditSourceID") == "PACSBROKER"


def test_tcp_frames_are_octet_counted() -> None:
    """RFC 6587 3.4.1: each message is preceded by its length and a space."""
    with socket.create_server(("127.0.0.1", free_port())) as server:
        sender = SyslogSender(f"tcp://127.0.0.1:{server.getsockname()[1]}", "PACSBROKER")
        row = {
            "at": dt.datetime.now(dt.UTC),
            "actor": "dr-tcp",
            "role": "clinician",
            "source": "10.0.0.7",
            "action": "epr.image",
            "patient_id": "12846110028",
            "study_uid": "1.2.3",
            "outcome": "success",
            "detail": "key image",
        }
        sender.send([row, {**row, "action": "dicom.move"}])
        conn, _ = server.accept()
        conn.settimeout(10)
        data = b""
        while data.count(b"</AuditMessage>") < 2:
            data += conn.recv(65536)
        conn.close()
    codes = []
    while data:
        length, _, rest = data.partition(b" ")
        frame, data = rest[: int(length)], rest[int(length) :]
        m = audit_message(frame)
        codes.append(attr(m, "EventIdentification/EventID", "csd-code"))
        assert attr(m, "ActiveParticipant", "NetworkAccessPointID") == "10.0.0.7"
    assert codes == ["110103", "110104"]  # instances accessed, then transferred


def test_a_change_rolled_back_is_never_sent(tmp_path, monkeypatch) -> None:
    sent: list[dict[str, object]] = []

    class Capture:
        def send(self, rows: list[dict[str, object]]) -> None:
            sent.extend(rows)

    monkeypatch.setattr(atna, "_sender", Capture())
    engine = make_engine(f"sqlite:///{tmp_path}/index.db")
    migrate(engine)
    try:
        with Session(engine) as s:
            s.begin()
            audit.record(s, actor="undone", action="legal-hold-set", source="cli")
            s.rollback()
            with s.begin():  # a later commit of the same session
                pass
        assert sent == []
        with Session(engine) as s, s.begin():
            audit.record(s, actor="kept", action="legal-hold-set", source="cli")
        assert [r["actor"] for r in sent] == ["kept"]
    finally:
        engine.dispose()
