"""HL7 v2 ADT parsing and ACKs: triggers, identifiers, character sets, malformed input."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from broker.pas.hl7v2 import Hl7Error, ack, parse_adt
from storage.nationalid import make
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
