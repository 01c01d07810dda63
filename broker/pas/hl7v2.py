"""HL7 v2 messages (parsed with python-hl7): MSH, PID into registry demographics, ADT, ACKs."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

import hl7

from storage import nationalid, registry
from storage.demographics import Demographics, Identifier

SUPPORTED = {"A01", "A04", "A05", "A08", "A28", "A31", "A34", "A40", "A47"}
NEEDS_MRG = {"A34", "A40", "A47"}
# what parse_adt reads besides MSH
_ADT_SEGMENTS = frozenset({"PID", "MRG"})
_CHARSETS = {
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "ISO-8859-1": "latin-1",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "ASCII": "ascii",
}
_SEX = {"M": "M", "F": "F", "O": "O", "U": "", "A": "O", "N": "", "": ""}
# HL7 v2.5 2.5.3: a field sent as "" clears the value; an empty field leaves it unchanged
NULL = '""'
# HL7 v2.5 table 0357 (message error condition codes), for ERR-3
TABLE_0357 = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "207": "Application internal error",
}
_DEFAULT_ERR = {"AR": "200", "AE": "207"}


@dataclass
class Header:
    """The MSH fields an ACK needs; filled as far as a broken message allows."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    control_id: str = ""
    message_type: str = ""
    trigger: str = ""
    version: str = "2.5"
    processing_id: str = "P"
    charset_field: str = ""
    codec: str = "utf-8"


class Hl7Error(Exception):
    """A message we refuse: `code` is the MSA-1 answer (AE or AR), `reason` says why, `err`
    the table 0357 condition for ERR-3."""

    def __init__(
        self, code: str, reason: str, header: Header | None = None, *, err: str = ""
    ) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason
        self.err = err or _DEFAULT_ERR.get(code, "207")  # ERR-3, from TABLE_0357
        self.header = header or Header()


