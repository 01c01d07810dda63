"""Read what the archive needs from an encoded DICOM object without decoding pixel data."""

from __future__ import annotations

import functools
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_REQUIRED = {
    0x0020000D: "StudyInstanceUID (0020,000D)",
    0x0020000E: "SeriesInstanceUID (0020,000E)",
    0x00080018: "SOPInstanceUID (0008,0018)",
}
_VALIDATE_TAGS = [Tag(t) for t in (0x00080016, *_REQUIRED)]
_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UT", b"SQ", b"UC", b"UR")
_MAX_RAW_ATTRS = 64 * 1024
_BULK = 4096


class InvalidObject(ValueError):
    """The object cannot be archived; the message names what is wrong."""


class InvalidUID(InvalidObject):
    """A UID the object is filed under is not a DICOM UID (it would make an unsafe key)."""


# PS3.5 9.1 forbids leading zeros in a component, but some modalities write them and such a UID
# still names one object safely; what must never pass is anything else that could shape a key
_FILEABLE_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def valid_uid(uid: str) -> bool:
    """Digits in dot-separated components, at most 64 characters (PS3.5 9.1, leading zeros
    tolerated)."""
    return len(uid) <= 64 and _FILEABLE_UID.fullmatch(uid) is not None


def _needs_pixels(sop_class: str) -> bool:
    """Image storage IODs (CT, MR, CR, DX, US, SC, ...) all require the Image Pixel module."""
    return valid_uid(sop_class) and UID(sop_class).keyword.endswith("ImageStorage")


def _encoding(ts: str) -> tuple[bool, bool]:
    """(is_implicit_VR, is_little_endian) of a transfer syntax."""
    return ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag == PIXEL_DATA


def _dataset_stream(ds_bytes: bytes, ts: str) -> bytes:
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            return zlib.decompress(ds_bytes, -zlib.MAX_WBITS)
        except zlib.error as e:
            raise InvalidObject(f"deflated data set does not inflate: {e}") from None
    return ds_bytes


@dataclass(frozen=True)
class Identity:
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str


def validate(ds_bytes: bytes, ts: str) -> Identity:
    """Check an encoded data set (no file meta) is whole and carries the UIDs we file it under."""
    stream = _dataset_stream(ds_bytes, ts)
    implicit, little = _encoding(ts)
    fp = BytesIO(stream)
    try:
        ds = read_dataset(fp, implicit, little, stop_when=_at_pixels)
    except struct.error:  # pydicom unpacks a short read at the end
        raise InvalidObject("data set ends inside an element header (truncated)") from None
    except Exception as e:
        raise InvalidObject(f"data set cannot be parsed: {e}") from None
    values: dict[int, str] = {}
    for tag in _VALIDATE_TAGS:
        raw = ds.get(tag)
        if raw is None:
            continue
        value = raw.value if isinstance(raw, RawDataElement) else raw
        if isinstance(value, RawDataElement | DataElement):
            value = value.value
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
        values[int(tag)] = text.strip("\0 ")
    missing = [name for tag, name in _REQUIRED.items() if not values.get(tag)]
    if missing:
        raise InvalidObject("missing " + ", ".join(missing))
    invalid = [
        f"{name} {values[tag]!r}" for tag, name in _REQUIRED.items() if not valid_uid(values[tag])
    ]
    if invalid:
        raise InvalidUID("invalid UID " + ", ".join(invalid))
    pos = fp.tell()
    if pos < len(stream):  # read_dataset stopped at Pixel Data
        length = _check_pixel_tail(stream, pos, implicit, little)
        if length is not None:
            _check_pixel_length(ds, length)
    else:
        _check_last_element(ds, stream, little)
        if _needs_pixels(values.get(0x00080016, "")):
            raise InvalidObject(
                "an image object without Pixel Data (7FE0,0010): truncated or incomplete"
            )
    return Identity(
        values.get(0x00080016, ""), values[0x00080018], values[0x0020000D], values[0x0020000E]
    )


