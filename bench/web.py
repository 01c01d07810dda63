"""`python -m bench.web`: DICOMweb and rendering, broker vs Orthanc's DICOMweb plugin.

Rendered-image latency with 1 and 50 concurrent clients (first render and cached), QIDO-RS study
search p95 over 10,000 studies, WADO-RS study retrieve MB/s; same data in both systems.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import typer
from pydicom import dcmread
from rich.console import Console
from rich.table import Table

from bench import data
from bench.run import _send
from bench.targets import Target
from tests.conftest import Broker, MinioServer
from tests.orthanc import Orthanc

ROOT = Path(__file__).resolve().parents[1]
DICOM_PARTS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
console = Console(width=150)
app = typer.Typer(add_completion=False)


@dataclass
class Web:
    target: Target
    base: str  # DICOMweb root
    headers: dict[str, str]


@contextmanager
def broker(work: Path) -> Iterator[Web]:
    minio = MinioServer(work / "minio").start()
    b = Broker(work / "broker", {**minio.env("bench"), "PACSBROKER_LOG_LEVEL": "WARNING"})
    try:
        b.start()
        assert b.proc is not None
        token = b.cli("token", "--user", "bench", "--role", "radiologist").stdout.strip()
        yield Web(
            Target("broker", "PACSBROKER", b.dicom_port, b.proc.pid),
            f"http://127.0.0.1:{b.http_port}/dicomweb",
            {"Authorization": f"Bearer {token}"},
        )
    finally:
        b.stop()
        minio.stop()


@contextmanager
def orthanc(work: Path) -> Iterator[Web]:
    o = Orthanc(work / "orthanc")
    try:
        o.start(
            {},
            extra={
                "DicomAlwaysAllowFind": True,
                "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            },
        )
        assert o.proc is not None
        yield Web(
            Target("orthanc", o.ae, o.dicom_port, o.proc.pid),
            f"http://127.0.0.1:{o.http_port}/dicom-web",
            {},
        )
    finally:
        o.stop()


def _pct(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100)[p - 1] if len(samples) > 1 else samples[0]


async def _timed_gets(
    web: Web, paths: list[str], concurrency: int, accept: str
) -> tuple[list[float], float, int]:
    """Latencies (ms), wall time (s) and bytes for GETs run `concurrency` at a time."""
    latencies: list[float] = []
    received = 0
    queue = list(paths)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal received
        while queue:
            path = queue.pop()
            t = time.perf_counter()
            r = await client.get(path)
            r.raise_for_status()
            latencies.append((time.perf_counter() - t) * 1000)
            received += len(r.content)

    # One client (one keep-alive connection) per simulated viewer: a shared 50-connection pool
    # cost the load generator, on the same 2 cores, about 5 ms of CPU per request. The clients
    # exist before the clock starts: each builds an SSL context (~24 ms of CPU), and 50 of them
    # built while the first requests were in flight made those requests wait for the generator.
    clients = [
        httpx.AsyncClient(base_url=web.base, headers={**web.headers, "Accept": accept}, timeout=120)
        for _ in range(concurrency)
    ]
    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        wall = time.perf_counter() - start
    finally:
        for c in clients:
            await c.aclose()
    return latencies, wall, received


def _instance_paths(folder: Path) -> list[str]:
    out = []
    for p in data.files(folder):
        ds = dcmread(p, stop_before_pixels=True)
        out.append(
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
    return out


def _wait_indexed(web: Web, study: str, count: int) -> None:
    deadline = time.time() + 900
    with httpx.Client(base_url=web.base, headers=web.headers, timeout=60) as c:
        while time.time() < deadline:
            r = c.get(f"/studies/{study}/instances", params={"limit": count + 1})
            if r.status_code == 200 and r.content and len(r.json()) >= count:
                return
            time.sleep(0.5)
    raise TimeoutError(f"{web.target.name} did not index {count} instances")


def measure(web: Web, ct: Path, many: Path, queries: int) -> dict[str, object]:
    paths = _instance_paths(ct)
    study = paths[0].split("/")[2]
    _send(web.target, ct, 2)
    _wait_indexed(web, study, len(paths))
    out: dict[str, object] = {}
    rendered = [f"{p}/rendered" for p in paths]
    first, _, _ = asyncio.run(_timed_gets(web, rendered[:100], 1, "image/jpeg"))
    again, _, _ = asyncio.run(_timed_gets(web, rendered[:100], 1, "image/jpeg"))
    out["render 1 client, first"] = first
    out["render 1 client, cached"] = again
    fresh, _, _ = asyncio.run(_timed_gets(web, rendered[100:400], 50, "image/jpeg"))
    hot, _, _ = asyncio.run(_timed_gets(web, rendered[100:400], 50, "image/jpeg"))
    out["render 50 clients, first"] = fresh
    out["render 50 clients, cached"] = hot
    _, wall, size = asyncio.run(_timed_gets(web, [f"/studies/{study}"], 1, DICOM_PARTS))
    out["wado study MB/s"] = size / wall / 1e6
    _send(web.target, many, 2)
    rnd = random.Random(3)
    heads = [dcmread(p, stop_before_pixels=True) for p in rnd.sample(data.files(many), queries)]
    last = dcmread(data.files(many)[-1], stop_before_pixels=True)
    _wait_indexed(web, str(last.StudyInstanceUID), 1)
    searches = [f"/studies?PatientID={ds.PatientID}" for ds in heads]
    qido, _, _ = asyncio.run(_timed_gets(web, searches, 1, "application/dicom+json"))
    out["qido PatientID, 10k studies"] = qido
    return out


@app.command()
def main(
    work: Path = typer.Option(ROOT / "var" / "bench", help="Data sets and scratch space"),
    studies: int = typer.Option(10_000, help="Studies indexed for the QIDO test"),
    queries: int = typer.Option(50, help="QIDO searches per system"),
) -> None:
    """Both systems, same data, same client; prints p50/p95 and ratios (broker / Orthanc)."""
    ct = data.one_study(work, "ct500", 500, 512)
    many = data.many_studies(work, studies)
    results: dict[str, dict[str, object]] = {}
    for name, start in (("broker", broker), ("orthanc", orthanc)):
        with tempfile.TemporaryDirectory(dir=work) as scratch, start(Path(scratch)) as web:
            console.log(f"{name}: loading and measuring")
            results[name] = measure(web, ct, many, queries)
    table = Table(title="DICOMweb, broker vs Orthanc DICOMweb plugin (ms unless stated)")
    for col in ("measure", "broker p50", "Orthanc p50", "broker p95", "Orthanc p95", "p95 ratio"):
        table.add_column(col, justify="right")
    for key, b in results["broker"].items():
        o = results["orthanc"][key]
        if isinstance(b, float) and isinstance(o, float):
            table.add_row(key, f"{b:.1f}", f"{o:.1f}", "", "", f"{b / o:.2f} (higher is better)")
            continue
        assert isinstance(b, list) and isinstance(o, list)
        table.add_row(
            key,
            f"{_pct(b, 50):.1f}",
            f"{_pct(o, 50):.1f}",
            f"{_pct(b, 95):.1f}",
            f"{_pct(o, 95):.1f}",
            f"{_pct(b, 95) / _pct(o, 95):.2f}",
        )
    console.print(table)
    out = work / f"web-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results))
    console.print(f"raw figures: {out}")


if __name__ == "__main__":
    app()
