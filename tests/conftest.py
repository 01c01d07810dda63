"""Fixtures that start real processes: the broker, MinIO, PostgreSQL, DCMTK peers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_dicom" / "set"
PACSBROKER = ROOT / ".venv" / "bin" / "pacsbroker"
MINIO = (
    Path(os.environ.get("PACSBROKER_CACHE", Path.home() / ".cache/pacsbroker"))
    / "minio-v0.0.0-20260212201848-7aac2a2c5b7c"
    / "minio"
)
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/nonexistent"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


class Broker:
    """`pacsbroker serve` as a real process group, configured through PACSBROKER_* only."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.hl7_port = free_port()
        self.env = {
            **os.environ,
            "PACSBROKER_DATA_DIR": str(data_dir),
            "PACSBROKER_DICOM_PORT": str(self.dicom_port),
            "PACSBROKER_HTTP_PORT": str(self.http_port),
            "PACSBROKER_HL7_PORT": str(self.hl7_port),
            "PACSBROKER_BIND_HOST": "127.0.0.1",
            "TCP_NODELAY": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "broker.log"

    def start(self) -> Broker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(PACSBROKER), "serve"],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).is_success:
                    wait_port(self.dicom_port)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"broker did not start: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PACSBROKER), *args], env=self.env, capture_output=True, text=True, timeout=120
        )

    def settings(self) -> Any:
        from unittest import mock

        from storage.settings import Settings

        with mock.patch.dict(os.environ, self.env, clear=True):
            return Settings()


@pytest.fixture
def broker_factory(tmp_path: Path, db_url: str) -> Iterator[Any]:
    started: list[Broker] = []

    def make(env: dict[str, str] | None = None, name: str = "broker") -> Broker:
        b = Broker(tmp_path / name, {"PACSBROKER_DATABASE_URL": db_url, **(env or {})})
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


class MinioServer:
    def __init__(self, root: Path, drives: int = 1) -> None:
        self.root = root
        self.port = free_port()
        self.drives = [root / f"d{i}" for i in range(1, drives + 1)]
        self.access, self.secret = "pbtest", "pbtest-secret-123456"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MinioServer:
        if not MINIO.exists():
            raise RuntimeError(f"{MINIO} missing: deploy/install-minio.sh must run first")
        for d in self.drives:
            d.mkdir(parents=True, exist_ok=True)
        spec = (
            str(self.drives[0])
            if len(self.drives) == 1
            else f"{self.root}/d{{1...{len(self.drives)}}}"
        )
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access,
            "MINIO_ROOT_PASSWORD": self.secret,
            "MINIO_CI_CD": "1",
            "MINIO_BROWSER": "off",
        }
        self.proc = subprocess.Popen(
            [str(MINIO), "server", "--quiet", "--address", f"127.0.0.1:{self.port}", spec],
            env=env,
            stdout=open(self.root / "minio.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/minio/health/ready", timeout=1)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("MinIO did not become ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def env(self, bucket: str = "pacs-test") -> dict[str, str]:
        return {
            "PACSBROKER_S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "PACSBROKER_S3_ACCESS_KEY": self.access,
            "PACSBROKER_S3_SECRET_KEY": self.secret,
            "PACSBROKER_S3_BUCKET": bucket,
        }


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[MinioServer]:
    m = MinioServer(tmp_path / "minio").start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback, run as the postgres system user."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError("PostgreSQL server binaries missing: deploy/install-system.sh")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pacsbroker-pg-"))
    root.chmod(0o755)
    data = root / "data"
    port = free_port()
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_pg,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(root / "pg.log"),
            "-o",
            f"-p {port} -k {root} -h 127.0.0.1 -F",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE pacs",
        ],
        check=True,
        capture_output=True,
    )
    yield f"postgresql://postgres@127.0.0.1:{port}/pacs"
    subprocess.run(
        [*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
        capture_output=True,
    )
    shutil.rmtree(root, ignore_errors=True)


_pg_db_counter = iter(range(1, 10_000))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The index, query, job, retention, PAS and core DICOM tests run on both databases; feature
    tests marked `sqlite_only` sit above the same index code and run once, to keep CI short."""
    once = [i for i in items if i.get_closest_marker("sqlite_only") and "[postgresql" in i.nodeid]
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = [i for i in items if i not in once]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    base: str = request.getfixturevalue("postgres_url")
    name = f"t{next(_pg_db_counter)}_{os.getpid()}"
    host_port = base.split("@")[1].split("/")[0]
    host, port = host_port.split(":")
    subprocess.run(
        ["psql", "-h", host, "-p", port, "-U", "postgres", "-c", f"CREATE DATABASE {name}"],
        check=True,
        capture_output=True,
    )
    return base.rsplit("/", 1)[0] + "/" + name
