"""Waveform CSV as devices export it (docs/dicomize.md): optional `key: value` lines, a header of
`name [unit]` or `name (unit)` cells, perhaps a time column, then one line per sample. Parsing
only; waveform.py makes the DICOM object."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import numpy as np

from broker.dicomize.common import DicomizeError

# UCUM code → meaning; the units a device's export may declare (CID 3082 style)
UNITS = {
    "mV": "millivolt",
    "uV": "microvolt",
    "V": "volt",
    "mm[Hg]": "mmHg",
    "kPa": "kilopascal",
    "cm[H2O]": "centimeter of water",
    "mbar": "millibar",
    "L/s": "liter per second",
    "L/min": "liter per minute",
    "mL/s": "milliliter per second",
    "L": "liter",
    "mL": "milliliter",
    "%": "percent",
    "Cel": "degree Celsius",
    "/min": "per minute",
}
# other spellings (matched case-insensitively, like the UCUM codes themselves)
ALIASES = {
    "µV": "uV",
    "μV": "uV",
    "mmHg": "mm[Hg]",
    "mm Hg": "mm[Hg]",
    "cmH2O": "cm[H2O]",
    "cm H2O": "cm[H2O]",
    "L/sec": "L/s",
    "lpm": "L/min",
    "°C": "Cel",
    "degC": "Cel",
    "1/min": "/min",
    "min-1": "/min",
    "bpm": "/min",  # beats or breaths: UCUM's annotation {beats} is optional, the unit is /min
}
UNIT_LOOKUP = {k.lower(): v for k, v in [*((u, u) for u in UNITS), *ALIASES.items()]}
TIME_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "millisecond": 1e-3,
    "milliseconds": 1e-3,
    "min": 60.0,
}
TIME_NAME = re.compile(r"^(?:time|t|zeit|tid|elapsed(?:_time)?|timestamp)(?:_(?P<unit>[a-z]+))?$")
# the spellings of `key: value` keys (lower case, '_' for the rest) that mean our keys
SPELLINGS = {
    "kind": "kind signal_kind signal_type waveform_kind waveform_type",
    "sampling_rate": "sampling_rate sample_rate samplerate sampling_frequency sample_frequency "
    "sampling_freq rate fs frequency",
    "interval": "sampling_interval sample_interval interval dt",
    "recorded": "recorded recorded_at recording_time recording_start start_time acquired "
    "acquisition_time acquisition_datetime datetime date_time",
    "date": "date",
    "time": "time",
    "manufacturer": "manufacturer vendor",
    "model": "model model_name device_model manufacturer_model_name",
    "serial_number": "serial_number serial serial_no sn device_serial_number",
    "software_version": "software_version software_versions software sw_version firmware "
    "firmware_version",
}
KEYS = {spelling: key for key, spellings in SPELLINGS.items() for spelling in spellings.split()}
KIND_WORDS = {
    "ecg": {"ecg", "ekg", "electrocardiogram"},
    "respiratory": {"respiratory", "respiration", "resp", "spirometry", "spirogram", "pulmonary"},
    "hemodynamic": {"hemodynamic", "haemodynamic", "hd", "pressure", "pressures"},
}
HEADER_CELL = re.compile(r"^(?P<name>.*?)\s*(?:\[(?P<b>[^\]]*(?:\][^\]]*)?)\]|\((?P<p>[^()]*)\))$")
# `key: value` or `key = value`; a key holds no cell delimiter or bracket, so no header is one
META_LINE = re.compile(r"^(?P<key>[A-Za-z][^:=,;\t\[\]]*?)\s*[:=]\s*(?P<value>.*)$")
QUANTITY = re.compile(r"^(?P<number>[+-]?\d+(?:[.,]\d+)?(?:e[+-]?\d+)?)\s*(?P<unit>.*)$", re.I)
RATE_UNITS = {"": 1.0, "hz": 1.0, "/s": 1.0, "1/s": 1.0, "sps": 1.0, "samples/s": 1.0, "khz": 1e3}
LOCAL_FORMATS = ("%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%Y%m%d%H%M%S")
MAX_DECIMALS = 6
STEP_TOLERANCE = 0.02  # of a step: above the jitter of a device's clock, far below a lost sample
RATE_TOLERANCE = 0.001  # a declared rate and the time column's may differ this much (clock drift)


@dataclass(frozen=True)
class Channel:
    name: str
    unit: str  # UCUM
    values: list[float]
    decimals: int  # the most digits after the point in any value: the device's resolution


@dataclass(frozen=True)
class Signal:
    kind: str  # "" when the file does not say; waveform.py infers it from the channels
    rate: float  # samples per second
    recorded: dt.datetime | None  # None when the file does not say
    channels: list[Channel]
    meta: dict[str, str] = field(default_factory=dict)  # keys as in KEYS' values


@dataclass(frozen=True)
class Column:
    name: str
    unit: str  # UCUM; "" for the time column
    seconds: float  # the time column's unit in seconds; 0 for a channel


def parse(data: bytes) -> Signal:
    """The signal in a device's CSV export; DicomizeError naming the line or column if bad."""
    if not data.strip():
        raise DicomizeError("the file is empty")
    meta, header, samples = _lines(_decode(data))
    header_line, header_text = header
    delimiter = _delimiter(header_text)
    columns = _header(_cells(header_text, delimiter, 0))
    if not samples:
        raise DicomizeError("no samples: the file has a header but no lines of numbers")
    texts: list[list[str]] = [[] for _ in columns]
    for number, line in samples:
        cells = _cells(line, delimiter, len(columns))
        if len(cells) != len(columns):
            raise DicomizeError(
                f"line {number} has {len(cells)} values; the header (line {header_line}) "
                f"has {len(columns)} columns"
            )
        for column, cell in zip(texts, cells, strict=True):
            column.append(cell)
    lines = [n for n, _ in samples]
    parsed = [
        _numbers(c.name, t, lines, decimal_comma=delimiter != ",")
        for c, t in zip(columns, texts, strict=True)
    ]
    channels = [
        Channel(c.name, c.unit, values, decimals)
        for c, (values, decimals) in zip(columns, parsed, strict=True)
        if not c.seconds
    ]
    timed = [(c, p) for c, p in zip(columns, parsed, strict=True) if c.seconds]
    rate = _rate(meta, timed[0] if timed else None, lines)
    return Signal(_kind(meta), rate, _recorded(meta), channels, meta)


