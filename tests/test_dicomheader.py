"""The header values ingest indexes, read from the raw bytes where the VR allows it."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage import dicomheader

# what Header holds, by keyword and width, as pydicom converts it
FIELDS = {
    "sop_uid": ("SOPInstanceUID", 64),
    "study_uid": ("StudyInstanceUID", 64),
    "series_uid": ("SeriesInstanceUID", 64),
    "patient_id": ("PatientID", 64),
    "patient_name": ("PatientName", 324),
    "birth_date": ("PatientBirthDate", 8),
    "sex": ("PatientSex", 16),
    "study_date": ("StudyDate", 8),
    "accession_number": ("AccessionNumber", 64),
    "study_description": ("StudyDescription", 64),
    "modality": ("Modality", 16),
    "series_number": ("SeriesNumber", 12),
    "instance_number": ("InstanceNumber", 12),
}


def converted(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip("\0 ")[:limit]


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "image_dfl.dcm",
        "JPEG2000.dcm",
        "rtplan.dcm",
        "chrH31.dcm",
        "MR_small_RLE.dcm",
    ],
)
def test_indexed_values_match_pydicoms_conversion(name: str) -> None:
    found = get_testdata_file(name) or get_charset_files(name)[0]
    payload = Path(found).read_bytes()
    h = dicomheader.parse(payload)
    ds = dcmread(BytesIO(payload), force=True)
    for attr, (keyword, limit) in FIELDS.items():
        assert getattr(h, attr) == converted(ds, keyword, limit), (name, keyword)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # the padded date, on purpose
@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_padded_and_absent_values_in_implicit_and_big_endian(ts: str) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds = Dataset({e.tag: e for e in ds})  # a fresh data set: pydicom keeps a read one's encoding
    ds.file_meta = FileMetaDataset()
    ds.StudyDate = "20200101 "
    ds.Modality = " CT"
    ds.SeriesNumber = "007"
    ds.PatientSex = ""
    del ds.AccessionNumber
    ds.InstanceNumber = "12"
    del ds.PixelData  # pydicom will not byte-swap it; the header is what is read here
    ds.file_meta.TransferSyntaxUID = ts
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    h = dicomheader.parse(out.getvalue())
    assert (h.study_date, h.modality, h.series_number, h.sex, h.accession_number) == (
        "20200101",
        "CT",
        "007",
        "",
        "",
    )
    assert h.instance_number == "12" and h.transfer_syntax == ts


def _sr(last: DataElement | None = None) -> bytes:
    """test-SR.dcm's data set (it ends with its ContentSequence), plus `last` after it."""
    ds = dcmread(get_testdata_file("test-SR.dcm"))
    if last is not None:
        ds.add(last)
    out = BytesIO()
    ds.save_as(out)
    payload = out.getvalue()
    return payload[dicomheader.dataset_offset(payload) :]


@pytest.mark.parametrize(
    "last",
    [None, DataElement(0xFFFCFFFC, "OB", b""), DataElement(0x00640009, "OF", b"")],
    ids=["sequence", "empty OB", "empty OF"],
)
def test_an_object_ending_in_a_sequence_or_an_empty_value_is_whole(last: DataElement) -> None:
    assert dicomheader.validate(_sr(last), ExplicitVRLittleEndian).sop_uid


@pytest.mark.parametrize("last", [None, DataElement(0xFFFCFFFC, "OB", b"\0" * 64)])
def test_an_object_cut_short_is_refused(last: DataElement | None) -> None:
    with pytest.raises(dicomheader.InvalidObject, match="truncated"):
        dicomheader.validate(_sr(last)[:-10], ExplicitVRLittleEndian)


def _data_set(name: str) -> tuple[bytes, str]:
    payload = Path(str(get_testdata_file(name))).read_bytes()
    ts = str(dcmread(BytesIO(payload), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return payload[dicomheader.dataset_offset(payload) :], ts


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "SC_ybr_full_422_uncompressed.dcm", "liver_1frame.dcm", "rtplan.dcm"]
)
def test_native_pixel_data_of_the_described_size_is_whole(name: str) -> None:
    assert dicomheader.validate(*_data_set(name)).sop_uid


def test_native_pixel_data_shorter_than_the_image_is_refused() -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[:-62]  # consistent lengths, as a re-encoding sender writes them
    out = BytesIO()
    ds.save_as(out)
    payload = out.getvalue()
    with pytest.raises(dicomheader.InvalidObject, match=r"holds 32706 bytes .* need 32768"):
        dicomheader.validate(
            payload[dicomheader.dataset_offset(payload) :], ds.file_meta.TransferSyntaxUID
        )
