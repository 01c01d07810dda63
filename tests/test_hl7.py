"""HL7 v2 ADT parsing and ACKs: triggers, identifiers, character sets, malformed input."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from typing import Any

import hl7
import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from broker.pas.adt import AdtApplier, HeldConnections, Tx
from broker.pas.hl7v2 import AdtMessage, Hl7Error, ack, parse_adt
from storage import registry
from storage.db import make_engine, migrate, session_factory
from storage.demographics import NATIONAL_SYSTEMS, Demographics, Identifier
from storage.models import (
    Hl7Message,
    Job,
    Patient,
    PatientIdentifier,
    PatientStatus,
    PrefetchRule,
)
from storage.nationalid import IdKind, check_digits, make
from tools.pas_sim import adt_message


def valid_id(birth: dt.date, *, synthetic: bool) -> str:
    return next(v for i in range(100, 500) if (v := make(birth, i, synthetic=synthetic)))


FNR = valid_id(dt.date(1961, 4, 12), synthetic=True)
REAL_FORMAT = valid_id(dt.date(1975, 5, 17), synthetic=False)


@pytest.mark.parametrize("trigger", ["A01", "A04", "A08", "A28", "A31"])
def test_update_triggers(trigger: str) -> None:
    m = parse_adt(adt_message(trigger, FNR, "Nordmann^Kari", "19610412", "F"), allow_synthetic=True)
    assert m.trigger == trigger
    assert m.patient.name == "Nordmann^Kari"
    assert m.patient.birth_date == "19610412" and m.patient.sex == "F"
    assert [(i.system, i.value) for i in m.patient.identifiers] == [
        ("urn:oid:2.16.578.1.12.4.1.4.1", FNR)
    ]


@pytest.mark.parametrize("trigger", ["A40", "A34", "A47"])
def test_merge_triggers_carry_the_prior_identifier(trigger: str) -> None:
    m = parse_adt(adt_message(trigger, FNR, "N^K", prior=REAL_FORMAT), allow_synthetic=True)
    assert [i.value for i in m.prior] == [REAL_FORMAT]


@pytest.mark.parametrize("charset", ["8859/1", "UNICODE UTF-8"])
def test_norwegian_letters_survive(charset: str) -> None:
    raw = adt_message("A08", FNR, "Ødegård^Åse^Bæ", charset=charset)
    m = parse_adt(raw, allow_synthetic=True)
    assert m.patient.name == "Ødegård^Åse^Bæ"
    reply = ack(m, "AA")
    assert reply.decode("latin-1" if charset == "8859/1" else "utf-8").startswith("MSH")
    parsed = hl7.parse(reply.decode("latin-1" if charset == "8859/1" else "utf-8"))
    assert str(parsed.segment("MSA")[1]) == "AA"
    assert str(parsed.segment("MSA")[2]) == m.control_id
    assert str(parsed.segment("MSH")[18]) == charset


def test_identifier_kinds() -> None:
    pid = f"PID|1||{FNR}~H123^^^HOSP^PI~777^^^&1.2.3.4&ISO^PI||A^B"
    raw = f"MSH|^~\\&|P|F|R|F|2026||ADT^A08|c1|P|2.5\r{pid}\r".encode()
    m = parse_adt(raw, allow_synthetic=True)
    assert [(i.system, i.value) for i in m.patient.identifiers] == [
        ("urn:oid:2.16.578.1.12.4.1.4.1", FNR),
        ("urn:ns:HOSP", "H123"),
        ("urn:oid:1.2.3.4", "777"),
    ]


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"", "AR", "MSH"),
        (b"\x00\xff garbage \x13", "AR", "MSH"),
        (b"MSH|", "AR", ""),
        (b"MSH|^~\\&|P|F|R|F|2026||ORU^R01|c1|P|2.5\r", "AR", "ORU"),
        (b"MSH|^~\\&|P|F|R|F|2026||ADT^A99|c1|P|2.5\r", "AR", "A99"),
        (b"MSH|^~\\&|P|F|R|F|2026||ADT^A08|c1|P|2.5\rEVN|A08\r", "AE", "PID"),
        (b"MSH|^~\\&|P|F|R|F|2026||ADT^A40|c1|P|2.5\rPID|1||H1^^^HOSP\r", "AE", "MRG"),
        (b"MSH|^~\\&|P|F|R|F|2026||ADT^A08|c1|P|2.5\rPID|1||H1^^^H||A||1961|F\r", "AE", "PID-7"),
        (b"MSH|^~\\&|P|F|R|F|2026||ADT^A08|c1|P|2.5\rPID|1||H1^^^H||A|||X\r", "AE", "PID-8"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw: bytes, code: str, words: str) -> None:
    with pytest.raises(Hl7Error) as err:
        parse_adt(raw, allow_synthetic=True)
    assert err.value.code == code and words in err.value.reason
    reply = hl7.parse(ack(err.value, err.value.code, err.value.reason).decode())
    assert str(reply.segment("MSA")[1]) == code
    assert str(reply.segment("ERR")[4]) == "E"


def test_national_id_check_digits_and_synthetic_policy() -> None:
    bad = FNR[:-1] + str((int(FNR[-1]) + 1) % 10)
    with pytest.raises(Hl7Error) as err:
        parse_adt(adt_message("A08", bad, "N^K"), allow_synthetic=True)
    assert err.value.code == "AE" and bad in err.value.reason
    with pytest.raises(Hl7Error, match="synthetic"):
        parse_adt(adt_message("A08", FNR, "N^K"), allow_synthetic=False)
    assert parse_adt(adt_message("A08", REAL_FORMAT, "N^K"), allow_synthetic=False)


def shifted(birth: dt.date, *, day: int = 0, month: int = 0) -> str:
    """A valid D-nummer (day + 40) or H-nummer (month + 40)."""
    for individual in range(100, 500):
        first9 = f"{birth.day + day:02d}{birth.month + month:02d}{birth.year % 100:02d}"
        first9 += f"{individual:03d}"
        if digits := check_digits(first9):
            return first9 + digits
    raise AssertionError("no check digits fit")


DNR = shifted(dt.date(1961, 4, 12), day=40)
HNR = shifted(dt.date(1961, 4, 12), month=40)
BAD = FNR[:-1] + str((int(FNR[-1]) + 1) % 10)


def adt(trigger: str, pid3: str, *, name: str = "A^B", mrg: str = "", cid: str = "c1") -> bytes:
    segs = [f"MSH|^~\\&|PAS|HF|PACS|HF|2026||ADT^{trigger}|{cid}|P|2.5", f"PID|1||{pid3}||{name}"]
    segs += [f"MRG|{mrg}"] if mrg else []
    return ("\r".join(segs) + "\r").encode()


def systems(m: AdtMessage) -> list[tuple[str, str]]:
    return [(i.system, i.value) for i in m.patient.identifiers]


@pytest.mark.parametrize(
    ("cx", "kind"),
    [
        (f"{FNR}^^^FNR", IdKind.FNR),
        (f"{FNR}^^^NOR", IdKind.FNR),
        (f"{FNR}^^^FNR&2.16.578.1.12.4.1.4.1&ISO", IdKind.FNR),
        (f"{FNR}^^^^NNNOR", IdKind.FNR),
        (f"{FNR}^^^^FNR", IdKind.FNR),
        (f"{FNR}", IdKind.FNR),
        (f"{DNR}^^^DNR", IdKind.DNR),
        (f"{DNR}^^^DNUMMER", IdKind.DNR),
        (f"{DNR}^^^FNR", IdKind.DNR),  # the digits decide: a D-nummer sent as FNR
        (f"{HNR}^^^HNR", IdKind.HNR),
    ],
)
def test_national_ids_by_authority_name_type_code_or_form(cx: str, kind: IdKind) -> None:
    value = cx.split("^")[0]
    assert systems(parse_adt(adt("A08", cx), allow_synthetic=True)) == [
        (NATIONAL_SYSTEMS[kind], value)
    ]
    merge = parse_adt(adt("A40", REAL_FORMAT, mrg=cx), allow_synthetic=True)
    assert [(i.system, i.value) for i in merge.prior] == [(NATIONAL_SYSTEMS[kind], value)]


@pytest.mark.parametrize(
    "cx",
    [f"{BAD}^^^FNR", f"{BAD}^^^NOR", f"{BAD}^^^^NNNOR", BAD, f"{BAD}^^^DNR", f"{FNR[:10]}^^^FNR"],
)
def test_invalid_national_ids_are_refused_however_labelled(cx: str) -> None:
    with pytest.raises(Hl7Error) as err:
        parse_adt(adt("A08", cx), allow_synthetic=True)
    assert err.value.code == "AE" and "not a valid national ID" in err.value.reason
    with pytest.raises(Hl7Error, match="MRG-1"):
        parse_adt(adt("A40", REAL_FORMAT, mrg=cx), allow_synthetic=True)


def test_local_namespaces_are_kept_and_not_validated() -> None:
    m = parse_adt(adt("A08", f"{BAD}^^^HOSP~H1^^^1.2.3.4"), allow_synthetic=True)
    assert systems(m) == [("urn:ns:HOSP", BAD), ("urn:oid:1.2.3.4", "H1")]


@pytest.mark.parametrize(
    ("pn", "charset", "name"),
    [
        ("O\\S\\Brien^Kari", "UNICODE UTF-8", "O Brien^Kari"),
        ("Back\\E\\slash^Kari", "UNICODE UTF-8", "Back slash^Kari"),
        ("Eq=ual^Kari", "UNICODE UTF-8", "Eq ual^Kari"),
        ("S\\XC3A6\\ter^Kari", "UNICODE UTF-8", "Sæter^Kari"),
        ("S\\XE6\\ter^Kari", "8859/1", "Sæter^Kari"),
        ("A\\X7C5E\\B^Kari", "UNICODE UTF-8", "A| B^Kari"),
        ("\\H\\Nordmann\\N\\^Kari\\.br\\Mari", "UNICODE UTF-8", "Nordmann^Kari Mari"),
        ("\\E\\X41\\^Kari", "UNICODE UTF-8", "X41^Kari"),
    ],
)
def test_escapes_never_become_pn_delimiters(pn: str, charset: str, name: str) -> None:
    m = parse_adt(adt_message("A08", FNR, pn, charset=charset), allow_synthetic=True)
    assert m.patient.name == name


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_segments_may_end_with_cr_lf_or_both(end: str) -> None:
    raw = adt_message("A08", FNR, "Nordmann^Kari", "19610412", "F").replace(b"\r", end.encode())
    m = parse_adt(raw, allow_synthetic=True)
    assert (m.patient.name, m.patient.birth_date, m.patient.sex) == (
        "Nordmann^Kari",
        "19610412",
        "F",
    )
    assert [i.value for i in m.patient.identifiers] == [FNR]


@pytest.mark.parametrize(
    ("msh18", "body", "code"), [("KOI8-R", b"", "AR"), ("UNICODE UTF-8", b"\xff\xfe", "AE")]
)
def test_refusals_echo_the_header_read_from_the_bytes(msh18: str, body: bytes, code: str) -> None:
    msh = f"MSH|^~\\&|PASAPP|PASFAC|PACS|HF|2026||ADT^A08|ctl-9|P|2.5||||||{msh18}\r"
    raw = msh.encode() + b"PID|1||H1^^^H||N" + body + b"\r"
    with pytest.raises(Hl7Error) as err:
        parse_adt(raw, allow_synthetic=True)
    assert err.value.code == code
    reply = hl7.parse(ack(err.value, code, err.value.reason).decode())
    assert str(reply.segment("MSA")[2]) == "ctl-9"
    assert (str(reply.segment("MSH")[5]), str(reply.segment("MSH")[6])) == ("PASAPP", "PASFAC")


# --- applying messages to the registry ------------------------------------------------------


@pytest.fixture
def applier(db_url: str) -> Iterator[AdtApplier]:
    engine = make_engine(db_url)
    migrate(engine)
    yield AdtApplier(session_factory(engine), allow_synthetic=True, app="PACSBROKER")
    engine.dispose()


def msa(reply: bytes) -> list[str]:
    return [str(f) for f in hl7.parse(reply.decode()).segment("MSA")]


class Clashing(AdtApplier):
    """Applies, then breaks a uniqueness constraint that is not the control ID's."""

    def apply(self, tx: Tx, msg: Any, peer: str) -> str:
        detail = super().apply(tx, msg, peer)
        tx.session.add_all([Patient(patient_id="dup"), Patient(patient_id="dup")])
        tx.session.flush()
        return detail


