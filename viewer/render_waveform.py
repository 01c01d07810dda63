"""A waveform object drawn as one image: a labelled strip per channel on a time grid."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import UID

from viewer.render import RenderError

WIDTH, STRIP, LABELS, HEADER, FOOTER = 1200, 110, 120, 28, 22
INK, GRID, TEXT, PAPER = (20, 40, 110), (235, 205, 205), (40, 40, 40), (255, 255, 255)
GRID_STEPS, MAX_GRID_LINES = (1, 2, 5, 10, 30, 60, 300, 600, 1800, 3600), 30


def plot(ds: Dataset, frame: int) -> Image.Image:
    """Every channel of every multiplex group, stacked, time running left to right."""
    if frame != 1:
        raise RenderError(f"frame {frame} out of range: a waveform is shown as one image")
    strips: list[tuple[str, np.ndarray, float]] = []
    try:
        for index, group in enumerate(ds.WaveformSequence):
            values = ds.waveform_array(index)  # sensitivity and baseline applied
            rate = float(group.SamplingFrequency)
            for ch, column in zip(group.ChannelDefinitionSequence, values.T, strict=True):
                strips.append((_label(ch), column, rate))
    except (AttributeError, KeyError, ValueError) as e:
        raise RenderError(f"the waveform cannot be read: {e}") from None
    if not strips:
        raise RenderError("the waveform has no channels")
    seconds = max(len(v) / rate for _, v, rate in strips)
    image = Image.new("RGB", (WIDTH, HEADER + STRIP * len(strips) + FOOTER), PAPER)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    title = UID(str(ds.get("SOPClassUID", ""))).name.removesuffix(" Storage")
    draw.text((8, 6), f"{title} · {seconds:.1f} s", fill=TEXT, font=font)
    plot_w = WIDTH - LABELS - 10
    grid = _grid_step(seconds)
    for second in np.arange(0, seconds + 1e-9, grid):
        x = LABELS + second / seconds * plot_w
        draw.line([(x, HEADER), (x, image.height - FOOTER)], fill=GRID)
        if x + 40 < WIDTH:  # the last second's label would be cut off
            draw.text((x + 2, image.height - FOOTER + 4), f"{second:g} s", fill=TEXT, font=font)
    for row, (label, values, rate) in enumerate(strips):
        top = HEADER + row * STRIP
        draw.line([(LABELS, top + STRIP), (WIDTH - 10, top + STRIP)], fill=GRID)
        lo, hi = float(values.min()), float(values.max())
        draw.text((8, top + STRIP / 2 - 16), label, fill=TEXT, font=font)
        draw.text((8, top + STRIP / 2 + 2), f"{lo:.3g} … {hi:.3g}", fill=TEXT, font=font)
        width = len(values) / rate / seconds * plot_w
        draw.line(_trace(values, LABELS, top + 6, width, STRIP - 12), fill=INK, width=1)
    return image


def _grid_step(seconds: float) -> float:
    """One second, unless that crowds the grid: a spirometry or monitor recording runs minutes."""
    return next((s for s in GRID_STEPS if seconds / s <= MAX_GRID_LINES), GRID_STEPS[-1])


def _label(ch: Dataset) -> str:
    name = str(ch.get("ChannelLabel", "")) or _coded(ch, "ChannelSourceSequence", "CodeMeaning")
    unit = _coded(ch, "ChannelSensitivityUnitsSequence", "CodeValue")
    return f"{name} [{unit}]" if unit else name


def _coded(ch: Dataset, sequence: str, keyword: str) -> str:
    items = ch.get(sequence) or []
    return str(items[0].get(keyword, "")) if items else ""


def _trace(
    values: np.ndarray, left: float, top: float, width: float, height: float
) -> list[tuple[float, float]]:
    """Polyline points; many samples per pixel become that column's min and max, so that a
    narrow spike (a QRS complex) stays visible however long the recording."""
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo or 1.0
    columns = max(int(width), 1)
    if len(values) > 2 * columns:
        bins = np.array_split(values, columns)
        ys = np.ravel([(b.min(), b.max()) for b in bins])
        xs = np.repeat(np.arange(columns, dtype=float), 2)
    else:
        ys = values
        xs = np.arange(len(values)) * (width / max(len(values) - 1, 1))
    py = top + height - (ys - lo) / span * height
    return list(zip((left + xs).tolist(), py.tolist(), strict=True))
