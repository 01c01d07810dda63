"""Presentation contexts the SCP accepts: every storage class, Q/R, worklist, MPPS, verification."""

from __future__ import annotations

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import StoragePresentationContexts
from pynetdicom.presentation import PresentationContext, build_context

# pynetdicom.sop_class builds its names at import time, so type checkers cannot see them.
VERIFICATION = UID("1.2.840.10008.1.1")
PATIENT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
PATIENT_MOVE = UID("1.2.840.10008.5.1.4.1.2.1.2")
PATIENT_GET = UID("1.2.840.10008.5.1.4.1.2.1.3")
STUDY_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
STORAGE_COMMITMENT = UID("1.2.840.10008.1.20.1")  # push model
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")  # its well-known instance
MODALITY_WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")
MPPS = UID("1.2.840.10008.3.1.2.3.3")  # Modality Performed Procedure Step

UNCOMPRESSED: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
STORAGE_SYNTAXES: list[str | UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.4.100",  # MPEG-2 MP@ML
    "1.2.840.10008.1.2.4.101",  # MPEG-2 MP@HL
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10
]
QUERY_RETRIEVE = [PATIENT_FIND, STUDY_FIND, PATIENT_MOVE, STUDY_MOVE, PATIENT_GET, STUDY_GET]
FIND_MODELS = {str(PATIENT_FIND): "PATIENT", str(STUDY_FIND): "STUDY"}


def storage_classes() -> list[str]:
    # pynetdicom's list stops at 120 (a proposal's limit is 128); waveforms we DICOM-ize need more
    extra = ["1.2.840.10008.5.1.4.1.1.9.6.2"]  # Multi-channel Respiratory Waveform Storage
    return [str(cx.abstract_syntax) for cx in StoragePresentationContexts] + extra


def scp_contexts() -> list[PresentationContext]:
    out = [build_context(VERIFICATION, UNCOMPRESSED)]
    out += [build_context(uid, UNCOMPRESSED) for uid in QUERY_RETRIEVE]
    out.append(build_context(STORAGE_COMMITMENT, UNCOMPRESSED))
    out += [build_context(MODALITY_WORKLIST_FIND, UNCOMPRESSED), build_context(MPPS, UNCOMPRESSED)]
    for uid in storage_classes():
        cx = build_context(uid, STORAGE_SYNTAXES)
        cx.scu_role, cx.scp_role = True, True
        out.append(cx)
    return out


def sub_operation_contexts(pairs: set[tuple[str, str]]) -> list[PresentationContext]:
    """For C-MOVE: one context per stored (SOP class, syntax), since a peer accepts one syntax
    per context, plus an uncompressed fallback per SOP class."""
    if not pairs:
        pairs = {("1.2.840.10008.5.1.4.1.1.7", str(ExplicitVRLittleEndian))}
    out = [build_context(UID(c), [UID(ts)]) for c, ts in sorted(pairs)]
    out += [build_context(UID(c), UNCOMPRESSED) for c in sorted({c for c, _ in pairs})]
    return out[:128]