class Racing(AdtApplier):
    """As if a concurrent connection committed the same control ID in between."""

    @staticmethod
    def _seen(session: Session, msg: Any) -> bool:
        return False


def test_only_a_control_id_clash_is_a_duplicate(applier: AdtApplier) -> None:
    clashing = Clashing(applier.sessions, allow_synthetic=True, app="PACSBROKER")
    raw = adt_message("A08", FNR, "Nordmann^Kari", control_id="clash-1")
    answer = msa(clashing.handle(raw))
    assert answer[1] == "AE" and "not applied" in answer[3] and "already" not in answer[3]
    with applier.sessions() as s:
        assert registry.find(s, Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR)) is None

    racing = Racing(applier.sessions, allow_synthetic=True, app="PACSBROKER")
    assert msa(racing.handle(raw))[1:3] == ["AA", "clash-1"]
    again = msa(racing.handle(adt_message("A08", FNR, "Other^Name", control_id="clash-1")))
    assert again[1] == "AA" and "duplicate" in again[3]
    with applier.sessions() as s:
        found = registry.find(s, Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR))
        assert found is not None and found.name == "Nordmann^Kari"


@pytest.mark.parametrize(("trigger", "queued"), [("A01", 1), ("A04", 1), ("A05", 1), ("A08", 0)])
def test_admission_registration_and_preadmit_prefetch(
    applier: AdtApplier, trigger: str, queued: int
) -> None:
    with applier.sessions() as s, s.begin():
        s.add(PrefetchRule(name="ward", on_order=False, on_admission=True))
    assert msa(applier.handle(adt_message(trigger, FNR, "Nordmann^Kari")))[1] == "AA"
    with applier.sessions() as s:
        jobs = list(s.scalars(select(Job).where(Job.kind == "prefetch")))
    assert len(jobs) == queued
    assert all("admission" in j.params for j in jobs)


