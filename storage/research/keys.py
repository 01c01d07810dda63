"""Project keys: one secret per project, in files on the clinical side, readable by the owner.

The research database and bucket never see them; without a project's key its pseudonyms
cannot be traced back (deleting the key file makes the project's data anonymous for good).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from storage.deid.pseudonyms import ProjectKey


class KeyMissing(LookupError):
    """The project has no key here: not created on this deployment, or destroyed."""


class KeyStore:
    """`DATA_DIR/keys/research/<project>.key`, mode 0600 in a 0700 directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "keys" / "research"

    def _path(self, slug: str) -> Path:
        return self.root / f"{slug}.key"

    def create(self, slug: str) -> ProjectKey:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        secret = secrets.token_bytes(32)
        fd = os.open(self._path(slug), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        return ProjectKey(secret)

    def load(self, slug: str) -> ProjectKey:
        try:
            return ProjectKey(self._path(slug).read_bytes())
        except FileNotFoundError:
            raise KeyMissing(f"no key for project {slug!r} under {self.root}") from None

    def exists(self, slug: str) -> bool:
        return self._path(slug).is_file()
