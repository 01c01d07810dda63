"""Rendering matches DCMTK's dcmj2pnm (an independent renderer) for every sample and syntax."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from tests.conftest import SAMPLES
from viewer.render import RenderCache, RenderError, View, Window, render

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
