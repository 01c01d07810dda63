"""DICOM matching (PS3.4 C.2.2.2) translated into SQL over the index.

One layer shared by C-FIND, C-MOVE/C-GET, QIDO-RS and the EPR API: keys that have an index
column are matched in SQL; other keys with a value are matched against the stored attributes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from io import BytesIO
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian
from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.dicomheader import decode_attrs, normalise_time
from storage.models import (
    VISIBLE,
    Instance,
    Patient,
    PatientIdentifier,
    Rejection,
    Series,
    Study,
)
from storage.registry import issuer_system


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class QueryError(ValueError):
    """The identifier cannot be answered; the message says why."""


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}

COLUMNS: dict[int, tuple[Level, InstrumentedAttribute[Any]]] = {
    0x00100010: (Level.PATIENT, Patient.name),
    0x00100020: (Level.PATIENT, Patient.patient_id),
    0x00100021: (Level.PATIENT, Patient.issuer),
    0x00100030: (Level.PATIENT, Patient.birth_date),
    0x00100040: (Level.PATIENT, Patient.sex),
    0x0020000D: (Level.STUDY, Study.study_uid),
    0x00080020: (Level.STUDY, Study.study_date),
    0x00080030: (Level.STUDY, Study.study_time),
    0x00080050: (Level.STUDY, Study.accession_number),
    0x00200010: (Level.STUDY, Study.study_id),
    0x00081030: (Level.STUDY, Study.description),
    0x00080090: (Level.STUDY, Study.referring_physician),
    0x0020000E: (Level.SERIES, Series.series_uid),
    0x00080060: (Level.SERIES, Series.modality),
    0x00200011: (Level.SERIES, Series.series_number),
    0x0008103E: (Level.SERIES, Series.description),
    0x00180015: (Level.SERIES, Series.body_part),
    0x00080018: (Level.IMAGE, Instance.sop_uid),
    0x00080016: (Level.IMAGE, Instance.sop_class_uid),
    0x00200013: (Level.IMAGE, Instance.instance_number),
}

MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
PATIENT_COUNTS = {0x00201200: "studies", 0x00201202: "series", 0x00201204: "instances"}
STUDY_COUNTS = {0x00201206: "series", 0x00201208: "instances"}
SERIES_COUNTS = {0x00201209: "instances"}
RETRIEVE_AE = 0x00080054
AVAILABILITY = 0x00080056
QR_LEVEL = 0x00080052
CHARSET = 0x00080005
COMPUTED = {
    MODALITIES_IN_STUDY,
    SOP_CLASSES_IN_STUDY,
    RETRIEVE_AE,
    AVAILABILITY,
    *PATIENT_COUNTS,
    *STUDY_COUNTS,
    *SERIES_COUNTS,
}

# Which level an attribute belongs to (PS3.4 C.6.1.1 / C.6.2.1 and the modules they draw on).
PATIENT_TAGS = {
    0x00100010,
    0x00100020,
    0x00100021,
    0x00100022,
    0x00100024,
    0x00100030,
    0x00100032,
    0x00100040,
    0x00101000,
    0x00101001,
    0x00101002,
    0x00102160,
    0x00104000,
    0x00102201,
    0x00102292,
    0x00102297,
    0x00102298,
    0x00102299,
    *PATIENT_COUNTS,
}
STUDY_TAGS = {
    0x0020000D,
    0x00080020,
    0x00080030,
    0x00080050,
    0x00080051,
    0x00200010,
    0x00081030,
    0x00080090,
    0x00080096,
    0x00081032,
    0x00081060,
    0x00081080,
    0x00101010,
    0x00101020,
    0x00101030,
    0x00102180,
    0x001021B0,
    0x00201070,
    0x00321060,
    0x00321064,
    0x00400275,
    MODALITIES_IN_STUDY,
    SOP_CLASSES_IN_STUDY,
    *STUDY_COUNTS,
}
SERIES_TAGS = {
    0x0020000E,
    0x00080060,
    0x00200011,
    0x0008103E,
    0x00180015,
    0x00080021,
    0x00080031,
    0x00200060,
    0x00400244,
    0x00400245,
    0x00400275,
    0x00080070,
    0x00081090,
    0x00081010,
    0x00080080,
    0x00081040,
    0x00181030,
    0x00081070,
    0x00081050,
    0x00200052,
    0x00400253,
    *SERIES_COUNTS,
}


def tag_level(tag: int) -> Level:
    if tag in PATIENT_TAGS:
        return Level.PATIENT
    if tag in STUDY_TAGS:
        return Level.STUDY
    if tag in SERIES_TAGS:
        return Level.SERIES
    return Level.IMAGE


@dataclass(frozen=True)
class Key:
    tag: int
    vr: str
    value: str
    element: DataElement


def keys_of(identifier: Dataset) -> list[Key]:
    """The identifier's keys, in tag order, with their match values as text."""
    out = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in (QR_LEVEL, CHARSET) or elem.tag.group == 0x0002 or elem.tag.is_private:
            continue
        vr = elem.VR
        if vr == "SQ" or elem.value is None:
            value = ""
        elif isinstance(elem.value, list | tuple) or elem.VM > 1:
            value = "\\".join(str(v) for v in elem.value)
        else:
            value = str(elem.value)
        out.append(Key(tag, vr, value.strip(), elem))
    return out


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _range_bounds(vr: str, value: str) -> tuple[str | None, str | None]:
    lo, _, hi = value.partition("-")
    lo, hi = lo.strip(), hi.strip()
    if vr == "TM":
        return (normalise_time(lo) if lo else None, _time_upper(hi) if hi else None)
    if vr == "DA":
        return (lo.replace(".", "") or None, hi.replace(".", "") or None)
    return lo or None, hi or None


