"""PDQm lookups against PAS: a total deadline, strict reading of the Bundle, re-verification."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.pas import reconcile
from broker.pas.pdqm import PasAmbiguous, PasClient, PasUnavailable
from broker.pas.reconcile import Reconciler, assignable
from storage import catalog
from storage.db import make_engine, migrate, session_factory
from storage.demographics import Identifier
from storage.models import AuditEvent, Instance, Patient, PatientStatus
from tests.test_pas import KARI, header

Bundle = dict[str, Any]
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"


def patient(pid: str, family: str, *, active: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "active": active,
        "identifier": [{"system": FNR, "value": KARI}],
        "name": [{"family": family, "given": ["Kari"]}],
        "birthDate": "1984-03-09",
        "gender": "female",
        **extra,
    }


def replaced_by(ref: str) -> list[dict[str, Any]]:
    return [{"type": "replaced-by", "other": {"reference": ref}}]


def searchset(*resources: dict[str, Any], mode: str = "match") -> Bundle:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": mode}} for r in resources],
    }


def client_for(routes: dict[str, Bundle | dict[str, Any]]) -> PasClient:
    """A PasClient whose PAS answers `routes` (path → JSON), 404 for anything else."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = routes.get(request.url.path)
        return httpx.Response(404) if body is None else httpx.Response(200, json=body)

    c = PasClient("http://pas.test/fhir")
    c.http = httpx.Client(base_url="http://pas.test/fhir", transport=httpx.MockTransport(handle))
    return c


KARI_ID = Identifier(FNR, KARI)


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Bundle", "type": "searchset"},  # neither total nor entry
        {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
        searchset(patient("1", "Old", active=False)),  # inactive, no link: not a match
        searchset(patient("1", "Nordmann"), mode="include"),  # included, not matched
    ],
)
def test_no_active_match_is_unknown_to_pas(bundle: Bundle) -> None:
    assert client_for({"/fhir/Patient": bundle}).lookup(KARI_ID) is None


def test_two_active_patients_are_ambiguous_not_a_guess() -> None:
    two = searchset(patient("1", "Nordmann"), patient("2", "Hansen"))
    with pytest.raises(PasAmbiguous, match="2 active patients"):
        client_for({"/fhir/Patient": two}).lookup(KARI_ID)
    rec = Reconciler(client_for({"/fhir/Patient": two}), allow_synthetic=True)
    decision = rec.lookup(KARI_ID)
    assert decision.status is PatientStatus.QUARANTINED
    assert decision.reason.startswith("ambiguous")


def test_a_replaced_patient_is_followed_to_its_survivor() -> None:
    old = patient("1", "Old", active=False, link=replaced_by("Patient/2"))
    survivor = patient("2", "Nordmann")
    # the survivor read from PAS, included in the Bundle, or matched itself too
    read = client_for({"/fhir/Patient": searchset(old), "/fhir/Patient/2": survivor})
    bundled = searchset(old)
    bundled["entry"].append({"resource": survivor, "search": {"mode": "include"}})
    both = searchset(old, survivor)
    for c in (read, client_for({"/fhir/Patient": bundled}), client_for({"/fhir/Patient": both})):
        found = c.lookup(KARI_ID)
        assert found is not None and found.name == "Nordmann^Kari"


def test_an_absolute_reference_and_a_chain_of_replacements_are_followed() -> None:
    first = patient("1", "First", active=False, link=replaced_by("http://pas.test/fhir/Patient/2"))
    second = patient("2", "Second", active=False, link=replaced_by("Patient/3"))
    routes = {
        "/fhir/Patient": searchset(first),
        "/fhir/Patient/2": second,
        "/fhir/Patient/3": patient("3", "Nordmann"),
    }
    found = client_for(routes).lookup(KARI_ID)
    assert found is not None and found.name == "Nordmann^Kari"


def test_replacements_ending_at_two_patients_are_ambiguous() -> None:
    a = patient("1", "A", active=False, link=replaced_by("Patient/3"))
    routes = {
        "/fhir/Patient": searchset(a, patient("2", "Hansen")),
        "/fhir/Patient/3": patient("3", "Nordmann"),
    }
    with pytest.raises(PasAmbiguous):
        client_for(routes).lookup(KARI_ID)


def test_a_link_loop_or_dangling_link_is_no_match() -> None:
    a = patient("1", "A", active=False, link=replaced_by("Patient/2"))
    b = patient("2", "B", active=False, link=replaced_by("Patient/1"))
    assert client_for({"/fhir/Patient": searchset(a, b)}).lookup(KARI_ID) is None
    assert client_for({"/fhir/Patient": searchset(a)}).lookup(KARI_ID) is None