class Parsed(Protocol):
    """What the message log and the ACK need of any parsed message."""

    @property
    def trigger(self) -> str: ...
    @property
    def control_id(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def header(self) -> Header: ...


@dataclass(frozen=True)
class AdtMessage:
    trigger: str
    control_id: str
    sender: str
    patient: Demographics
    prior: tuple[Identifier, ...] = ()
    header: Header = field(default_factory=Header)


def _msh_fields(raw: bytes) -> list[bytes]:
    """The MSH fields as bytes (MSH-1 not counted, so MSH-n is at index n - 1); [] if no MSH."""
    first = raw.lstrip(b"\r\n\x00 ").split(b"\r", 1)[0].split(b"\n", 1)[0]
    if len(first) < 4 or not first.startswith(b"MSH"):
        return []
    return first.split(first[3:4])


def message_type(raw: bytes) -> str:
    """MSH-9.1 (ADT, ORM, ...) read from the raw bytes, for routing before a full parse; only
    that field is decoded (building the whole Header here cost a tenth of an A08)."""
    fields = _msh_fields(raw)
    if len(fields) < 9:
        return ""
    comp = fields[1][:1].decode("latin-1") or "^"
    return _component(fields[8].decode("latin-1", "replace").strip(), comp, 1).upper()


def _component(field: str, comp: str, c: int) -> str:
    """Component `c` (1-based) of a field, stripped; '' when absent."""
    parts = field.split(comp)
    return parts[c - 1].strip() if len(parts) >= c else ""


def _codec(raw: bytes) -> tuple[str, str]:
    """(MSH-18 as sent, Python codec); MSH is ASCII, so it is read before decoding."""
    fields = _msh_fields(raw)
    if not fields:
        return "", ""
    value = fields[17].decode("ascii", "replace").strip() if len(fields) > 17 else ""
    rep = fields[1][1:2] if len(fields) > 1 and len(fields[1]) > 1 else b"~"
    value = value.split(rep.decode("ascii", "replace"))[0]
    if value and value.upper() not in _CHARSETS:
        raise Hl7Error("AR", f"MSH-18: character set {value!r} is not supported")
    return value, _CHARSETS.get(value.upper(), "")


def _decode(raw: bytes, codec: str) -> tuple[str, str]:
    if codec:
        try:
            return raw.decode(codec), codec
        except UnicodeDecodeError as e:
            raise Hl7Error("AE", f"message is not valid {codec} as MSH-18 declares: {e}") from None
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def segment(msg: hl7.Message, name: str, num: int = 1) -> hl7.Segment | None:
    """The `num`-th segment called `name`, None when there is none; found once, as python-hl7
    scans every segment each time a field is read through the message."""
    try:
        found = msg.segments(name)
    except KeyError:
        return None
    return found[num - 1] if 0 < num <= len(found) else None


def get_field(seg: hl7.Segment | None, fld: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """One value of a (non-MSH) segment, '' when absent."""
    if seg is None:
        return ""
    try:
        return str(seg.extract_field(1, fld, rep, comp, sub) or "").strip()
    except (KeyError, IndexError, AttributeError, TypeError, hl7.exceptions.HL7Exception):
        return ""


def identifiers(
    seg: hl7.Segment | None, fld: int, where: str, allow_synthetic: bool
) -> tuple[Identifier, ...]:
    """The CX repetitions of a field; national IDs (by OID, authority name or type code, or
    11 digits with no authority) are validated, as at ingest."""
    try:
        reps = len(seg[fld]) if seg is not None else 0
    except IndexError:
        return ()
    out = []
    for r in range(1, reps + 1):
        value = get_field(seg, fld, r, 1)
        if not value:
            continue
        iso = get_field(seg, fld, r, 4, 3).upper() == "ISO"
        system = registry.issuer_system(
            get_field(seg, fld, r, 4, 1), get_field(seg, fld, r, 4, 2) if iso else ""
        )
        national_type = nationalid.authority_kind(get_field(seg, fld, r, 5)) is not None
        try:
            ident = registry.identifier(
                value, system, national_type=national_type, allow_synthetic=allow_synthetic
            )
        except nationalid.InvalidNationalId as e:
            raise Hl7Error(
                "AE", f"{where}: {value} is not a valid national ID: {e}", err="102"
            ) from None
        out.append(ident)
    return tuple(out)


def parse_date(value: str, where: str) -> str:
    if not value:
        return ""
    day = value[:8]
    try:
        dt.datetime.strptime(day, "%Y%m%d")
    except ValueError:
        raise Hl7Error("AE", f"{where}: {value!r} is not a date (YYYYMMDD)", err="102") from None
    return day


def _raw_header(raw: bytes, charset_field: str = "", codec: str = "") -> Header:
    """The MSH fields an ACK echoes, read from the bytes (latin-1 until the codec is known) so
    that even a message we cannot decode or parse is answered with its sender and control ID.
    Values stay HL7-escaped as sent, which is how the ACK has to echo them."""
    fields = [f.decode(codec or "latin-1", "replace").strip() for f in _msh_fields(raw)]
    comp = fields[1][:1] if len(fields) > 1 and fields[1] else "^"

    def msh(n: int, c: int = 1) -> str:
        return _component(fields[n - 1], comp, c) if len(fields) >= n else ""

    return Header(
        sending_app=msh(3),
        sending_facility=msh(4),
        receiving_app=msh(5),
        receiving_facility=msh(6),
        control_id=msh(10),
        message_type=msh(9, 1),
        trigger=msh(9, 2),
        version=msh(12) or "2.5",
        processing_id=msh(11) or "P",
        charset_field=charset_field,
        codec=codec or "utf-8",
    )


def _hex_escapes(text: str, codec: str) -> str:
    """Decode `\\Xhh..\\` as bytes in the message's character set (python-hl7 makes each byte
    a code point, wrong for UTF-8) and drop the `\\H\\`/`\\N\\` highlighting (it would
    become `_`); a delimiter that a hex sequence yields is escaped again."""
    sep = text[3]
    enc = text[4:].split(sep, 1)[0]
    if len(enc) < 3:
        return text
    esc = enc[2]
    if esc not in text[4 + len(enc) :]:
        return text  # the usual message: no escape sequence at all
    again = {esc: "E", sep: "F", enc[0]: "S", enc[1]: "R", "\r": ".br", "\n": ".br"}
    if len(enc) > 3:
        again[enc[3]] = "T"

    def decoded(m: re.Match[str]) -> str:
        seq = m.group(1)
        if seq in ("H", "N"):
            return ""
        if not seq.startswith("X"):
            return m.group(0)
        try:
            chars = bytes.fromhex(seq[1:]).decode(codec, "replace")
        except ValueError:
            return ""  # malformed: dropped, as HL7 does with sequences it cannot read
        return "".join(f"{esc}{again[c]}{esc}" if c in again else c for c in chars)

    inside = re.escape(esc + sep) + "\r"
    return re.sub(f"{re.escape(esc)}([^{inside}]*){re.escape(esc)}", decoded, text)


def _only(text: str, segments: Collection[str]) -> str:
    """MSH-1/MSH-2 (python-hl7 takes its delimiters from them) and the segments named. The
    rest of MSH is read from the bytes (`_raw_header`); python-hl7 builds a container for every
    field of every segment, and would spend more on MSH, PV1, NK1, ... than on what we read."""
    sep = text[3]
    msh, *rest = text.split("\r")
    kept = [seg for seg in rest if seg.split(sep, 1)[0] in segments]
    # MSH-2 ends with a field separator, or python-hl7 reads delimiters from the next segment
    return "\r".join([msh[:4] + msh[4:].split(sep, 1)[0] + sep, *kept])


def read(
    raw: bytes,
    types: Collection[str],
    triggers: Collection[str],
    segments: Collection[str] | None = None,
) -> tuple[hl7.Message, Header]:
    """Decode and parse one message (no MLLP framing) of an accepted MSH-9; else an Hl7Error.
    With `segments`, only those are parsed, and of MSH only its delimiters (the Header has
    the MSH fields)."""
    try:
        charset_field, codec = _codec(raw)
        text, codec = _decode(raw, codec)
    except Hl7Error as e:
        e.header = _raw_header(raw)
        raise
    h = _raw_header(raw, charset_field, codec)
    if "\n" in text:  # segments ended by LF or CR LF, as files and some senders do
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    text = text.strip("\r\x00 ")
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error(
            "AR", "not an HL7 v2 message: it must start with an MSH segment", h, err="100"
        )
    if segments is not None:
        text = _only(text, segments)
    try:
        msg = hl7.parse(_hex_escapes(text, codec))
    except Exception as e:
        raise Hl7Error("AR", f"unparsable HL7: {e}", h, err="100") from None
    mtype = h.message_type
    if mtype not in types:
        raise Hl7Error("AR", f"MSH-9: message type {mtype or '(none)'} is not accepted here", h)
    if h.trigger not in triggers:
        raise Hl7Error(
            "AR", f"MSH-9: trigger event {h.trigger or '(none)'} is not supported", h, err="201"
        )
    if not h.control_id:
        raise Hl7Error("AR", "MSH-10: message control ID is missing", h, err="101")
    return msg, h


def parse_adt(raw: bytes, *, allow_synthetic: bool) -> AdtMessage:
    """Parse one ADT message (no MLLP framing); every problem is an Hl7Error."""
    msg, h = read(raw, {"ADT"}, SUPPORTED, _ADT_SEGMENTS)
    try:
        return _content(msg, h, allow_synthetic)
    except Hl7Error as e:
        e.header = h
        raise


def patient_of(msg: hl7.Message, allow_synthetic: bool) -> Demographics:
    """The PID segment as registry demographics; identifiers are validated as for ADT."""
    pid = segment(msg, "PID")
    if pid is None:
        raise Hl7Error("AE", "PID segment is missing", err="100")
    idents = identifiers(pid, 3, "PID-3", allow_synthetic)
    if not idents:
        raise Hl7Error("AE", "PID-3: no patient identifier", err="101")
    kept: set[str] = set()
    # XPN is family^given^middle^suffix^prefix, DICOM PN family^given^middle^prefix^suffix
    name = _sent([get_field(pid, 5, 1, c) for c in (1, 2, 3, 5, 4)], "name", kept)
    (birth,) = _sent([get_field(pid, 7)], "birth_date", kept)
    (sex,) = _sent([get_field(pid, 8).upper()], "sex", kept)
    if sex not in _SEX:
        raise Hl7Error(
            "AE", f"PID-8: administrative sex {sex!r} is not in HL7 table 0001", err="103"
        )
    return Demographics(
        identifiers=idents,
        name=registry.person_name(name),
        birth_date=parse_date(birth, "PID-7"),
        sex=_SEX[sex],
        kept=frozenset(kept),
    )


def _sent(components: list[str], name: str, kept: set[str]) -> list[str]:
    """A field's components, all '' for HL7's null `""` (clear the value); all '' too, with
    `name` added to `kept`, when the field is empty (leave the value as it is)."""
    if components[0] == NULL and not any(components[1:]):
        return [""] * len(components)
    if not any(components):
        kept.add(name)
    return components


def _content(msg: hl7.Message, h: Header, allow_synthetic: bool) -> AdtMessage:
    patient = patient_of(msg, allow_synthetic)
    prior: tuple[Identifier, ...] = ()
    if h.trigger in NEEDS_MRG:
        mrg = segment(msg, "MRG")
        if mrg is None:
            raise Hl7Error("AE", f"ADT^{h.trigger} needs an MRG segment", err="100")
        prior = identifiers(mrg, 1, "MRG-1", allow_synthetic)
        if not prior:
            raise Hl7Error("AE", "MRG-1: no prior patient identifier", err="101")
    return AdtMessage(
        trigger=h.trigger,
        control_id=h.control_id,
        sender=f"{h.sending_app}|{h.sending_facility}",
        patient=patient,
        prior=prior,
        header=h,
    )


def _esc(text: str) -> str:
    """HL7 escaping of delimiters inside free text."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
        .replace("\r", " ")
    )


def ack(source: Parsed | Hl7Error, code: str, text: str = "", *, app: str = "PACSBROKER") -> bytes:
    """An ACK for a message or a refusal, in the request's character set."""
    h = source.header
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    msh = [
        "MSH",
        "^~\\&",
        app,
        h.receiving_facility,
        h.sending_app,
        h.sending_facility,
        now,
        "",
        f"ACK^{h.trigger}^ACK" if h.trigger else "ACK",
        uuid.uuid4().hex[:20],
        h.processing_id,
        h.version,
    ]
    if h.charset_field:
        msh += ["", "", "", "", "", h.charset_field]
    segments = ["|".join(msh), "|".join(["MSA", code, h.control_id, _esc(text)[:80]])]
    if code != "AA":
        err = source.err if isinstance(source, Hl7Error) else _DEFAULT_ERR.get(code, "207")
        condition = f"{err}^{TABLE_0357[err]}^HL70357"
        segments.append("|".join(["ERR", "", "", condition, "E", "", "", "", _esc(text)]))
    return "\r".join(segments).encode(h.codec or "utf-8", "replace") + b"\r"
