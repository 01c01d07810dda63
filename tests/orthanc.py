"""Orthanc (the Debian package) as a real legacy PACS peer, driven through its REST API."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

ORTHANC = Path("/usr/sbin/Orthanc")


class Orthanc:
    def __init__(self, root: Path, ae: str = "ORTHANC") -> None:
        self.root = root
        self.ae = ae
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=120)

    def config(self, modalities: dict[str, tuple[str, str, int]]) -> dict[str, Any]:
        return {
            "Name": "pacsbroker-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "StorageCompression": False,
            "Plugins": [],
            "DicomModalities": {k: list(v) for k, v in modalities.items()},
        }

    def start(
        self, modalities: dict[str, tuple[str, str, int]], extra: dict[str, Any] | None = None
    ) -> Orthanc:
        if not ORTHANC.exists():
            raise RuntimeError("Orthanc missing: deploy/install-system.sh installs it")
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps({**self.config(modalities), **(extra or {})}, indent=1))
        self.proc = subprocess.Popen(
            [str(ORTHANC), str(cfg)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=open(self.root / "orthanc.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "orthanc.log").read_text()[-3000:])
            try:
                if self.http.get("/system").is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        self.http.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def upload(self, path: Path) -> dict[str, Any]:
        return self.upload_bytes(path.read_bytes())

    def upload_bytes(self, data: bytes) -> dict[str, Any]:
        r = self.http.post("/instances", content=data)
        r.raise_for_status()
        return dict(r.json())

    def post(self, url: str, body: Any) -> Any:
        r = self.http.post(url, json=body)
        assert r.is_success, f"{url}: {r.status_code} {r.text}"
        return r.json()

    def get(self, url: str) -> Any:
        r = self.http.get(url)
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.content
