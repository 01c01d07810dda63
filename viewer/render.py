"""Render a DICOM image frame to JPEG or PNG the way a diagnostic viewer presents it (videos
and waveforms: render_video.py, render_waveform.py).

Modality LUT (rescale) first, then the VOI: an explicit window, else the object's first window,
else its VOI LUT, else the full range of values; MONOCHROME1 is inverted so that it displays
like MONOCHROME2. Colour images are shown in RGB (pydicom converts YBR on decoding, and we
apply the palette of PALETTE COLOR images).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

PRESETS = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (60.0, 400.0),
    "mediastinum": (50.0, 350.0),
}
MEDIA = {"jpeg": "image/jpeg", "png": "image/png"}


class RenderError(ValueError):
    """The object cannot be shown as an image; the message says why."""


class FrameOutOfRange(RenderError):
    """The object has no such frame: the request is wrong, not the object."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float

    @classmethod
    def parse(cls, text: str) -> Window:
        """A preset name, or "center,width[,linear]" as in the WADO-RS `window` parameter."""
        if text in PRESETS:
            return cls(*PRESETS[text])
        try:
            center, width, *_ = (float(v) for v in text.split(",")[:2])
        except ValueError:
            raise RenderError(
                f"window {text!r} is neither 'center,width' nor one of {sorted(PRESETS)}"
            ) from None
        if width < 1:
            raise RenderError("window width must be at least 1")
        return cls(center, width)


@dataclass(frozen=True)
class View:
    frame: int = 1
    window: Window | None = None
    size: int | None = None
    fmt: str = "jpeg"
    quality: int = 90


def _linear(values: np.ndarray, w: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear window, onto 0..1."""
    out = (values - (w.center - 0.5)) / (w.width - 1) + 0.5
    return np.clip(out, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.zeros_like(values, dtype=float) if hi <= lo else (values - lo) / (hi - lo)


def _by_depth(values: np.ndarray, descriptor: Sequence[int]) -> np.ndarray:
    """LUT output onto 0..1 by the entries' bit depth (the descriptor's third value), as DCMTK
    does: a LUT that uses only part of its range must look that way, not be stretched."""
    return np.asarray(values, dtype=float) / float(2 ** int(descriptor[2]) - 1)


def _voi_lut(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """The first VOI LUT; values before its first entry take that entry, after its last the
    last (PS3.3 C.11.2.1.1). Not pydicom's apply_voi_lut: it wraps indices of 8-bit LUTs at 256."""
    item = ds.VOILUTSequence[0]
    first = int(item.LUTDescriptor[1])
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit entries, little endian like every current syntax
        lut = np.frombuffer(data, dtype="<u2")
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.int64))
    index = np.clip(np.rint(values) - first, 0, len(lut) - 1).astype(np.intp)
    return _by_depth(lut[index], item.LUTDescriptor)


def _palette(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    rgb = apply_color_lut(frame, ds)[..., :3]  # an alpha channel is not shown
    unit = _by_depth(rgb, ds.RedPaletteColorLookupTableDescriptor)
    return np.rint(unit * 255.0).astype(np.uint8)


def _first(value: Any) -> float:
    """The first of a possibly multi-valued DS (a file may carry several windows)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return float(value[0])
    return float(value)


def _grey(ds: Dataset, frame: np.ndarray, window: Window | None) -> np.ndarray:
    """The displayed grey levels of a frame. Every step but the full-range stretch maps each
    stored value on its own, so integer frames go through a table over their range of stored
    values (a few thousand entries for a CT instead of 262,144 pixels, each in floating point:
    two thirds of a first render's CPU); a rescale is monotonic, so the range's ends are the
    stretch's ends. A Modality LUT need not be monotonic: such frames are mapped pixel by pixel."""
    if frame.dtype.kind in "ui" and frame.dtype.itemsize <= 2 and "ModalityLUTSequence" not in ds:
        lo = int(frame.min())
        table = _grey_levels(ds, np.arange(lo, int(frame.max()) + 1), window)
        index = frame.astype(np.intp)
        index -= lo
        return np.take(table, index)  # half the time of table[index]
    return _grey_levels(ds, frame, window)


def _grey_levels(ds: Dataset, frame: np.ndarray, window: Window | None) -> np.ndarray:
    values = np.asarray(apply_modality_lut(frame, ds), dtype=float)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = Window(_first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0))
    if window is not None:
        unit = _linear(values, window)
    elif "VOILUTSequence" in ds:
        unit = _voi_lut(ds, values)
    else:
        unit = _stretch(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent; a RenderError when the object's value is not a number."""
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise RenderError("NumberOfFrames (0028,0008) of the object is not a number") from None


def render(ds: Dataset, view: View) -> bytes:
    """One frame as an encoded image: of the pixels, of a video, or a waveform's plot."""
    image = _image(ds, view)
    if view.size:
        image.thumbnail((view.size, view.size), Image.Resampling.LANCZOS)
    out = BytesIO()
    if view.fmt == "png":
        image.save(out, "PNG")
    else:
        image.save(out, "JPEG", quality=view.quality)
    return out.getvalue()


def _image(ds: Dataset, view: View) -> Image.Image:
    # imported here, not at the top: those modules import RenderError from this one
    from viewer import render_video, render_waveform

    if "WaveformSequence" in ds:
        return render_waveform.plot(ds, view.frame)
    if "PixelData" not in ds:
        raise RenderError("the object has no pixel data")
    frames = frame_count(ds)
    if not 1 <= view.frame <= frames:
        raise FrameOutOfRange(f"frame {view.frame} out of range: the object has {frames} frame(s)")
    if render_video.is_video(ds):
        return render_video.frame(ds, view.frame)
    try:
        # only the frame shown: decoding all of a 30-frame object made each cine step 20x slower
        frame = pixel_array(ds, index=view.frame - 1)
    except Exception as e:
        raise RenderError(f"pixel data cannot be decoded: {e}") from None
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        return Image.fromarray(_palette(ds, frame), "RGB")
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        rgb = frame if frame.dtype == np.uint8 else (_stretch(frame) * 255).astype(np.uint8)
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(_grey(ds, frame, view.window), "L")


class RenderCache:
    """Rendered images by (instance, view), least recently used first out, within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._items: OrderedDict[tuple[str, View], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, View]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple[str, View], data: bytes) -> None:
        if len(data) > self.budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.used -= len(old) if old else 0
            self._items[key] = data
            self.used += len(data)
            while self.used > self.budget:
                _, evicted = self._items.popitem(last=False)
                self.used -= len(evicted)
