"""Rendering matches DCMTK's dcmj2pnm (an independent renderer) for every sample and syntax."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.conftest import SAMPLES
from viewer.render import RenderCache, RenderError, View, Window, _grey, _grey_levels, render

SAMPLE_FILES = sorted(SAMPLES.rglob("*.dcm"))


def reference(path: Path, tmp: Path) -> np.ndarray:
    """dcmj2pnm with the object's first window, or min-max when it has none (as we do)."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90":
        # DCMTK cannot decode JPEG 2000: OpenJPEG decodes, DCMTK still does the rendering
        ds.decompress(generate_instance_uid=False)
        path = tmp / "decoded.dcm"
        ds.save_as(path)
    voi = ["+Wi", "1"] if "WindowCenter" in ds else ["+Wm"]
    out = tmp / "ref.png"
    subprocess.run(["dcmj2pnm", *voi, "--write-png", str(path), str(out)], check=True)
    return np.asarray(Image.open(out).convert("L"), dtype=float)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rendering_matches_dcmtk(path: Path, tmp_path: Path) -> None:
    ours = Image.open(BytesIO(render(dcmread(path), View(fmt="png"))))
    pixels = np.asarray(ours.convert("L"), dtype=float)
    ref = reference(path, tmp_path)
    assert pixels.shape == ref.shape
    assert np.abs(pixels - ref).mean() < 1.0 and np.abs(pixels - ref).max() <= 2


def test_windows_presets_and_errors() -> None:
    ct = dcmread(next(p for p in SAMPLE_FILES if p.name.startswith("ct-s1")))
    soft = np.asarray(Image.open(BytesIO(render(ct, View(fmt="png")))))
    bone = np.asarray(Image.open(BytesIO(render(ct, View(fmt="png", window=Window.parse("bone"))))))
    assert not np.array_equal(soft, bone)
    assert Window.parse("40,400") == Window(40.0, 400.0)
    with pytest.raises(RenderError, match="neither"):
        Window.parse("wide")
    with pytest.raises(RenderError, match="frame 2 out of range"):
        render(ct, View(frame=2))
    thumb = Image.open(BytesIO(render(ct, View(size=32))))
    assert max(thumb.size) == 32 and thumb.format == "JPEG"


def test_cache_keeps_within_its_budget() -> None:
    cache = RenderCache(budget_bytes=10)
    cache.put(("a", View()), b"12345")
    cache.put(("b", View()), b"12345")
    assert cache.get(("a", View())) == b"12345"
    cache.put(("c", View()), b"12345")  # evicts b, the least recently used
    assert cache.get(("b", View())) is None and cache.get(("a", View())) is not None
    assert cache.used <= 10


def dcmj2pnm(path: Path, tmp: Path, *options: str) -> Image.Image:
    out = tmp / "dcmtk.png"
    subprocess.run(["dcmj2pnm", *options, "--write-png", str(path), str(out)], check=True)
    return Image.open(out)


def with_voi_lut(path: Path, bits: int, scale: float) -> Path:
    """A 12-bit ramp whose VOI LUT uses only part of its `bits`-deep output range."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 4096).tobytes()
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, bits]
    lut.add_new(0x00283006, "US", [int(i * scale) for i in range(4096)])  # LUT Data
    ds.VOILUTSequence = [lut]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("bits", "scale"), [(16, 10), (12, 0.5), (8, 0.03)])
def test_voi_lut_is_scaled_by_its_bit_depth_like_dcmtk(
    bits: int, scale: float, tmp_path: Path
) -> None:
    path = with_voi_lut(tmp_path / "voi-lut.dcm", bits, scale)
    ours = np.asarray(Image.open(BytesIO(render(dcmread(path), View(fmt="png")))), dtype=float)
    ref = np.asarray(dcmj2pnm(path, tmp_path, "+Wl", "1").convert("L"), dtype=float)
    assert ref.max() < 200  # the LUT never reaches white: it must not be stretched to it
    assert np.abs(ours - ref).mean() < 1.0 and np.abs(ours - ref).max() <= 2


def test_palette_color_is_shown_in_its_colours_like_dcmtk(tmp_path: Path) -> None:
    found = get_testdata_file("examples_palette.dcm")  # shipped in pydicom's wheel
    assert isinstance(found, str)
    path = Path(found)
    ours = Image.open(BytesIO(render(dcmread(path), View(fmt="png"))))
    ref = dcmj2pnm(path, tmp_path)
    assert ours.mode == ref.mode == "RGB" and ours.size == ref.size
    diff = np.abs(np.asarray(ours, dtype=float) - np.asarray(ref, dtype=float))
    assert diff.mean() < 1.0 and diff.max() <= 2


def _single_frame(ds: Dataset, pixels: np.ndarray) -> Dataset:
    """`ds` with `pixels` (one decoded frame) as its only, uncompressed frame."""
    out = dcmread(BytesIO(_part10(ds)))
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.PixelData = np.ascontiguousarray(pixels).tobytes()
    out["PixelData"].VR = "OB" if pixels.dtype.itemsize == 1 else "OW"
    out.NumberOfFrames = 1
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # pydicom decodes colour to interleaved RGB
        out.PhotometricInterpretation, out.PlanarConfiguration = "RGB", 0
    return out


def _part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name", ["examples_ybr_color.dcm", "rtdose.dcm", "rtdose_rle.dcm", "SC_rgb_rle_2frame.dcm"]
)
def test_one_frame_is_decoded_and_equals_that_frame_of_the_whole(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = get_testdata_file(name)
    assert isinstance(path, str)  # pydicom's bundled files, no download
    ds = dcmread(path)
    whole = ds.pixel_array
    count = int(ds.NumberOfFrames)
    # decoding every frame to show one is what made cine slow
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda _: pytest.fail("decoded all")))
    for k in sorted({0, count // 2, count - 1}):
        ours = render(ds, View(frame=k + 1, fmt="png"))
        expected = render(_single_frame(ds, whole[k]), View(fmt="png"))
        assert np.array_equal(
            np.asarray(Image.open(BytesIO(ours))), np.asarray(Image.open(BytesIO(expected)))
        )


def _synthetic(photometric: str, slope: float) -> tuple[Dataset, np.ndarray]:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.RescaleSlope, ds.RescaleIntercept = slope, 100
    frame = np.random.default_rng(7).integers(-32768, 32768, (64, 64)).astype(np.int16)
    frame[0, :2] = (-32768, 32767)  # the whole range of the type, where an index could wrap
    return ds, frame


@pytest.mark.parametrize(
    ("ds", "frame"),
    [
        _synthetic("MONOCHROME1", -2.5),
        _synthetic("MONOCHROME2", 1.0),
        *(
            (ds, ds.pixel_array)
            for ds in (dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm"))
        ),
    ],
    ids=["MONOCHROME1 slope<0", "full int16 range", "CT_small", "MR_small"],
)
@pytest.mark.parametrize("window", [None, Window(40, 400), Window(-600, 1500)])
def test_grey_levels_by_table_equal_those_pixel_by_pixel(
    ds: Dataset, frame: np.ndarray, window: Window | None
) -> None:
    assert np.array_equal(_grey(ds, frame, window), _grey_levels(ds, frame, window))
