import datetime as dt

import pytest

from storage.nationalid import IdKind, InvalidNationalId, authority_kind, check_digits, make, parse


def test_known_valid_fodselsnummer() -> None:
    nid = parse("01010750160", allow_synthetic=False)
    assert nid.kind is IdKind.FNR
    assert nid.birth_date == dt.date(2007, 1, 1)


@pytest.mark.parametrize(
    "value,why",
    [
        ("01010750161", "check digits"),
        ("3201075016", "11 digits"),
        ("32010750160", "no such birth date"),
        ("0101075016a", "11 digits"),
    ],
)
def test_invalid_ids_say_why(value: str, why: str) -> None:
    with pytest.raises(InvalidNationalId, match=why):
        parse(value, allow_synthetic=True)


def test_d_number_and_synthetic() -> None:
    fnr = make(dt.date(1980, 5, 17), 123)
    assert fnr is not None
    dnr = str(int(fnr[0]) + 4) + fnr[1:9]
    digits = check_digits(dnr)
    if digits:
        assert parse(dnr + digits, allow_synthetic=False).kind is IdKind.DNR
    syn = make(dt.date(1980, 5, 17), 123, synthetic=True) or make(
        dt.date(1980, 5, 17), 124, synthetic=True
    )
    assert syn is not None
    assert parse(syn, allow_synthetic=True).synthetic
    with pytest.raises(InvalidNationalId, match="synthetic"):
        parse(syn, allow_synthetic=False)


def test_century_rules() -> None:
    assert (
        parse(make(dt.date(1999, 12, 31), 100) or "", allow_synthetic=False).birth_date.year == 1999
    )
    assert (
        parse(
            make(dt.date(2010, 2, 1), 600) or make(dt.date(2010, 2, 1), 601) or "",
            allow_synthetic=False,
        ).birth_date.year
        == 2010
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("FNR", IdKind.FNR),
        ("nor", IdKind.FNR),
        ("NNNOR", IdKind.FNR),
        ("DNR", IdKind.DNR),
        ("D-nummer", IdKind.DNR),
        ("HNR", IdKind.HNR),
        ("HOSP", None),
        ("", None),
    ],
)
def test_authority_names_of_the_national_registers(name: str, kind: IdKind | None) -> None:
    assert authority_kind(name) is kind