def _time_upper(tm: str) -> str:
    main, _, frac = tm.replace(":", "").partition(".")
    main = main + "235959"[len(main) :] if len(main) < 2 else main + "5959"[len(main) - 2 :]
    return f"{main[:6]}.{(frac + '999999')[:6]}"


def sql_condition(col: Any, key: Key, pn_ci: bool) -> ColumnElement[bool] | None:
    v = key.value
    if v in ("", "*"):
        return None
    if key.vr == "UI":
        uids = [u.strip() for u in v.split("\\") if u.strip()]
        return col.in_(uids) if len(uids) > 1 else col == uids[0]
    if key.vr in ("DA", "TM") and "-" in v:
        lo, hi = _range_bounds(key.vr, v)
        # a range matches only non-empty values (PS3.4 C.2.2.2.5), yet '' sorts below any bound
        conds = [col.is_not(None), col != ""]
        if lo:
            conds.append(col >= lo)
        if hi:
            conds.append(col <= hi)
        return and_(*conds)
    if key.vr == "TM":
        return and_(col >= normalise_time(v), col <= _time_upper(v))
    if "\\" in v:
        parts = [p for p in v.split("\\") if p]
        return or_(*(_single(col, p, key.vr, pn_ci) for p in parts))
    return _single(col, v, key.vr, pn_ci)


def normalise_pn(name: str) -> str:
    """A person name without trailing empty components or groups: `OB^^^^` is `OB`."""
    return "=".join(group.rstrip("^") for group in name.split("=")).rstrip("=")


def _is_pattern(v: str) -> bool:
    return "*" in v or "?" in v


def _single(col: Any, v: str, vr: str, pn_ci: bool) -> ColumnElement[bool]:
    if vr == "PN" and not _is_pattern(v):
        v = normalise_pn(v)  # names are indexed normalised
    ci = vr == "PN" and pn_ci
    target, value = (func.lower(col), v.lower()) if ci else (col, v)
    if _is_pattern(v):
        return target.like(_like(value), escape="\\")
    return target == value


def _pn_forms(
    alternatives: list[str], values: list[str], pn_ci: bool
) -> tuple[list[str], list[str]]:
    """Person names compared as the index compares them: normalised, case folded if asked."""
    alts = [a if _is_pattern(a) else normalise_pn(a) for a in alternatives]
    vals = [normalise_pn(v) for v in values]
    if pn_ci:
        return [a.lower() for a in alts], [v.lower() for v in vals]
    return alts, vals