def validate_part10(payload: bytes) -> Identity:
    """Check a Part 10 file (as uploaded over HTTP) the way a C-STORE data set is checked."""
    if len(payload) < 132 or payload[128:132] != b"DICM":
        raise InvalidObject("not a DICOM Part 10 file: no 'DICM' prefix after the preamble")
    start = dataset_offset(payload)
    try:
        meta = dcmread(BytesIO(payload[:start]), force=True).file_meta
    except Exception as e:
        raise InvalidObject(f"file meta information cannot be parsed: {e}") from None
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not ts:
        raise InvalidObject("file meta information has no TransferSyntaxUID (0002,0010)")
    return validate(payload[start:], ts)


def _check_last_element(ds: Dataset, stream: bytes, little: bool) -> None:
    """A data set read to its end must end with its last element, not inside or after it."""
    if not len(ds):
        return
    last = ds.get_item(list(ds.keys())[-1])
    if isinstance(last, RawDataElement):
        undefined = last.length == _UNDEFINED
    else:  # pydicom converts a sequence, and an empty value, as it reads
        undefined = last.is_undefined_length
    if undefined:
        if stream[-8:] != struct.pack("<HHI" if little else ">HHI", 0xFFFE, 0xE0DD, 0):
            raise InvalidObject("data set ends inside a sequence (truncated)")
    elif isinstance(last, RawDataElement):
        end = last.value_tell + last.length
        if end != len(stream):
            raise InvalidObject(
                f"data set ends inside an element at byte {min(end, len(stream))} (truncated)"
            )


def _check_pixel_length(ds: Dataset, length: int) -> None:
    """Native pixel data must hold every frame the image attributes describe."""
    try:  # whole numbers first: pydicom would repeat a malformed value as a string
        for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated"):
            int(ds[keyword].value)
        int(ds.get("NumberOfFrames") or 1)
        expected = get_expected_length(ds, "bytes")
    except Exception:  # attributes missing or malformed: the IOD check is not ours to make
        return
    if length < expected:
        raise InvalidObject(
            f"pixel data holds {length} bytes where Rows, Columns, Samples per Pixel, Bits"
            f" Allocated and Number of Frames need {expected} (truncated)"
        )


def _check_pixel_tail(stream: bytes, pos: int, implicit: bool, little: bool) -> int | None:
    """Detect a data set cut off inside its pixel data (the usual way transfers get truncated);
    the length of native pixel data, None for encapsulated."""
    end = "<" if little else ">"
    long_vr = not implicit and stream[pos + 4 : pos + 6] in _LONG_VRS
    header = 12 if long_vr else 8
    if pos + header > len(stream):
        raise InvalidObject("data set ends inside the Pixel Data element header (truncated)")
    if implicit or long_vr:
        (length,) = struct.unpack_from(end + "I", stream, pos + header - 4)
    else:
        (length,) = struct.unpack_from(end + "H", stream, pos + 6)
    if length == _UNDEFINED:
        _check_fragments(stream, pos + header, end)
        return None
    if pos + header + length > len(stream):
        raise InvalidObject(
            f"pixel data declares {length} bytes but only {len(stream) - pos - header} arrived"
        )
    return int(length)


def _check_fragments(stream: bytes, pos: int, end: str) -> None:
    """Walk encapsulated pixel data item by item to its sequence delimiter; nothing is copied,
    so data set trailing padding after it is no reason to refuse."""
    item = struct.Struct(end + "HHI")
    while pos + item.size <= len(stream):
        group, element, length = item.unpack_from(stream, pos)
        tag = group << 16 | element
        pos += item.size
        if tag == _SEQUENCE_DELIMITER:
            return
        if tag != _ITEM or length == _UNDEFINED:
            raise InvalidObject(
                f"encapsulated pixel data holds ({group:04X},{element:04X}), not an item"
            )
        pos += length
    raise InvalidObject("encapsulated pixel data has no sequence delimiter (truncated)")


@dataclass
class Header:
    """The index fields of one object plus its attributes (no bulk data) for query answers."""

    transfer_syntax: str
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    issuer: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician: str
    modality: str
    series_number: str
    series_description: str
    body_part: str
    instance_number: str
    attrs: bytes
    attrs_ts: str
    dataset: Dataset


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    tag = _tag(keyword)
    try:
        raw = ds.get_item(tag)
    except Exception:
        return ""
    if raw is None:
        return ""
    if isinstance(raw, RawDataElement) and (raw.VR or dictionary_VR(tag)) in _ASCII_VRS:
        return (raw.value or b"").decode("ascii", "replace").strip("\0 ")[:limit]
    try:
        value = ds[tag].value
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip("\0 ")[:limit]