def _delimiter(header: str) -> str:
    """Excel with a decimal comma writes ';' between cells, "Unicode text" a tab; a header of
    one cell has none, and then a ',' in its values is a decimal comma."""
    return "\t" if "\t" in header else ";" if ";" in header or "," not in header else ","


def _decode(data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")  # Excel's "Unicode text"
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252")  # what a Norwegian Excel saves as "CSV"


def _lines(text: str) -> tuple[dict[str, str], tuple[int, str], list[tuple[int, str]]]:
    """`key: value` lines (after '#', or before the header), the header line, the samples."""
    meta: dict[str, str] = {}
    header: tuple[int, str] | None = None
    samples: list[tuple[int, str]] = []
    commented: tuple[int, str] | None = None  # numpy.savetxt writes its header as a comment
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if not _meta(comment, meta) and re.search(r"[\[(]", comment):
                commented = (number, comment)  # perhaps a header with units
        elif header is None and _meta(stripped, meta):
            continue
        elif header is None:
            header = (number, stripped)
        else:
            samples.append((number, stripped))
    if header is None:
        raise DicomizeError("no header line: the file holds only comments")
    if _is_numbers(header[1]):
        if commented is None:
            raise DicomizeError(
                f"line {header[0]} is numbers, not a header: the first line must name each "
                "column as 'name [unit]'"
            )
        header, samples = commented, [header, *samples]
    return meta, header, samples


def _meta(text: str, meta: dict[str, str]) -> bool:
    m = META_LINE.match(text)
    if not m:
        return False
    key = re.sub(r"[^a-z0-9]+", "_", m["key"].lower()).strip("_").removesuffix("_hz")
    meta[KEYS.get(key, key)] = m["value"].strip().rstrip(",;\t").strip().strip('"')
    return True


def _is_numbers(line: str) -> bool:
    cells = [c for c in re.split(r"[;\t]", line) if c.strip()]
    return bool(re.search(r"\d", line)) and all(re.fullmatch(r"[-+0-9.,eE\s]+", c) for c in cells)


def _cells(line: str, delimiter: str, expected: int) -> list[str]:
    cells = [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]
    while cells and not cells[-1] and len(cells) > expected:
        cells.pop()  # Excel ends lines with empty cells after the data
    return cells


def _header(cells: list[str]) -> list[Column]:
    columns: list[Column] = []
    for i, cell in enumerate(cells, start=1):
        m = HEADER_CELL.match(cell)
        name, unit = (m["name"], (m["b"] or m["p"] or "").strip()) if m else (cell, "")
        if not name:
            raise DicomizeError(f"column {i} {cell!r} has no name")
        seconds = _time_unit(name, unit)
        if seconds:
            columns.append(Column(name, "", seconds))
            continue
        if not unit:
            raise DicomizeError(
                f"column {i} {name!r} has no unit: write the header cell as 'name [unit]' "
                "or 'name (unit)'"
            )
        ucum = UNIT_LOOKUP.get(unit.lower())
        if ucum is None:
            raise DicomizeError(
                f"column {i} {name!r}: unknown unit {unit!r}; known: {', '.join(UNITS)}"
            )
        if any(c.name == name for c in columns):
            raise DicomizeError(f"column {i}: channel {name!r} appears twice")
        columns.append(Column(name, ucum, 0.0))
    if sum(1 for c in columns if c.seconds) > 1:
        raise DicomizeError("more than one time column: keep one")
    if all(c.seconds for c in columns):
        raise DicomizeError("no channels: the only column is time")
    return columns


def _time_unit(name: str, unit: str) -> float:
    """Seconds per unit if the column is time (`t [s]`, `Time`, `time_ms`, `seconds`), else 0."""
    if unit:
        return TIME_UNITS.get(unit.lower(), 0.0)
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    m = TIME_NAME.match(key)
    return TIME_UNITS.get(key) or (TIME_UNITS.get(m["unit"] or "s", 0.0) if m else 0.0)


def _numbers(
    name: str, texts: list[str], lines: list[int], *, decimal_comma: bool
) -> tuple[list[float], int]:
    """The values, and the most decimals any of them was written with."""
    values, decimals = [], 0
    for text, line in zip(texts, lines, strict=True):
        try:
            d = Decimal(text.replace(",", ".") if decimal_comma else text)
        except InvalidOperation:
            d = Decimal("NaN")
        if not d.is_finite():
            raise DicomizeError(f"line {line}, column {name!r}: {text!r} is not a number")
        exponent = d.as_tuple().exponent
        decimals = max(decimals, -exponent if isinstance(exponent, int) and exponent < 0 else 0)
        values.append(float(d))
    return values, min(decimals, MAX_DECIMALS)


def _rate(
    meta: dict[str, str], time: tuple[Column, tuple[list[float], int]] | None, lines: list[int]
) -> float:
    """The declared rate, else the time column's; both must agree when both are given."""
    declared = _declared_rate(meta)
    if time is None:
        if declared is None:
            raise DicomizeError(
                "no sampling rate: add a time column ('time [s]') or a line "
                "'# sampling_rate: 500' (samples per second)"
            )
        return declared
    column, (values, decimals) = time
    derived, precision = _rate_from_time(column, values, decimals, lines)
    if declared is None:
        return derived
    if abs(declared - derived) > declared * max(precision, RATE_TOLERANCE):
        raise DicomizeError(
            f"the sampling rate says {declared:g} samples/s but the time column {column.name!r} "
            f"gives {derived:g}"
        )
    return declared


def _declared_rate(meta: dict[str, str]) -> float | None:
    """From `sampling_rate: 500 Hz` or `sampling_interval: 2 ms`; None when neither is there."""
    if text := meta.get("sampling_rate"):
        value, unit = _quantity(text)
        rate = value * RATE_UNITS.get(unit, math.nan)
    elif text := meta.get("interval"):
        value, unit = _quantity(text)
        rate = 1 / (value * TIME_UNITS.get(unit or "s", math.nan)) if value else math.nan
    else:
        return None
    if not math.isfinite(rate) or rate <= 0:
        raise DicomizeError(f"sampling rate {text!r} is not a positive number of samples/s")
    return rate


def _quantity(text: str) -> tuple[float, str]:
    m = QUANTITY.match(text)
    if not m:
        return math.nan, ""
    return float(m["number"].replace(",", ".")), m["unit"].strip().lower()


def _rate_from_time(
    column: Column, values: list[float], decimals: int, lines: list[int]
) -> tuple[float, float]:
    """Samples per second a uniformly spaced time column gives, and its relative precision."""
    if len(values) < 2:
        raise DicomizeError("one sample only: a time column of one value gives no rate")
    resolution = 10.0**-decimals
    t = np.rint(np.asarray(values) / resolution)  # in units of the printed resolution
    steps = np.diff(t)
    step = (t[-1] - t[0]) / (len(t) - 1)
    if (bad := np.flatnonzero(steps <= 0)).size:
        raise DicomizeError(f"line {lines[bad[0] + 1]}: time {column.name!r} does not increase")
    # a step of a whole number of units is printed exactly, so a longer step is a gap; else
    # (300 samples/s in ms) the printed steps are the average rounded, up to one unit off
    whole = abs(step - round(step)) <= STEP_TOLERANCE * step
    off = np.abs(steps - (round(step) if whole else step))
    rounding = 0.0 if whole else 1 - 1e-9
    if (bad := np.flatnonzero((off > rounding) & (off > STEP_TOLERANCE * step))).size:
        i = int(bad[0])
        raise DicomizeError(
            f"line {lines[i + 1]}: time {column.name!r} is not uniformly spaced (a step of "
            f"{steps[i] * resolution:g} where the average is {step * resolution:g}); DICOM "
            "waveforms need a constant sampling rate"
        )
    rate = 1 / (step * resolution * column.seconds)
    precision = 1 / (t[-1] - t[0])
    # the simplest number within the time column's precision: 300, not 299.99
    rounded = (round(rate, digits) for digits in range(7))
    return next((r for r in rounded if abs(r - rate) <= rate * precision), rate), precision


def _kind(meta: dict[str, str]) -> str:
    """The declared kind in our words ("" when not declared); waveform.py judges the rest."""
    text = meta.get("kind", "").lower()
    words = set(re.findall(r"[a-z0-9]+", text))
    return next((kind for kind, known in KIND_WORDS.items() if words & known), text)


def _recorded(meta: dict[str, str]) -> dt.datetime | None:
    text = meta.get("recorded") or f"{meta.get('date', '')} {meta.get('time', '')}".strip()
    if not text:
        return None
    when = next((w for f in (None, *LOCAL_FORMATS) if (w := _datetime(text, f))), None)
    if when is None or len(re.sub(r"\D", "", text)) <= 8:  # a date alone is no acquisition time
        raise DicomizeError(
            f"recorded {text!r} is not a date and time (ISO 8601, e.g. 2024-05-01T10:22:03)"
        )
    return when.astimezone() if when.tzinfo else when


def _datetime(text: str, fmt: str | None) -> dt.datetime | None:
    """ISO 8601 when `fmt` is None."""
    try:
        return dt.datetime.fromisoformat(text) if fmt is None else dt.datetime.strptime(text, fmt)
    except ValueError:
        return None