@pytest.fixture
def dribbling_pas() -> Iterator[str]:
    """A PAS that accepts, reads the request, then sends its answer one byte every 0.3 s."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    body = json.dumps(searchset()).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            for i in range(len(answer)):
                if stop.wait(0.3):
                    return
                conn.sendall(answer[i : i + 1])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/fhir"
    stop.set()
    srv.close()
    t.join(5)


def test_a_dribbling_pas_costs_at_most_the_timeout(dribbling_pas: str) -> None:
    timeout = 1.0
    started = time.monotonic()
    with pytest.raises(PasUnavailable, match="within"):
        PasClient(dribbling_pas, timeout=timeout).lookup(KARI_ID)
    # bounded, not fast: the machine may be loaded
    assert time.monotonic() - started < 2 * timeout


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


class FakePas:
    """A switchable PAS behind a PasClient: down, unknown, or knowing Kari."""

    def __init__(self) -> None:
        self.down = False
        self.known: list[dict[str, Any]] = []
        self.searches = 0
        self.client = PasClient("http://pas.test/fhir", retry_after=0)
        self.client.http = httpx.Client(
            base_url="http://pas.test/fhir", transport=httpx.MockTransport(self.handle)
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        self.searches += 1
        return httpx.Response(200, json=searchset(*self.known))


def ingest(rec: Reconciler, sessions: sessionmaker[Session], uid: str, **values: str) -> None:
    """Index one object as the ingest worker does: decide outside, file inside the transaction."""
    h = header(PatientID=KARI, SOPInstanceUID=uid, **values)
    decisions = rec.decide(sessions, [h])
    archived = catalog.Archived(h, f"key-{uid}", 1, uid, "CT1", dt.datetime.now(dt.UTC))
    with sessions() as s, s.begin():
        catalog.file_instances(s, [archived], lambda s, h: rec.patient_for(s, h, decisions))


def kari(sessions: sessionmaker[Session]) -> tuple[str, str]:
    with sessions() as s:
        p = s.scalars(select(Patient).where(Patient.patient_id == KARI)).one()
        return p.status, p.status_reason


def test_reverification_records_header_differences(sessions: sessionmaker[Session]) -> None:
    pas = FakePas()
    pas.down = True
    rec = Reconciler(pas.client, allow_synthetic=True)
    ingest(rec, sessions, "1.2.3.1", PatientName="Nordman^Kary", PatientSex="F")
    assert kari(sessions)[0] == PatientStatus.UNVERIFIED
    pas.down, pas.known = False, [patient("1", "Nordmann")]
    assert rec.reverify(sessions) == 1
    assert kari(sessions)[0] == PatientStatus.VERIFIED
    with sessions() as s:
        (inst,) = s.scalars(select(Instance))
        assert json.loads(inst.header_differences) == {
            "PatientName": "Nordman^Kary",
            "PatientBirthDate": header().birth_date,
        }


def auto_resolutions(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.action == "quarantine-auto-resolve"))
        )


def test_a_patient_unknown_to_pas_is_asked_again(sessions: sessionmaker[Session]) -> None:
    pas = FakePas()
    rec = Reconciler(pas.client, allow_synthetic=True)
    ingest(rec, sessions, "1.2.3.1")
    assert kari(sessions) == (PatientStatus.QUARANTINED, f"Patient ID {KARI} is unknown to PAS")
    assert rec.reverify(sessions) == 1  # still unknown: stays in quarantine
    assert kari(sessions)[0] == PatientStatus.QUARANTINED
    pas.known = [patient("1", "Nordmann")]
    assert rec.reverify(sessions) == 1
    assert kari(sessions)[0] == PatientStatus.VERIFIED
    assert len(auto_resolutions(sessions)) == 1


def test_an_invalid_id_is_not_asked_about_again(sessions: sessionmaker[Session]) -> None:
    pas = FakePas()
    rec = Reconciler(pas.client, allow_synthetic=True)
    h = header(PatientID="12345678901")
    with sessions() as s, s.begin():
        rec.patient_for(s, h, rec.decide(sessions, [h]))
    assert rec.reverify(sessions) == 0 and pas.searches == 0


def test_a_new_object_asks_pas_again_at_most_once_per_interval(
    sessions: sessionmaker[Session],
) -> None:
    pas = FakePas()
    rec = Reconciler(pas.client, allow_synthetic=True, retry_interval=0.5)
    ingest(rec, sessions, "1.2.3.1")
    assert pas.searches == 1
    ingest(rec, sessions, "1.2.3.2")  # asked again: PAS may have registered Kari since
    ingest(rec, sessions, "1.2.3.3")  # not within the interval
    assert pas.searches == 2
    pas.known = [patient("1", "Nordmann")]
    time.sleep(0.6)
    ingest(rec, sessions, "1.2.3.4")
    assert pas.searches == 3
    assert kari(sessions)[0] == PatientStatus.VERIFIED
    with sessions() as s:
        assert len(s.scalars(select(Instance)).all()) == 4
    assert len(auto_resolutions(sessions)) == 1


def test_assignable_registers_a_patient_only_pas_knows(sessions: sessionmaker[Session]) -> None:
    pas = FakePas()
    with sessions() as s, s.begin():
        assert assignable(s, pas.client, Identifier("", KARI)) is None
        pas.client.clear()
        pas.known = [patient("1", "Nordmann")]
        found = assignable(s, pas.client, Identifier("", KARI))
        assert found is not None and found.status == PatientStatus.VERIFIED
    pas.down = True
    with sessions() as s:
        found = assignable(s, pas.client, Identifier("", KARI))  # the registry has it now
        assert found is not None and found.name == "Nordmann^Kari"


def test_a_batch_of_one_patients_study_asks_the_registry_once(
    sessions: sessionmaker[Session], monkeypatch
) -> None:
    rec = Reconciler(None, allow_synthetic=True)
    ingest(rec, sessions, "1.2.3.1")
    calls: list[Identifier] = []
    real_find = reconcile.registry.find

    def counting_find(session: Session, ident: Identifier) -> Any:
        calls.append(ident)
        return real_find(session, ident)

    monkeypatch.setattr(reconcile.registry, "find", counting_find)
    rec.decide(sessions, [header(PatientID=KARI, SOPInstanceUID=f"1.2.4.{i}") for i in range(20)])
    assert len(calls) == 1