def test_identifiers_of_two_patients_are_refused_unchanged(applier: AdtApplier) -> None:
    ola = Demographics((Identifier(NATIONAL_SYSTEMS[IdKind.FNR], REAL_FORMAT),), "Nordmann^Ola")
    with applier.sessions() as s, s.begin():
        registry.apply_pas(s, ola)
        registry.apply_pas(s, Demographics((Identifier("urn:ns:HOSP", "H9001"),), "Ola"))
        registry.apply_pas(s, Demographics((Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR),), "K"))
    before = _identifiers(applier)
    answer = msa(applier.handle(adt("A08", f"H9001^^^HOSP~{FNR}^^^FNR", name="Nordmann^Kari")))
    assert answer[1] == "AE" and "different patients" in answer[3] and "A40" in answer[3]
    assert _identifiers(applier) == before
    with applier.sessions() as s:
        assert s.scalars(select(Hl7Message.outcome)).all() == ["AE"]


def _identifiers(applier: AdtApplier) -> list[tuple[str, str, str]]:
    with applier.sessions() as s:
        rows = s.scalars(select(PatientIdentifier).order_by(PatientIdentifier.id))
        return [(r.patient.name, r.system, r.value) for r in rows]


# --- the A08 fast path (registry.update_held) and the message log ----------------------------


