"""Fit a stored object to the transfer syntaxes a reader takes: as stored, else decoded.

Decoding keeps the SOP Instance UID: the reader asked for that object, in a syntax it can read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

log = logging.getLogger("pacsbroker.retrieve")


def fit(ds: Dataset, offered: Iterable[str]) -> Dataset:
    """Return `ds` as stored when its syntax is offered; else decompress it, or turn big endian
    into explicit little endian (pynetdicom converts among the little-endian syntaxes itself)."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    accepted = {UID(t) for t in offered}
    little = {t for t in accepted if not t.is_compressed and t != ExplicitVRBigEndian}
    if ts in accepted or not little or (ts.is_little_endian and not ts.is_compressed):
        return ds
    try:
        if ts.is_compressed:
            ds.decompress(generate_instance_uid=False)
        else:
            _to_little_endian(ds)
    except Exception as e:
        # Sent as stored, the transfer fails and is counted; the others go on.
        log.error("cannot convert %s from %s for the reader: %s", ds.SOPInstanceUID, ts.name, e)
        return ds
    log.info("converted %s from %s for a reader without that syntax", ds.SOPInstanceUID, ts.name)
    return ds


def _to_little_endian(ds: Dataset) -> None:
    """Re-encode a big-endian object: decode every element while the original encoding is
    still known, so values (not raw big-endian bytes) are written out."""
    for _ in ds.iterall():
        pass
    # Bit-packed (1-bit) pixel data is a byte stream in either byte order: kept as it is, as
    # unpacking it would write one byte per pixel under Bits Allocated 1.
    if "PixelData" in ds and ds.get("BitsAllocated") != 1:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_original_encoding(False, True, ds.original_character_set)
