"""Hot folders: devices drop files (plus a sidecar JSON, or a name matching a pattern) and the
broker DICOM-izes them through the spool, moving each file to done/ or to error/ with a reason.

A file is taken only once its size and modification time have stayed the same for the folder's
`settle` seconds, and never while its name marks it as partial (dot files, .part, .tmp), so a
copy in progress is never read half-written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from broker.dicomize.batch import Upload
from broker.dicomize.common import Device, DicomizeError
from broker.dicomize.submit import Request, submit
from storage.archive import Archive
from storage.intake import Intake
from storage.settings import HotFolder

log = logging.getLogger("pacsbroker.hotfolder")

PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")
SIDECAR = ".json"
DONE, ERROR = "done", "error"
SOURCE_AE = "HOTFOLDER"


@dataclass(frozen=True)
class Ready:
    path: Path
    sidecar: Path | None
    request: Request


class Refused(Exception):
    """A file cannot be taken: it goes to error/ with this text as its reason."""


def _partial(name: str) -> bool:
    return name.startswith((".", "~")) or name.lower().endswith(PARTIAL_SUFFIXES)


class Watcher:
    """One folder: what is ready, what it asks for, and where it goes afterwards."""

    def __init__(self, folder: HotFolder) -> None:
        self.folder = folder
        self.root = folder.path
        self.pattern = re.compile(folder.pattern) if folder.pattern else None
        self.device = Device(folder.manufacturer, folder.model, folder.station)
        self._seen: dict[Path, tuple[int, int]] = {}
        for sub in (DONE, ERROR):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _settled(self, path: Path, now: float) -> bool:
        """Unchanged since the last look, and not touched for `settle` seconds."""
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        before = self._seen.get(path)
        self._seen[path] = key
        return before == key and now - st.st_mtime >= self.folder.settle

    def _request(self, path: Path, sidecar: Path | None) -> Request:
        fields: dict[str, Any] = {}
        if sidecar is not None:
            try:
                fields = json.loads(sidecar.read_text("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise Refused(f"sidecar {sidecar.name} is not valid JSON: {e}") from None
            if not isinstance(fields, dict):
                raise Refused(f"sidecar {sidecar.name} must hold a JSON object")
        elif self.pattern is not None:
            m = self.pattern.fullmatch(path.name)
            if m is None:
                raise Refused(
                    f"no sidecar {path.name}{SIDECAR} and the name does not match "
                    f"the folder's pattern {self.folder.pattern!r}"
                )
            fields = {k: v for k, v in m.groupdict().items() if v}
        patient = str(fields.get("patient", "")).strip()
        if not patient:
            raise Refused("no patient identifier (sidecar key 'patient' or pattern group)")
        return Request(
            patient_id=patient,
            system=str(fields.get("system", self.folder.system)),
            accession=str(fields.get("accession", "")),
            title=str(fields.get("title", "")),
            device=self.device,
        )

    def scan(self) -> tuple[list[Ready], list[tuple[Path, Path | None, str]]]:
        """Files ready to take, and files to refuse with their reason."""
        now = time.time()
        ready: list[Ready] = []
        refused: list[tuple[Path, Path | None, str]] = []
        present = set()
        for path in sorted(self.root.iterdir()):
            name = path.name
            if not path.is_file() or _partial(name) or name.endswith(SIDECAR):
                continue
            present.add(path)
            sidecar: Path | None = path.with_name(name + SIDECAR)
            if sidecar is not None and sidecar.is_file():
                present.add(sidecar)
            else:
                sidecar = None
            if not self._settled(path, now) or (sidecar and not self._settled(sidecar, now)):
                continue
            waiting = now - path.stat().st_mtime < self.folder.sidecar_wait
            if sidecar is None and self.pattern is None and waiting:
                continue  # its sidecar may still be on its way
            try:
                ready.append(Ready(path, sidecar, self._request(path, sidecar)))
            except Refused as e:
                refused.append((path, sidecar, str(e)))
        self._seen = {p: k for p, k in self._seen.items() if p in present}
        return ready, refused

    def _move(self, path: Path, sub: str) -> Path:
        target_dir = self.root / sub
        if sub == DONE:
            target_dir = target_dir / dt.date.today().strftime("%Y%m%d")
            target_dir.mkdir(exist_ok=True)
        target = target_dir / path.name
        n = 1
        while target.exists():
            target = target_dir / f"{path.stem}.{n}{path.suffix}"
            n += 1
        shutil.move(path, target)
        self._seen.pop(path, None)
        return target

    def done(self, item: Ready) -> None:
        self._move(item.path, DONE)
        if item.sidecar is not None:
            self._move(item.sidecar, DONE)

    def fail(self, path: Path, sidecar: Path | None, reason: str) -> None:
        moved = self._move(path, ERROR)
        moved.with_name(moved.name + ".reason.txt").write_text(reason + "\n", "utf-8")
        if sidecar is not None:
            self._move(sidecar, ERROR)
        log.warning("hot folder %s: %s refused: %s", self.root, path.name, reason)


class HotFolders:
    """Polls every configured folder and files what is ready, one batch per patient request."""

    def __init__(self, archive: Archive, intake: Intake, folders: list[HotFolder]) -> None:
        self.archive = archive
        self.intake = intake
        self.watchers = [Watcher(f) for f in folders]
        self._stop = threading.Event()

    def poll(self) -> int:
        """One pass over all folders; returns how many files were filed. A folder that fails
        (unreadable, removed) is logged and skipped, so it never stops the others."""
        filed = 0
        for w in self.watchers:
            try:
                filed += self._poll_folder(w)
            except Exception:
                log.exception("hot folder %s: pass failed", w.root)
        return filed

    def _poll_folder(self, w: Watcher) -> int:
        ready, refused = w.scan()
        for path, sidecar, reason in refused:
            w.fail(path, sidecar, reason)
        batches: dict[Request, list[Ready]] = {}
        for item in ready:
            batches.setdefault(item.request, []).append(item)
        return sum(self._file(w, items) for items in batches.values())

    def _file(self, w: Watcher, items: list[Ready]) -> int:
        """Files of one request become one series per modality; when one of them is refused,
        the others are filed one by one so a bad file does not hold back the good ones. An
        unexpected error is that file's refusal too: left in place it would fail every pass."""
        try:
            objects = self._submit(w, items)
        except DicomizeError as e:
            return self._refused(w, items, str(e))
        except OSError as e:
            log.error("hot folder %s: %d files left in place: %s", w.root, len(items), e)
            return 0
        except Exception as e:
            log.exception("hot folder %s: unexpected error filing %d files", w.root, len(items))
            return self._refused(w, items, f"unexpected error: {type(e).__name__}: {e}")
        for item, ds in zip(items, objects, strict=True):
            w.done(item)
            log.info(
                "hot folder %s: %s filed as %s for patient %s",
                w.root,
                item.path.name,
                ds.SOPInstanceUID,
                item.request.patient_id,
            )
        return len(items)

    def _refused(self, w: Watcher, items: list[Ready], reason: str) -> int:
        if len(items) > 1:
            return sum(self._file(w, [i]) for i in items)
        w.fail(items[0].path, items[0].sidecar, reason)
        return 0

    def _submit(self, w: Watcher, items: list[Ready]) -> list[Dataset]:
        uploads = [Upload(i.path.name, i.path.read_bytes()) for i in items]
        # the same files give the same UIDs: refiling after a crash makes no duplicates
        digest = hashlib.sha256(str(w.root).encode())
        for u in uploads:
            digest.update(u.name.encode() + b"\0" + hashlib.sha256(u.data).digest())
        return submit(
            self.archive,
            self.intake,
            uploads,
            dataclasses.replace(items[0].request, batch=digest.hexdigest()),
            source=SOURCE_AE,
            address=str(w.root),
        )

    def run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