def _statements(applier: AdtApplier) -> list[str]:
    """The SQL the applier's engine runs from now on (appended as it goes)."""
    seen: list[str] = []
    engine = applier.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_update_of_a_held_patient_verifies_it_and_sets_only_what_changed(
    applier: AdtApplier,
) -> None:
    fnr = Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR)
    with applier.sessions() as s, s.begin():
        registry.create(
            s, Demographics((fnr,), "Old^Name", "19610412", "F"), PatientStatus.UNVERIFIED
        )
    assert msa(applier.handle(adt_message("A08", FNR, "Nordmann^Kari", "19610412", "F")))[1] == "AA"
    with applier.sessions() as s:
        p = registry.find(s, fnr)
        assert p is not None
        assert (p.name, p.status, p.status_reason) == ("Nordmann^Kari", "verified", "")
        assert p.pas_updated_at is not None
    sql = _statements(applier)
    assert msa(applier.handle(adt_message("A08", FNR, "Nordmann^Kari", "19610412", "M")))[1] == "AA"
    (set_clause,) = [q.split(" SET ")[1].split(" WHERE ")[0] for q in sql if q.startswith("UPDATE")]
    # SQLite rewrites the index of every column an UPDATE sets, changed or not
    assert "name" not in set_clause and "status" not in set_clause and "sex" in set_clause


def test_update_held_leaves_no_stale_patient_in_the_session(applier: AdtApplier) -> None:
    fnr = Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR)
    with applier.sessions() as s, s.begin():
        loaded = registry.apply_pas(s, Demographics((fnr,), "Old^Name"))
        held = registry.update_held(s, Demographics((fnr,), "New^Name"))
        assert held is not None and held.id == loaded.id
        assert loaded.name == "New^Name"


