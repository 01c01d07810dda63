"""`python -m bench.migrate`: legacy PACS migration from Orthanc (our job pulling with C-MOVE,
counting and verifying every study) against Orthanc pushing the same studies by C-STORE."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table

from bench import data
from bench.run import _machine
from storage import jobs
from storage.archive import Archive
from storage.stats import archive_counts
from tests.conftest import Broker, MinioServer
from tests.orthanc import Orthanc

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=150)
app = typer.Typer(add_completion=False)


@dataclass
class Run:
    how: str
    associations: int
    studies: int
    instances: int
    seconds: float  # from the request until the last instance is indexed (and verified)
    job_seconds: float = 0.0  # the job's own run, without waiting for a job runner to take it

    @property
    def studies_per_s(self) -> float:
        return self.studies / self.seconds

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds


@contextmanager
def _broker(work: Path, minio: MinioServer, orthanc: Orthanc) -> Iterator[Broker]:
    """A fresh broker (own data dir and bucket) that Orthanc knows as the modality `broker`."""
    peers = [{"ae": orthanc.ae, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    env = {
        **minio.env(work.name.lower().replace("_", "-")),
        "PACSBROKER_PEERS": json.dumps(peers),
        "PACSBROKER_LOG_LEVEL": "WARNING",
    }
    b = Broker(work / "broker", env)
    try:
        b.start()
        modality = {"AET": "PACSBROKER", "Host": "127.0.0.1", "Port": b.dicom_port}
        orthanc.http.put("/modalities/broker", json=modality).raise_for_status()
        yield b
    finally:
        b.stop()


def _indexed(b: Broker) -> int:
    archive = Archive(b.settings())
    try:
        with archive.sessions() as s:
            return int(archive_counts(s)["instances"])
    finally:
        archive.close()


def _until(done: Callable[[], bool], what: str, timeout: float = 1800) -> None:
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def pull(b: Broker, orthanc: Orthanc, studies: int, instances: int, associations: int) -> Run:
    """Our migration job: C-FIND, C-MOVE to the broker, wait for the index, verify per series."""
    token = b.cli("token", "--user", "bench", "--role", "radiology-admin").stdout.strip()
    body = {"source_ae": orthanc.ae, "max_associations": associations}
    t0 = time.perf_counter()
    r = httpx.post(
        f"http://127.0.0.1:{b.http_port}/api/v1/admin/migrations",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    r.raise_for_status()
    job_id = int(r.json()["id"])
    archive = Archive(b.settings())
    try:

        def finished() -> bool:
            with archive.sessions() as s:
                return jobs.get(s, job_id).state not in jobs.ACTIVE

        _until(finished, f"migration job {job_id}")
        seconds = time.perf_counter() - t0
        with archive.sessions() as s:
            job = jobs.as_dict(jobs.get(s, job_id))
    finally:
        archive.close()
    if job["result"].get("verified") != studies or _indexed(b) != instances:
        raise RuntimeError(f"migration incomplete: {job}")
    ran = dt.datetime.fromisoformat(job["finished_at"]) - dt.datetime.fromisoformat(
        job["started_at"]
    )
    how = "pull (migration job, C-MOVE)"
    return Run(how, associations, studies, instances, seconds, ran.total_seconds())


def push(b: Broker, orthanc: Orthanc, studies: int, instances: int) -> Run:
    """Orthanc sends every study to the broker over one association (its REST store job)."""
    t0 = time.perf_counter()
    orthanc.post(
        "/modalities/broker/store", {"Resources": orthanc.get("/studies"), "Synchronous": True}
    )
    _until(lambda: _indexed(b) >= instances, "Orthanc's C-STORE into the broker")
    return Run("push (Orthanc C-STORE)", 1, studies, instances, time.perf_counter() - t0)


def _table(runs: list[Run]) -> Table:
    table = Table(title="Migration from Orthanc: first request until every instance is indexed")
    cols = ("how", "assoc", "studies", "instances", "s", "job s", "studies/s", "inst/s", "ratio")
    for col in cols:
        table.add_column(col, justify="right")
    base = next(r for r in runs if r.how.startswith("push"))
    for r in runs:
        table.add_row(
            r.how,
            str(r.associations),
            str(r.studies),
            str(r.instances),
            f"{r.seconds:.1f}",
            f"{r.job_seconds:.1f}" if r.job_seconds else "",
            f"{r.studies_per_s:.2f}",
            f"{r.instances_per_s:.0f}",
            f"{r.instances_per_s / base.instances_per_s:.2f}",
        )
    return table


@app.command()
def main(
    work: Path = typer.Option(ROOT / "var" / "bench", help="Data sets and scratch space"),
    studies: int = typer.Option(50, help="Studies in the legacy PACS"),
    per_study: int = typer.Option(20, help="CT images per study"),
    size: int = typer.Option(256, help="Rows and columns of each image"),
    associations: str = typer.Option("1,2", help="Comma list: migration runs with N associations"),
) -> None:
    """Fill Orthanc once, then migrate it into fresh brokers and let it push into another."""
    work.mkdir(parents=True, exist_ok=True)
    with console.status("writing the data set (first run only)"):
        folder = data.studies(work, studies, per_study, size)
    files = data.files(folder)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        root = Path(scratch)
        minio = MinioServer(root / "minio")
        minio.start()
        orthanc = Orthanc(root / "orthanc").start({}, {"DicomAlwaysAllowFind": True})
        try:
            with console.status(f"loading {len(files)} files into Orthanc"):
                for p in files:
                    orthanc.upload(p)
            for n in (int(x) for x in associations.split(",")):
                with _broker(root / f"pull{n}", minio, orthanc) as b:
                    console.log(f"migration job pulling with {n} association(s)")
                    runs.append(pull(b, orthanc, studies, len(files), n))
            with _broker(root / "push", minio, orthanc) as b:
                console.log("Orthanc pushing by C-STORE")
                runs.append(push(b, orthanc, studies, len(files)))
        finally:
            orthanc.stop()
            minio.stop()
    console.print(_table(runs))
    result = work / f"migrate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result.write_text(
        json.dumps(
            {
                "machine": _machine(),
                "data": {"studies": studies, "per_study": per_study, "size": size},
                "runs": [
                    {**asdict(r), "studies_per_s": r.studies_per_s, "inst_per_s": r.instances_per_s}
                    for r in runs
                ],
            },
            indent=1,
        )
    )
    console.print(f"raw figures: {result}")


if __name__ == "__main__":
    app()
