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


W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def control(digits: str, weights: tuple[int, ...]) -> int:
    """One mod-11 check digit as the register computes it; 10 means no valid ID exists."""
    k = 11 - sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    return 0 if k == 11 else k


def with_checks(first9: str) -> str | None:
    """`first9` with both check digits, None when either would be 10."""
    k1 = control(first9, W1)
    k2 = control(first9 + str(k1), W2) if k1 != 10 else 10
    return None if 10 in (k1, k2) else f"{first9}{k1}{k2}"


def valid_id(day: int, month: int, yy: int, individual: int | None = None) -> str:
    """A valid ID for these date digits; the first individual number from `individual` whose
    check digits exist (a birth date has about ten times as many as it needs)."""
    start = 0 if individual is None else individual
    for ind in range(start, start + 40):
        found = with_checks(f"{day:02d}{month:02d}{yy:02d}{ind:03d}")
        if found:
            return found
    raise AssertionError("no individual number with valid check digits")


def in_june(yy: int, individual: int) -> str:
    """A June ID of exactly this year and individual number (the day varies to fit)."""
    return next(v for d in range(1, 29) if (v := with_checks(f"{d:02d}06{yy:02d}{individual:03d}")))


@pytest.mark.parametrize(
    ("yy", "individual", "year"),
    [
        (0, 0, 1900),
        (99, 499, 1999),
        (54, 500, 1854),
        (99, 700, 1899),
        (0, 500, 2000),
        (39, 960, 2039),
        (40, 900, 1940),
        (99, 960, 1999),
    ],
)
def test_fodselsnummer_centuries(yy: int, individual: int, year: int) -> None:
    value = in_june(yy, individual)
    nid = parse(value, allow_synthetic=False)
    assert (nid.kind, nid.birth_date.year, nid.synthetic) == (IdKind.FNR, year, False)


@pytest.mark.parametrize(
    ("yy", "individual"),
    [(53, 500), (40, 700), (45, 750), (99, 850), (40, 899)],
)
def test_individual_numbers_outside_every_range(yy: int, individual: int) -> None:
    value = in_june(yy, individual)
    with pytest.raises(InvalidNationalId, match="individual number"):
        parse(value, allow_synthetic=True)


@pytest.mark.parametrize(
    ("day", "month", "kind", "synthetic", "born"),
    [
        (41, 1, IdKind.DNR, False, dt.date(1980, 1, 1)),  # D-nummer: day + 40
        (71, 12, IdKind.DNR, False, dt.date(1980, 12, 31)),
        (15, 41, IdKind.HNR, False, dt.date(1980, 1, 15)),  # H-nummer: month + 40
        (29, 52, IdKind.HNR, False, dt.date(1980, 12, 29)),
        (15, 81, IdKind.FNR, True, dt.date(1980, 1, 15)),  # synthetic: month + 80
        (29, 82, IdKind.FNR, True, dt.date(1980, 2, 29)),
        (55, 92, IdKind.DNR, True, dt.date(1980, 12, 15)),  # synthetic D-nummer
    ],
)
def test_kinds(day: int, month: int, kind: IdKind, synthetic: bool, born: dt.date) -> None:
    value = valid_id(day, month, 80, 100)
    nid = parse(value, allow_synthetic=True)
    assert (nid.kind, nid.synthetic, nid.birth_date) == (kind, synthetic, born)
    if synthetic:
        with pytest.raises(InvalidNationalId, match="synthetic"):
            parse(value, allow_synthetic=False)
    else:
        assert parse(value, allow_synthetic=False) == nid


@pytest.mark.parametrize(
    ("day", "month", "yy"),
    [
        (30, 2, 80),  # 30 February
        (29, 2, 81),  # not a leap year
        (29, 2, 0),  # 1900 was not a leap year (individual number < 500)
        (0, 1, 80),  # day 00
        (40, 1, 80),  # neither a day nor a D-nummer day
        (72, 1, 80),  # D-nummer of day 32
        (15, 0, 80),  # month 00
        (15, 13, 80),  # month 13
        (15, 53, 80),  # H-nummer of month 13
        (15, 93, 80),  # synthetic month 13
        (70, 82, 80),  # synthetic D-nummer of 30 February
    ],
)
def test_no_such_birth_date(day: int, month: int, yy: int) -> None:
    with pytest.raises(InvalidNationalId, match="no such birth date"):
        parse(valid_id(day, month, yy, 100), allow_synthetic=True)


def test_d_nummer_cannot_be_an_h_nummer_too() -> None:
    with pytest.raises(InvalidNationalId, match="H-nummer"):
        parse(valid_id(55, 45, 80, 100), allow_synthetic=True)


@pytest.mark.parametrize("position", [9, 10])
@pytest.mark.parametrize("base", [valid_id(15, 6, 80, 100), valid_id(55, 86, 5, 600)])
def test_each_wrong_check_digit_is_refused(base: str, position: int) -> None:
    for digit in "0123456789":
        wrong = base[:position] + digit + base[position + 1 :]
        if wrong == base:
            continue
        with pytest.raises(InvalidNationalId, match="check digits"):
            parse(wrong, allow_synthetic=True)


def first_nine_with_control_10(weights_first: bool) -> str:
    """Nine digits of a valid date whose first (or else second) check digit would be 10."""
    for ind in range(100, 500):
        first9 = f"150680{ind:03d}"
        k1 = control(first9, W1)
        if weights_first and k1 == 10:
            return first9
        if not weights_first and k1 != 10 and control(first9 + str(k1), W2) == 10:
            return first9
    raise AssertionError("not found")


@pytest.mark.parametrize("first", [True, False])
def test_a_check_digit_of_10_means_no_valid_id(first: bool) -> None:
    first9 = first_nine_with_control_10(first)
    assert check_digits(first9) is None
    for k in range(100):
        with pytest.raises(InvalidNationalId, match="check digits"):
            parse(f"{first9}{k:02d}", allow_synthetic=True)


def test_check_digits_agree_with_the_register_weights() -> None:
    for ind in range(0, 1000, 7):
        first9 = f"010107{ind:03d}"
        expected = with_checks(first9)
        assert check_digits(first9) == (expected[9:] if expected else None)


@pytest.mark.parametrize(
    "value",
    [
        "0101075016a",
        "01010 50160",
        "-1010750160",
        "0101075016²",  # a superscript two: str.isdigit says digit, int() refuses
        "٠١٠١٠٧٥٠١٦٠",  # Arabic-Indic digits: str.isdigit and int() accept them
        "",
        "0101075016",
        "010107501600",
    ],
)
def test_non_digits_and_wrong_length(value: str) -> None:
    with pytest.raises(InvalidNationalId, match="11 digits"):
        parse(value, allow_synthetic=True)


def test_make_builds_what_parse_accepts() -> None:
    for born in (dt.date(1854, 1, 1), dt.date(1940, 6, 15), dt.date(2039, 12, 31)):
        individual = {1854: 500, 1940: 900, 2039: 500}[born.year]
        value = next(v for i in range(40) if (v := make(born, individual + i)))
        assert parse(value, allow_synthetic=False).birth_date == born
