"""Object stores with one interface: MinIO/S3 (the central archive) and a local filesystem."""

from __future__ import annotations

import io
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from minio import Minio
from minio.error import S3Error


class ObjectStoreError(RuntimeError):
    """The store could not be reached or refused the operation."""


class ObjectNotFound(KeyError):
    """No object under that key."""


class ObjectStore(Protocol):
    name: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str = "") -> Iterator[str]: ...

    def check(self) -> None: ...


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe object key {key!r}")
    return key


class LocalObjectStore:
    """Files under a directory; a put is durable (temp file, fsync, rename, directory fsync)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"file:{root}"
        root.mkdir(parents=True, exist_ok=True)
        self._tmp = root / ".tmp"
        self._tmp.mkdir(exist_ok=True)
        self._dir_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def put(self, key: str, data: bytes) -> None:
        final = self._path(key)
        tmp = self._tmp / uuid.uuid4().hex
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str = "") -> Iterator[str]:
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and not rel.startswith(".tmp/") and rel.startswith(prefix):
                yield rel

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise ObjectStoreError(f"{self.root} is not writable")


class S3ObjectStore:
    """A bucket on MinIO (or any S3 endpoint) through the minio client."""

    def __init__(
        self, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool
    ) -> None:
        import urllib3

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=30.0),
            maxsize=16,
            retries=urllib3.Retry(total=1, backoff_factor=0.1),
        )
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http
        )
        self.bucket = bucket
        self.name = f"s3:{endpoint}/{bucket}"
        self._ready = False

    def _ensure_bucket(self) -> None:
        if self._ready:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise ObjectStoreError(str(e)) from e
        except Exception as e:
            raise ObjectStoreError(f"{self.name}: {e}") from e
        self._ready = True

    def put(self, key: str, data: bytes) -> None:
        key = _safe_key(key)  # an unsafe key is a refusal (ValueError), never an outage
        self._ensure_bucket()
        try:
            self.client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type="application/dicom",
            )
        except Exception as e:
            raise ObjectStoreError(f"{self.name}: put {key}: {e}") from e

    def get(self, key: str) -> bytes:
        self._ensure_bucket()
        try:
            resp = self.client.get_object(self.bucket, _safe_key(key))
        except S3Error as e:
            if e.code == "NoSuchKey":
                raise ObjectNotFound(key) from None
            raise ObjectStoreError(f"{self.name}: get {key}: {e}") from e
        except Exception as e:
            raise ObjectStoreError(f"{self.name}: get {key}: {e}") from e
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def exists(self, key: str) -> bool:
        self._ensure_bucket()
        try:
            self.client.stat_object(self.bucket, _safe_key(key))
            return True
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise ObjectStoreError(str(e)) from e

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        try:
            self.client.remove_object(self.bucket, _safe_key(key))
        except Exception as e:
            raise ObjectStoreError(f"{self.name}: delete {key}: {e}") from e

    def keys(self, prefix: str = "") -> Iterator[str]:
        self._ensure_bucket()
        for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if obj.object_name:
                yield obj.object_name

    def check(self) -> None:
        self._ready = False
        self._ensure_bucket()
