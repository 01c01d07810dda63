"""Norwegian national identifiers: fødselsnummer, D-nummer, H-nummer and synthetic test IDs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


class IdKind(StrEnum):
    FNR = "fnr"
    DNR = "dnr"
    HNR = "hnr"


ISSUER_OID = {
    IdKind.FNR: "2.16.578.1.12.4.1.4.1",
    IdKind.DNR: "2.16.578.1.12.4.1.4.2",
    IdKind.HNR: "2.16.578.1.12.4.1.4.3",
}

# Names that Norwegian senders use for the national registers instead of the OIDs: as an
# assigning authority (HL7 CX-4.1, DICOM Issuer of Patient ID) or an identifier type (CX-5).
AUTHORITY_NAMES = {
    "FNR": IdKind.FNR,
    "NOR": IdKind.FNR,
    "NNNOR": IdKind.FNR,
    "DNR": IdKind.DNR,
    "DNUMMER": IdKind.DNR,
    "HNR": IdKind.HNR,
}


class InvalidNationalId(ValueError):
    """The identifier is not a valid Norwegian national ID; the message says why."""


@dataclass(frozen=True)
class NationalId:
    value: str
    kind: IdKind
    birth_date: dt.date
    synthetic: bool

    @property
    def issuer_oid(self) -> str:
        return ISSUER_OID[self.kind]


def authority_kind(name: str) -> IdKind | None:
    """The national register an authority name or type code stands for, if it is one."""
    return AUTHORITY_NAMES.get(name.strip().upper().replace("-", ""))


def looks_national(value: str) -> bool:
    """Whether `value` has the form of a national ID; in Norway 11 digits are one."""
    v = value.strip()
    # str.isdigit alone accepts other scripts' digits and superscripts, which int() misreads
    return len(v) == 11 and v.isascii() and v.isdigit()


def check_digits(first9: str) -> str | None:
    """The two mod-11 check digits for nine digits, or None when no valid pair exists."""
    digits = [int(c) for c in first9]
    k1 = 11 - sum(d * w for d, w in zip(digits, _W1, strict=True)) % 11
    k1 = 0 if k1 == 11 else k1
    if k1 == 10:
        return None
    k2 = 11 - sum(d * w for d, w in zip([*digits, k1], _W2, strict=True)) % 11
    k2 = 0 if k2 == 11 else k2
    if k2 == 10:
        return None
    return f"{k1}{k2}"


def _century(individual: int, yy: int) -> int | None:
    if individual <= 499:
        return 1900
    if individual <= 749 and yy >= 54:
        return 1800
    if individual >= 500 and yy <= 39:
        return 2000
    if individual >= 900 and yy >= 40:
        return 1900
    return None


def parse(value: str, *, allow_synthetic: bool) -> NationalId:
    """Validate an 11-digit national ID and return its kind and birth date."""
    v = value.strip()
    if not looks_national(v):
        raise InvalidNationalId(f"{value!r}: a national ID has exactly 11 digits")
    day, month, yy, individual = int(v[0:2]), int(v[2:4]), int(v[4:6]), int(v[6:9])
    kind = IdKind.FNR
    if day > 40:
        kind, day = IdKind.DNR, day - 40
    synthetic = False
    if month > 80:
        synthetic, month = True, month - 80
    elif month > 40:
        if kind is IdKind.DNR:
            raise InvalidNationalId(f"{v}: a D-nummer (day + 40) cannot be an H-nummer too")
        kind, month = IdKind.HNR, month - 40
    if synthetic and not allow_synthetic:
        raise InvalidNationalId(f"{v}: synthetic test ID (month + 80) is not accepted here")
    century = _century(individual, yy)
    if century is None:
        raise InvalidNationalId(
            f"{v}: individual number {individual:03d} does not fit year {yy:02d}"
        )
    try:
        birth = dt.date(century + yy, month, day)
    except ValueError:
        raise InvalidNationalId(f"{v}: no such birth date") from None
    if check_digits(v[:9]) != v[9:]:
        raise InvalidNationalId(f"{v}: check digits do not match")
    return NationalId(v, kind, birth, synthetic)


def make(birth: dt.date, individual: int, *, synthetic: bool = False) -> str | None:
    """Build a valid ID for a birth date and individual number (None if no check digits fit)."""
    month = birth.month + (80 if synthetic else 0)
    first9 = f"{birth.day:02d}{month:02d}{birth.year % 100:02d}{individual:03d}"
    cd = check_digits(first9)
    return first9 + cd if cd else None
