"""Send a folder of DICOM files to a Storage SCP, without decoding them.

An SCP accepts one transfer syntax per presentation context, so every (SOP class, syntax)
pair present gets its own context; a folder needing more than an association's 128 contexts
is sent over several associations, one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association

from broker.dimse.contexts import sub_operation_contexts

MAX_CONTEXTS = 128


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


def association_groups(
    files: list[tuple[Path, str, str]],
) -> list[list[tuple[Path, str, str]]]:
    """Files split so that no association needs more than 128 contexts: one per (SOP class,
    syntax) pair plus an uncompressed fallback per class; a class is never split."""
    by_class: dict[str, list[tuple[Path, str, str]]] = {}
    for f in files:
        by_class.setdefault(f[1], []).append(f)
    groups: list[list[tuple[Path, str, str]]] = []
    used = MAX_CONTEXTS
    for members in by_class.values():
        need = len({ts for _, _, ts in members}) + 1
        if used + need > MAX_CONTEXTS:
            groups.append([])
            used = 0
        groups[-1].extend(members)
        used += need
    return groups


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
    for group in association_groups(files):
        ae = AE(calling_ae)
        ae.maximum_pdu_size = 0
        ae.requested_contexts = sub_operation_contexts({(c, ts) for _, c, ts in group})
        assoc = ae.associate(host, port, ae_title=called_ae)
        if not assoc.is_established:
            raise ConnectionError(f"association with {called_ae}@{host}:{port} was not accepted")
        try:
            _send_all(assoc, group, result, progress)
        finally:
            if assoc.is_established:
                assoc.release()
    return result


def _send_all(
    assoc: Association,
    files: list[tuple[Path, str, str]],
    result: LoadResult,
    progress: Callable[[Path], None],
) -> None:
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
                return
        progress(path)