def test_update_held_leaves_new_identifiers_and_merges_to_apply_pas(applier: AdtApplier) -> None:
    fnr = Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR)
    hosp = Identifier("urn:ns:HOSP", "H1")
    with applier.sessions() as s, s.begin():
        registry.apply_pas(s, Demographics((fnr,), "Nordmann^Kari"))
        assert registry.update_held(s, Demographics((fnr, hosp), "Nordmann^Kari")) is None
    answer = msa(applier.handle(adt("A08", f"{FNR}^^^FNR~H1^^^HOSP", name="Nordmann^Kari")))
    assert answer[1] == "AA"
    assert [(sys, value) for _, sys, value in _identifiers(applier)] == [
        (fnr.system, FNR),
        (hosp.system, "H1"),
    ]
    with applier.sessions() as s, s.begin():  # both held by one patient now
        assert registry.update_held(s, Demographics((fnr, hosp), "Nordmann^Kari")) is not None


def test_a_replay_is_a_duplicate_even_where_applying_it_again_would_fail(
    applier: AdtApplier,
) -> None:
    hosp = Identifier("urn:ns:HOSP", "H1")
    with applier.sessions() as s, s.begin():
        registry.apply_pas(s, Demographics((hosp,), "Nordmann^Kari"))
    a47 = adt("A47", "H2^^^HOSP", name="Nordmann^Kari", mrg="H1^^^HOSP", cid="move-1")
    assert msa(applier.handle(a47))[1] == "AA"
    # H1 is gone now, so a second apply would refuse "no patient holds H1"
    answer = msa(applier.handle(a47))
    assert answer[1] == "AA" and "duplicate" in answer[3]
    with applier.sessions() as s:
        assert s.scalars(select(Hl7Message.outcome)).all() == ["AA"]


def test_applied_messages_are_logged_in_the_table_not_at_info(
    applier: AdtApplier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pacsbroker.hl7")
    for i in range(3):
        raw = adt_message("A08", FNR, "Nordmann^Kari", control_id=f"quiet-{i}")
        assert msa(applier.handle(raw))[1] == "AA"
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    with applier.sessions() as s:
        assert len(s.scalars(select(Hl7Message.id)).all()) == 3


def test_segments_adt_does_not_read_are_not_parsed_and_change_nothing() -> None:
    plain = adt_message("A08", FNR, "O\\S\\Brien^Kari", "19610412", "F")
    msh, *rest = plain.decode().split("\r")
    noisy = "\r".join(
        [msh, "EVN|A08|2026", "NK1|1|Nordmann^Ola\\F\\x|~~^^&&", "ZPI|\\X41\\|\\H\\", *rest]
    )
    assert parse_adt(noisy.encode(), allow_synthetic=True) == parse_adt(plain, allow_synthetic=True)


@pytest.mark.parametrize("encoding", ["^~\\&", "^~\\"])
def test_delimiters_come_from_msh2_however_many_are_declared(encoding: str) -> None:
    raw = f"MSH|{encoding}|P|F|R|F|2026||ADT^A08|c1|P|2.5\rPID|1||777^^^&1.2.3.4&ISO||A^B\r"
    m = parse_adt(raw.encode(), allow_synthetic=True)
    assert systems(m) == [("urn:oid:1.2.3.4", "777")] and m.patient.name == "A^B"


def _pid(pid3: str, fields: str, cid: str) -> bytes:
    """An A08 whose PID-5, PID-7 and PID-8 are `fields` ("name||birth|sex") as sent."""
    msh = f"MSH|^~\\&|PAS|HF|PACS|HF|2026||ADT^A08|{cid}|P|2.5"
    return f"{msh}\rPID|1||{pid3}||{fields}\r".encode()


@pytest.mark.parametrize("pid3", [f"{FNR}^^^FNR", f"{FNR}^^^FNR~H7^^^HOSP"])
def test_an_update_keeps_omitted_fields_and_clears_those_sent_as_null(
    applier: AdtApplier, pid3: str
) -> None:
    """HL7 v2.5 2.5.3; the second PID-3 adds an identifier, so the update takes the ORM path."""
    fnr = Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR)
    assert msa(applier.handle(adt_message("A28", FNR, "Nordmann^Kari", "19610412", "F")))[1] == "AA"

    def shown() -> tuple[str, str, str]:
        with applier.sessions() as s:
            p = registry.find(s, fnr)
            assert p is not None
            return p.name, p.birth_date, p.sex

    assert msa(applier.handle(_pid(pid3, "Nordmann^Kari Anne||", "u1")))[1] == "AA"
    assert shown() == ("Nordmann^Kari Anne", "19610412", "F")
    assert msa(applier.handle(_pid(pid3, "||19610413|", "u2")))[1] == "AA"
    assert shown() == ("Nordmann^Kari Anne", "19610413", "F")
    assert msa(applier.handle(_pid(pid3, '||""|""', "u3")))[1] == "AA"
    assert shown() == ("Nordmann^Kari Anne", "", "")