def _py_match(actual: str, key: Key, pn_ci: bool) -> bool:
    v = key.value
    if key.vr == "UI":
        return actual in [u.strip() for u in v.split("\\")]
    if key.vr in ("DA", "TM") and "-" in v:
        lo, hi = _range_bounds(key.vr, v)
        a = normalise_time(actual) if key.vr == "TM" else actual
        return bool(a) and (lo is None or a >= lo) and (hi is None or a <= hi)
    alternatives = v.split("\\")
    values = actual.split("\\") if actual else [""]
    if key.vr == "PN":
        alternatives, values = _pn_forms(alternatives, values, pn_ci)
    for alt in alternatives:
        rx = re.compile(
            "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in alt), re.S
        )
        if any(rx.fullmatch(val) for val in values):
            return True
    return False


@dataclass
class Hit:
    """One matched row at the query level with its parents."""

    patient: Patient
    study: Study | None = None
    series: Series | None = None
    instance: Instance | None = None
    # per level: the last tag read (None: all of them) and the attributes read
    _attrs: dict[Level, tuple[int | None, Dataset]] = field(default_factory=dict)

    def row(self, level: Level) -> Study | Series | Instance | None:
        """The matched row of a level below the patient."""
        return {Level.STUDY: self.study, Level.SERIES: self.series, Level.IMAGE: self.instance}.get(
            level
        )

    def attrs(self, level: Level, upto: int | None = None) -> Dataset | None:
        """The stored attributes of a level. With `upto`, only those up to that tag are sure
        to be there: an answer needs a few early tags, and reading the rest of a header was
        most of the cost of building it."""
        cached = self._attrs.get(level)
        if cached is not None and _covers(cached[0], upto):
            return cached[1]
        row = self.row(level)
        if row is None:
            return None
        ds = decode_attrs(row.attrs, row.attrs_ts) if upto is None else _attrs_upto(row, upto)
        self._attrs[level] = (upto, ds)
        return ds


def _covers(read: int | None, wanted: int | None) -> bool:
    return read is None or (wanted is not None and read >= wanted)


def _attrs_upto(row: Study | Series | Instance, upto: int) -> Dataset:
    """The stored attributes up to tag `upto`, read as decode_attrs reads all of them."""
    implicit, little = row.attrs_ts == ImplicitVRLittleEndian, row.attrs_ts != ExplicitVRBigEndian
    return read_dataset(
        BytesIO(row.attrs), implicit, little, stop_when=lambda tag, _vr, _len: tag > upto
    )


# Instances withdrawn by an IOCM rejection note are invisible to clinical reads, and so are
# series and studies left with none other.
NOT_REJECTED = ~exists().where(Rejection.sop_uid == Instance.sop_uid)
SERIES_VISIBLE = exists().where(Instance.series_fk == Series.id, NOT_REJECTED)
STUDY_VISIBLE = exists().where(Series.study_fk == Study.id, SERIES_VISIBLE)


def _base_select(level: Level) -> Select[*tuple[Any, ...]]:
    """Quarantined and merged-away patients are invisible to every clinical query."""
    sel: Select[*tuple[Any, ...]]
    if level is Level.PATIENT:
        sel = select(Patient)
    elif level is Level.STUDY:
        sel = select(Patient, Study).join(Study.patient).where(STUDY_VISIBLE)
    elif level is Level.SERIES:
        sel = (
            select(Patient, Study, Series)
            .join(Study.patient)
            .join(Study.series)
            .where(SERIES_VISIBLE)
        )
    else:
        sel = (
            select(Patient, Study, Series, Instance)
            .join(Study.patient)
            .join(Study.series)
            .join(Series.instances)
            .where(NOT_REJECTED)
        )
    return sel.where(Patient.status.in_(VISIBLE))


ISSUER = 0x00100021


def _issued_by(issuer: str) -> ColumnElement[bool]:
    """The shown Patient ID is `issuer`'s: the issuer shown with it, or the registry holds the
    ID in that issuer's system (the shown issuer is empty unless two systems share the value,
    so a query naming the issuer of an FNR must not depend on it)."""
    held = exists().where(
        PatientIdentifier.patient_fk == Patient.id,
        PatientIdentifier.value == Patient.patient_id,
        PatientIdentifier.system == issuer_system(issuer),
    )
    return or_(Patient.issuer == issuer, held)