# VRs whose values are in the default repertoire whatever the character set (PS3.5 6.2): read
# from the raw bytes, as pydicom's conversion was a third of the header parse at ingest
_ASCII_VRS = frozenset({"AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})


@functools.cache
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def _drop_bulk(ds: Dataset) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _drop_bulk(item)
        elif (isinstance(elem.value, bytes | bytearray) and len(elem.value) > _BULK) or (
            elem.VR in ("UT", "LT", "OB", "OW", "UN") and len(str(elem.value)) > _BULK
        ):
            del ds[elem.tag]


def encode_attrs(ds: Dataset) -> bytes:
    """Explicit VR Little Endian encoding of a data set without bulk values."""
    clean = Dataset()
    clean.update(ds)
    _drop_bulk(clean)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, clean)
    return out.getvalue()


def decode_attrs(blob: bytes, ts: str) -> Dataset:
    implicit, little = _encoding(ts)
    return read_dataset(BytesIO(blob), implicit, little)


def dataset_offset(payload: bytes) -> int:
    """Byte offset of the data set after the Part 10 preamble and file meta group."""
    if payload[128:132] != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(payload):
        group = struct.unpack_from("<H", payload, pos)[0]
        if group != 0x0002:
            return pos
        vr = payload[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<I", payload, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", payload, pos + 6)[0]
    return pos


def parse(payload: bytes) -> Header:
    """Parse a Part 10 object's header (stops before pixel data)."""
    fp = BytesIO(payload)
    try:
        ds = dcmread(fp, stop_before_pixels=True, force=True)
    except Exception as e:
        raise InvalidObject(f"not a readable DICOM object: {e}") from None
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ExplicitVRLittleEndian)
    start = dataset_offset(payload)
    end = fp.tell()
    if ts != DeflatedExplicitVRLittleEndian and start and 0 < end - start <= _MAX_RAW_ATTRS:
        attrs, attrs_ts = payload[start:end], ts
    else:
        attrs, attrs_ts = encode_attrs(ds), ExplicitVRLittleEndian
    h = Header(
        transfer_syntax=ts,
        sop_class_uid=_text(ds, "SOPClassUID", 64)
        or str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")),
        sop_uid=_text(ds, "SOPInstanceUID", 64),
        study_uid=_text(ds, "StudyInstanceUID", 64),
        series_uid=_text(ds, "SeriesInstanceUID", 64),
        patient_id=_text(ds, "PatientID", 64),
        issuer=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        birth_date=_text(ds, "PatientBirthDate", 8),
        sex=_text(ds, "PatientSex", 16),
        study_date=_text(ds, "StudyDate", 8),
        study_time=normalise_time(_text(ds, "StudyTime", 16)),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription", 64),
        referring_physician=_text(ds, "ReferringPhysicianName", 324),
        modality=_text(ds, "Modality", 16),
        series_number=_text(ds, "SeriesNumber", 12),
        series_description=_text(ds, "SeriesDescription", 64),
        body_part=_text(ds, "BodyPartExamined", 16),
        instance_number=_text(ds, "InstanceNumber", 12),
        attrs=attrs,
        attrs_ts=attrs_ts,
        dataset=ds,
    )
    for name in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        # read past the index column width so an over-long UID is not cut down to a valid one
        uid = _text(ds, name, 65)
        if not uid:
            raise InvalidObject(f"missing {name}")
        if not valid_uid(uid):
            raise InvalidUID(f"invalid UID {name} {uid!r}")
    return h


def normalise_time(tm: str) -> str:
    """TM as HHMMSS.ffffff so that string order is time order (old colon form accepted)."""
    tm = tm.replace(":", "").strip()
    if not tm:
        return ""
    main, _, frac = tm.partition(".")
    main = (main + "000000")[:6]
    return f"{main}.{(frac + '000000')[:6]}"


def element_value(ds: Dataset, tag: int) -> Any:
    """A converted element value, or None when absent or unreadable."""
    try:
        elem = ds[tag]
    except (KeyError, Exception):
        return None
    return elem.value