def test_name_prefix_and_suffix_take_their_dicom_places() -> None:
    m = parse_adt(adt("A08", f"{FNR}^^^FNR", name="Hansen^Ola^Johan^JR^DR"), allow_synthetic=True)
    assert m.patient.name == "Hansen^Ola^Johan^DR^JR"  # PS3.5 6.2.1: ...^prefix^suffix


@pytest.mark.parametrize(
    ("raw", "condition"),
    [
        (adt("A99", f"{FNR}^^^FNR"), "201^Unsupported event code"),
        (b"MSH|^~\\&|PAS|HF|PACS|HF|2026||ORU^R01|c1|P|2.5\r", "200^Unsupported message type"),
        (b"MSH|^~\\&|PAS|HF|PACS|HF|2026||ADT^A08|c1|P|2.5\r", "100^Segment sequence error"),
        (adt("A08", ""), "101^Required field missing"),
        (adt("A40", f"{FNR}^^^FNR"), "100^Segment sequence error"),
        (adt_message("A08", FNR, "A^B", "1961-04-12"), "102^Data type error"),
        (adt_message("A08", FNR, "A^B", "", "X"), "103^Table value not found"),
    ],
    ids=["trigger", "type", "no PID", "no PID-3", "no MRG", "date", "sex"],
)
def test_err_3_names_the_table_0357_condition(raw: bytes, condition: str) -> None:
    with pytest.raises(Hl7Error) as err:
        parse_adt(raw, allow_synthetic=True)
    reply = hl7.parse(ack(err.value, err.value.code, err.value.reason).decode())
    assert str(reply.segment("ERR")[3]) == f"{condition}^HL70357"


def test_held_connections_are_kept_per_thread_up_to_the_limit(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    held = HeldConnections(engine, limit=1)
    probe = text("SELECT 1")

    def dbapi() -> object:
        with held.transaction() as conn:
            conn.execute(probe)
            return conn.connection.dbapi_connection

    try:
        first = dbapi()
        assert dbapi() is first  # the same connection for the thread's next message
        with pytest.raises(RuntimeError), held.transaction() as conn:
            conn.execute(probe)
            raise RuntimeError("a failed message")
        assert dbapi() is first  # rolled back, and still held
        others: list[object] = []
        t = threading.Thread(target=lambda: others.extend([dbapi(), dbapi()]))
        t.start()
        t.join()
        assert first not in others  # over the limit: the pool's, per message
        with pytest.raises(RuntimeError), held.transaction() as conn:
            conn.invalidate()  # as a statement does when the database restarts under it
            raise RuntimeError("server closed the connection")
        assert dbapi() is not first
        held.release()
        assert held._slots is not None and held._slots.acquire(blocking=False)
    finally:
        engine.dispose()


def test_a_message_on_a_dead_held_connection_is_applied_on_a_fresh_one(db_url: str) -> None:
    """As after a database restart: the PAS gets its AA, not a dropped connection."""
    engine = make_engine(db_url)
    migrate(engine)
    held = HeldConnections(engine, limit=1)
    applier = AdtApplier(session_factory(engine), allow_synthetic=True, app="PB", held=held)
    try:
        assert msa(applier.handle(adt_message("A28", FNR, "Nordmann^Kari")))[1] == "AA"
        with held.transaction() as conn:
            dead = conn.connection.dbapi_connection
        assert dead is not None
        dead.close()  # behind SQLAlchemy's back, as a server restart does
        assert msa(applier.handle(adt_message("A08", FNR, "Nordmann^Kari^Anne")))[1] == "AA"
        with applier.sessions() as s:
            found = registry.find(s, Identifier(NATIONAL_SYSTEMS[IdKind.FNR], FNR))
            assert found is not None and found.name == "Nordmann^Kari^Anne"
    finally:
        held.release()
        engine.dispose()