class Matcher:
    """Finds index rows matching an identifier at one level."""

    def __init__(self, level: Level, keys: Sequence[Key], *, pn_case_insensitive: bool) -> None:
        self.level = level
        self.keys = list(keys)
        self.pn_ci = pn_case_insensitive
        depth = _DEPTH[level]
        self.sql: list[ColumnElement[bool]] = []
        self.post: list[tuple[Level, Key]] = []
        for key in self.keys:
            if key.value in ("", "*") or key.vr == "SQ":
                continue
            if key.tag == ISSUER and not _is_pattern(key.value):
                self.sql.append(_issued_by(key.value))
            elif key.tag in COLUMNS and _DEPTH[COLUMNS[key.tag][0]] <= depth:
                cond = sql_condition(COLUMNS[key.tag][1], key, self.pn_ci)
                if cond is not None:
                    self.sql.append(cond)
            elif key.tag == MODALITIES_IN_STUDY and depth >= 1:
                mods = [m for m in key.value.split("\\") if m]
                self.sql.append(
                    exists().where(
                        Series.study_fk == Study.id,
                        or_(*(_single(Series.modality, m, "CS", False) for m in mods)),
                        SERIES_VISIBLE,
                    )
                )
            elif key.tag not in COMPUTED and _DEPTH[tag_level(key.tag)] <= depth:
                self.post.append(
                    (max(tag_level(key.tag), Level.STUDY, key=_DEPTH.__getitem__), key)
                )

    def statement(self) -> Select[*tuple[Any, ...]]:
        stmt = _base_select(self.level)
        if self.sql:
            stmt = stmt.where(*self.sql)
        order = {
            Level.PATIENT: Patient.id,
            Level.STUDY: Study.id,
            Level.SERIES: Series.id,
            Level.IMAGE: Instance.id,
        }[self.level]
        return stmt.order_by(order)

    def _post_ok(self, hit: Hit) -> bool:
        for lvl, key in self.post:
            ds = hit.attrs(lvl)
            if ds is None:
                return False
            try:
                elem = ds.get(key.tag)
                actual = (
                    ""
                    if elem is None or elem.value is None
                    else ("\\".join(str(v) for v in elem.value) if elem.VM > 1 else str(elem.value))
                )
            except Exception:
                actual = ""
            if not _py_match(actual.strip(), key, self.pn_ci):
                return False
        return True

    def hits(self, session: Session, limit: int | None = None, offset: int = 0) -> Iterator[Hit]:
        stmt = self.statement()
        if not self.post:
            if limit is not None:
                stmt = stmt.limit(limit)
            if offset:
                stmt = stmt.offset(offset)
        skipped = produced = 0
        for row in session.execute(stmt):
            hit = Hit(*row)
            if self.post:
                if not self._post_ok(hit):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
            yield hit
            produced += 1
            if self.post and limit is not None and produced >= limit:
                return


def match(
    session: Session,
    level: Level,
    identifier: Dataset,
    *,
    pn_case_insensitive: bool,
    limit: int | None = None,
    offset: int = 0,
) -> list[Hit]:
    return list(
        Matcher(level, keys_of(identifier), pn_case_insensitive=pn_case_insensitive).hits(
            session, limit, offset
        )
    )


