"""C-STORE sub-operations of C-MOVE and C-GET send the archived bytes themselves.

pynetdicom encodes every data set it sends with pydicom, which never writes the retired group
lengths (PS3.5 7.2) and writes some values differently than a modality did: a moved object
then differs from the one stored. A data set marked with `keep` is sent as its stored bytes
when it still has the transfer syntax it was stored in and that is the syntax negotiated;
otherwise (decompressed for the peer, or changed to implicit VR by pynetdicom) it is encoded.
"""

from __future__ import annotations

import pynetdicom.association
from pydicom.dataset import Dataset
from pydicom.uid import UID

from storage.dicomheader import dataset_offset

_ENCODE = pynetdicom.association.encode
_KEPT = "_pacsbroker_stored_bytes"


def keep(ds: Dataset, part10: bytes) -> Dataset:
    """Mark `ds`, read from the Part 10 object `part10` and not changed, to be sent as stored."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    setattr(ds, _KEPT, (ts, part10[dataset_offset(part10) :]))
    return ds


def _encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    kept = getattr(ds, _KEPT, None)
    if kept is not None:
        ts, data = kept
        syntax = UID(ts)
        if str(ds.file_meta.TransferSyntaxUID) == ts and (
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            syntax.is_deflated,
        ) == (is_implicit_vr, is_little_endian, deflated):
            return data
    return _ENCODE(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    """Route pynetdicom's C-STORE encoding through `_encode`."""
    pynetdicom.association.encode = _encode
