"""Send a folder of DICOM files to a Storage SCP over one association, without decoding them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from broker.dimse.contexts import UNCOMPRESSED


@dataclass
class LoadResult:
    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def dicom_files(root: Path) -> Iterable[tuple[Path, str, str]]:
    """(path, SOP class, transfer syntax) for every Part 10 file under root."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        try:
            meta = read_file_meta_info(p)
            yield p, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except Exception:
            continue


def load(
    files: list[tuple[Path, str, str]],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    progress: Callable[[Path], None] = lambda p: None,
) -> LoadResult:
    _config.STORE_SEND_CHUNKED_DATASET = True
    result = LoadResult()
    by_class: dict[str, list[str]] = {}
    for _, sop_class, ts in files:
        by_class.setdefault(sop_class, [])
        if ts not in by_class[sop_class]:
            by_class[sop_class].append(ts)
    ae = AE(calling_ae)
    ae.maximum_pdu_size = 0
    for sop_class, syntaxes in list(by_class.items())[:128]:
        ae.requested_contexts.append(
            build_context(sop_class, syntaxes + [ts for ts in UNCOMPRESSED if ts not in syntaxes])
        )
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_ae}@{host}:{port} was not accepted")
    try:
        for path, _, _ in files:
            try:
                rsp = assoc.send_c_store(path)
                code = int(getattr(rsp, "Status", -1))
                if code in (0x0000, 0xB000, 0xB006, 0xB007):
                    result.sent += 1
                else:
                    comment = str(getattr(rsp, "ErrorComment", ""))
                    result.failed.append((path, f"status 0x{code:04X} {comment}".strip()))
            except Exception as e:
                result.failed.append((path, str(e)))
                if not assoc.is_established:
                    break
            progress(path)
    finally:
        if assoc.is_established:
            assoc.release()
    return result