def _counts(session: Session, level: Level, ids: list[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = defaultdict(dict)
    if not ids:
        return out
    if level is Level.PATIENT:
        rows = session.execute(
            select(
                Study.patient_fk,
                func.count(func.distinct(Study.id)),
                func.count(func.distinct(Series.id)),
                func.count(Instance.id),
            )
            .join(Study.series)
            .join(Series.instances)
            .where(Study.patient_fk.in_(ids), NOT_REJECTED)
            .group_by(Study.patient_fk)
        )
        for pid, st, se, inst in rows:
            out[pid].update(studies=st, series=se, instances=inst)
    elif level is Level.STUDY:
        study_rows = session.execute(
            select(Series.study_fk, func.count(func.distinct(Series.id)), func.count(Instance.id))
            .join(Series.instances)
            .where(Series.study_fk.in_(ids), NOT_REJECTED)
            .group_by(Series.study_fk)
        )
        for sid, se, inst in study_rows:
            out[sid].update(series=se, instances=inst)
        for sid, mod in session.execute(
            select(Series.study_fk, Series.modality)
            .distinct()
            .where(Series.study_fk.in_(ids), SERIES_VISIBLE)
            .order_by(Series.modality)
        ):
            if mod:
                out[sid].setdefault("modalities", []).append(mod)
        for sid, cls in session.execute(
            select(Series.study_fk, Instance.sop_class_uid)
            .distinct()
            .join(Series.instances)
            .where(Series.study_fk.in_(ids), NOT_REJECTED)
            .order_by(Instance.sop_class_uid)
        ):
            out[sid].setdefault("sop_classes", []).append(cls)
    elif level is Level.SERIES:
        for sid, inst in session.execute(
            select(Instance.series_fk, func.count(Instance.id))
            .where(Instance.series_fk.in_(ids), NOT_REJECTED)
            .group_by(Instance.series_fk)
        ):
            out[sid]["instances"] = inst
    return out


def _row_id(hit: Hit, level: Level) -> int:
    row = {
        Level.PATIENT: hit.patient,
        Level.STUDY: hit.study,
        Level.SERIES: hit.series,
        Level.IMAGE: hit.instance,
    }[level]
    assert row is not None
    return row.id


def _patient_value(p: Patient, tag: int) -> str | None:
    return {
        0x00100010: p.name,
        0x00100020: p.patient_id,
        0x00100021: p.issuer,
        0x00100030: p.birth_date,
        0x00100040: p.sex,
    }.get(tag)


# Value representations whose values are text: an answer can carry them as encoded bytes.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
ESC = b"\x1b"

# (implicit VR, little endian): how answers will be encoded
Syntax = tuple[bool, bool]
# One answer value: text still to encode, bytes already encoded (ASCII, as stored) or an
# element that pydicom has to encode (binary values, sequences, ambiguous VRs).
Payload = str | bytes | DataElement


def responses(
    session: Session,
    level: Level,
    hits: list[Hit],
    identifier: Dataset,
    *,
    retrieve_ae: str,
    syntax: Syntax | None = None,
) -> Iterator[Dataset]:
    """Answer datasets with exactly the requested keys (plus level and character set).

    With `syntax`, the transfer syntax the answers will be sent in, they are marked as encoded
    in it already, so that pydicom copies their text values instead of decoding and encoding
    each one again."""
    keys = keys_of(identifier)
    wanted = {k.tag for k in keys}
    need_counts = bool(wanted & COMPUTED)
    counts = _counts(session, level, [_row_id(h, level) for h in hits]) if need_counts else {}
    requested_charset = _charset_text(identifier) if CHARSET in identifier else None
    upto = max(wanted, default=0)
    for hit in hits:
        row_counts = counts.get(_row_id(hit, level), {}) if need_counts else {}
        values = [
            (key.tag, *_answer(hit, level, key, row_counts, retrieve_ae, upto)) for key in keys
        ]
        yield _identifier(level, values, requested_charset, syntax)


def _charset_text(identifier: Dataset) -> str:
    value = identifier.SpecificCharacterSet or ""
    return value if isinstance(value, str) else "\\".join(value)


def _identifier(
    level: Level,
    values: list[tuple[int, str, Payload]],
    requested_charset: str | None,
    syntax: Syntax | None,
) -> Dataset:
    """Text values go in as raw elements already encoded: pydicom then copies their bytes
    instead of validating and encoding each value again (most of an answer's cost)."""
    non_ascii = any(_is_non_ascii(payload) for _, _, payload in values)
    encoding = "utf-8" if non_ascii else "ascii"
    ds = Dataset()
    ds[QR_LEVEL] = _raw(QR_LEVEL, "CS", level.value.encode())
    for tag, vr, payload in values:
        if isinstance(payload, DataElement):
            ds[tag] = payload
        else:
            data = payload.encode(encoding) if isinstance(payload, str) else payload
            ds[tag] = _raw(tag, vr, data)
    charset = "ISO_IR 192" if non_ascii else requested_charset
    if charset is not None:
        ds[CHARSET] = _raw(CHARSET, "CS", charset.encode("ascii", "replace"))
    # pydicom decodes every raw element again when a dataset's recorded encoding differs from
    # the output's, or to resolve an ambiguous VR. Our raw values are text: the same bytes in
    # any transfer syntax.
    if syntax is not None and all(len(vr) == 2 for _, vr, _ in values):
        encodings = convert_encodings(charset.split("\\")) if charset else default_encoding
        ds.set_original_encoding(*syntax, encodings)
    return ds


def _is_non_ascii(payload: Payload) -> bool:
    if isinstance(payload, str):
        return not payload.isascii()
    if isinstance(payload, DataElement):
        if payload.VR not in TEXT_VRS or payload.value is None:
            return False
        values = payload.value if payload.VM > 1 else [payload.value]  # multi-valued too
        return any(not str(v).isascii() for v in values)
    return False  # bytes are passed through only when they are ASCII


def _raw(tag: int, vr: str, data: bytes) -> RawDataElement:
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True)


def _empty(key: Key) -> tuple[str, Payload]:
    if len(key.vr) != 2:  # an ambiguous VR such as 'US or SS': pydicom resolves or refuses it
        return key.vr, DataElement(key.tag, key.vr, None)
    return key.vr, b""


def _answer(
    hit: Hit, level: Level, key: Key, counts: dict[str, Any], retrieve_ae: str, upto: int
) -> tuple[str, Payload]:
    """The VR and value of one requested key for one matched row."""
    tag = key.tag
    depth = _DEPTH[level]
    if tag == RETRIEVE_AE:
        return "AE", retrieve_ae
    if tag == AVAILABILITY:
        return "CS", "ONLINE"
    table = {
        Level.PATIENT: PATIENT_COUNTS,
        Level.STUDY: STUDY_COUNTS,
        Level.SERIES: SERIES_COUNTS,
    }.get(level, {})
    if tag in table:
        return "IS", str(counts.get(table[tag], 0))
    if tag == MODALITIES_IN_STUDY and depth >= 1:
        return "CS", "\\".join(counts.get("modalities") or [])
    if tag == SOP_CLASSES_IN_STUDY and depth >= 1:
        return "UI", "\\".join(counts.get("sop_classes") or [])
    if tag in COMPUTED:
        return _empty(key)
    value = _patient_value(hit.patient, tag)
    if value is not None:  # the index's patient, so registry (PAS) demographics win
        return (key.vr if key.vr != "UN" else dictionary_VR(tag)), value
    src = tag_level(tag)
    if _DEPTH[src] > depth:
        return _empty(key)
    indexed = _indexed_value(hit, tag)
    if indexed is not None:
        return key.vr if len(key.vr) == 2 else dictionary_VR(tag), indexed
    ds = hit.attrs(max(src, Level.STUDY, key=_DEPTH.__getitem__), upto)
    if ds is None or tag not in ds:
        return _empty(key)
    return _stored(ds, key)


def _shorter_than(limit: int) -> Callable[[str], bool]:
    return lambda value: len(value) < limit


def _is_date(value: str) -> bool:
    return len(value) == 8 and value.isdigit()


def _always(_value: str) -> bool:
    return True


# Of the COLUMNS, those that hold the stored value unchanged, with the test that the value was
# not cut short or altered on the way in (a long text, a malformed date); the others are
# normalised for matching. An answer takes these from the row and reads no stored header.
_VERBATIM: dict[int, Callable[[str], bool]] = {
    0x0020000D: _always,
    0x00080020: _is_date,
    0x00080050: _shorter_than(64),
    0x00081030: _shorter_than(64),
    0x0020000E: _always,
    0x00080018: _always,
}


def _indexed_value(hit: Hit, tag: int) -> str | None:
    whole = _VERBATIM.get(tag)
    if whole is None:
        return None
    level, column = COLUMNS[tag]
    row = hit.row(level)
    value = None if row is None else getattr(row, column.key)
    return value if isinstance(value, str) and whole(value) else None


def _stored(ds: Dataset, key: Key) -> tuple[str, Payload]:
    """A value from the stored attributes: ASCII text as stored, anything else decoded."""
    raw = ds.get_item(key.tag)
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        try:
            vr = raw.VR or dictionary_VR(key.tag)
        except KeyError:
            vr = ""
        # ISO 2022 escapes are ASCII bytes too, yet mean another character set
        if vr in TEXT_VRS and raw.value.isascii() and ESC not in raw.value:
            return vr, raw.value
    try:
        elem = ds[key.tag]
        return elem.VR, DataElement(key.tag, elem.VR, elem.value)
    except Exception:
        return _empty(key)
