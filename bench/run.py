"""`python -m bench.run`: ingest throughput, C-FIND latency and memory, broker vs Orthanc."""

from __future__ import annotations

import json
import platform
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer
from pydicom import dcmread
from rich.console import Console
from rich.table import Table

from bench import data
from bench.targets import PeakRss, Target, broker, orthanc
from tests.dcmtk import ENV

ROOT = Path(__file__).resolve().parents[1]
Starter = Callable[[Path], AbstractContextManager[Target]]
TARGETS: dict[str, Starter] = {"broker": broker, "orthanc": orthanc}
console = Console(width=150)
app = typer.Typer(add_completion=False)


@dataclass
class Ingest:
    target: str
    dataset: str
    associations: int
    instances: int
    megabytes: float
    sent_s: float
    findable_s: float
    peak_rss_mb: float
    peak_pss_mb: float

    @property
    def per_s(self) -> float:
        return self.instances / self.findable_s

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.findable_s


@dataclass
class Latency:
    target: str
    kind: str
    samples_ms: list[float] = field(default_factory=list)
    matches: int = 0

    def pct(self, p: int) -> float:
        return statistics.quantiles(self.samples_ms, n=100)[p - 1]


def _chunks(items: list[Path], n: int) -> list[list[Path]]:
    return [items[i::n] for i in range(n)]


def _send(t: Target, folder: Path, associations: int) -> float:
    """storescu over `associations` parallel associations; seconds until all of them finished."""
    names = [p.name for p in data.files(folder)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", t.ae, "127.0.0.1", str(t.port), *chunk],
            cwd=folder,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in _chunks([Path(n) for n in names], associations)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu to {t.name} failed: {err.decode()[-2000:]}")
    return time.perf_counter() - start


def ingest(start: Starter, work: Path, folder: Path, associations: int) -> Ingest:
    files = data.files(folder)
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    with start(work) as t, PeakRss(t) as rss:
        t0 = time.perf_counter()
        sent = _send(t, folder, associations)
        deadline = time.time() + 900
        while t.instances_in(study) < len(files):
            if time.time() > deadline:
                raise TimeoutError(f"{t.name} never indexed all of {folder.name}")
            time.sleep(0.05)
        findable = time.perf_counter() - t0
        return Ingest(
            t.name,
            folder.name,
            associations,
            len(files),
            sum(f.stat().st_size for f in files) / 1e6,
            sent,
            findable,
            rss.rss,
            rss.pss,
        )


def _queries(folder: Path, per_kind: int) -> Iterator[tuple[str, list[str]]]:
    """Typical worklist-style study queries, drawn reproducibly from the loaded studies."""
    rnd = random.Random(7)
    heads = [dcmread(p, stop_before_pixels=True) for p in rnd.sample(data.files(folder), per_kind)]
    for ds in heads:
        yield "PatientID", [f"PatientID={ds.PatientID}"]
        yield "PatientName^Given*", [f"PatientName={str(ds.PatientName)[:-1]}*"]
        day = ds.StudyDate
        yield "StudyDate week", [f"StudyDate={day}-{day[:6]}{min(int(day[6:]) + 6, 28):02d}"]
        yield "AccessionNumber", [f"AccessionNumber={ds.AccessionNumber}"]


RETURN_KEYS = [
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
]


def _find(t: Target, keys: list[str]) -> tuple[float, int]:
    args = ["findscu", "-S", "-aet", "BENCH", "-aec", t.ae, "-k", "QueryRetrieveLevel=STUDY"]
    for k in RETURN_KEYS + keys:
        args += ["-k", k]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        r = subprocess.run(
            [*args, "-X", "-od", out, "127.0.0.1", str(t.port)],
            env=ENV,
            capture_output=True,
            timeout=120,
        )
        elapsed = (time.perf_counter() - start) * 1000
        if r.returncode != 0:
            raise RuntimeError(f"findscu to {t.name}: {r.stderr.decode()[-2000:]}")
        return elapsed, len(list(Path(out).iterdir()))


def latency(start: Starter, work: Path, folder: Path, per_kind: int) -> list[Latency]:
    total = len(data.files(folder))
    with start(work) as t:
        _send(t, folder, 2)
        deadline = time.time() + 900
        while _find(t, ["StudyDate=19000101-"])[1] < total:
            if time.time() > deadline:
                raise TimeoutError(f"{t.name} never indexed {total} studies")
            time.sleep(1)
        full_ms, _ = _find(t, ["StudyDate=19000101-"])
        out: dict[str, Latency] = {}
        echo = out.setdefault("C-ECHO (baseline)", Latency(t.name, "C-ECHO (baseline)"))
        for _ in range(per_kind):
            s = time.perf_counter()
            subprocess.run(
                ["echoscu", "-aet", "BENCH", "-aec", t.ae, "127.0.0.1", str(t.port)],
                env=ENV,
                check=True,
                capture_output=True,
            )
            echo.samples_ms.append((time.perf_counter() - s) * 1000)
        for kind, keys in _queries(folder, per_kind):
            ms, n = _find(t, keys)
            lat = out.setdefault(kind, Latency(t.name, kind))
            lat.samples_ms.append(ms)
            lat.matches += n
        everything = Latency(t.name, f"all {total} studies", [full_ms], total)
        return [*out.values(), everything]


def _machine() -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    orthanc_version = subprocess.run(
        ["/usr/sbin/Orthanc", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    return {
        "cpu": cpu,
        "cores": str(len(list(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")))),
        "memory_gb": f"{int(mem) / 1024 / 1024:.1f}",
        "python": platform.python_version(),
        "orthanc": orthanc_version,
        "kernel": platform.release(),
    }


def _ingest_table(rows: list[Ingest]) -> Table:
    table = Table(title="Ingest: first byte sent until C-FIND finds every instance")
    for col in (
        "data set",
        "assoc",
        "broker inst/s",
        "Orthanc inst/s",
        "ratio",
        "broker MB/s",
        "Orthanc MB/s",
        "broker sent inst/s",
        "broker peak RSS/PSS MB",
        "Orthanc peak RSS MB",
    ):
        table.add_column(col, justify="right")
    by = {(r.target, r.dataset, r.associations): r for r in rows}
    for (name, ds, n), b in by.items():
        if name != "broker" or ("orthanc", ds, n) not in by:
            continue
        o = by["orthanc", ds, n]
        table.add_row(
            ds,
            str(n),
            f"{b.per_s:.0f}",
            f"{o.per_s:.0f}",
            f"{b.per_s / o.per_s:.2f}",
            f"{b.mb_per_s:.1f}",
            f"{o.mb_per_s:.1f}",
            f"{b.instances / b.sent_s:.0f}",
            f"{b.peak_rss_mb:.0f}/{b.peak_pss_mb:.0f}",
            f"{o.peak_rss_mb:.0f}",
        )
    return table


def _latency_table(rows: list[Latency]) -> Table:
    table = Table(title="C-FIND STUDY level, one findscu process per query (ms)")
    for col in (
        "query",
        "n",
        "matches",
        "broker p50",
        "Orthanc p50",
        "broker p95",
        "Orthanc p95",
        "p95 ratio",
    ):
        table.add_column(col, justify="right")
    by = {(r.target, r.kind): r for r in rows}
    for (name, kind), b in by.items():
        if name != "broker" or ("orthanc", kind) not in by:
            continue
        o = by["orthanc", kind]
        if len(b.samples_ms) < 2:
            table.add_row(
                kind,
                "1",
                str(b.matches),
                f"{b.samples_ms[0]:.0f}",
                f"{o.samples_ms[0]:.0f}",
                "",
                "",
                "",
            )
            continue
        table.add_row(
            kind,
            str(len(b.samples_ms)),
            f"{b.matches}/{o.matches}",
            f"{b.pct(50):.1f}",
            f"{o.pct(50):.1f}",
            f"{b.pct(95):.1f}",
            f"{o.pct(95):.1f}",
            f"{b.pct(95) / o.pct(95):.2f}",
        )
    return table


@app.command()
def main(
    work: Path = typer.Option(ROOT / "var" / "bench", help="Data sets and scratch space"),
    only: str = typer.Option("", help="Comma list of scenarios: ct1,ct4,small1,small4,find"),
    studies: int = typer.Option(10_000, help="Studies indexed for the C-FIND latency test"),
    queries: int = typer.Option(50, help="Queries of each kind per target"),
) -> None:
    """Run every scenario on both systems and print ratios (broker / Orthanc)."""
    wanted = set(only.split(",")) if only else {"ct1", "ct4", "small1", "small4", "find"}
    with console.status("writing data sets (first run only)"):
        ct = data.one_study(work, "ct500", 500, 512)
        small = data.one_study(work, "small2000", 2000, 64)
        many = data.many_studies(work, studies) if "find" in wanted else None
    plan = [
        (k, f, n)
        for k, f, n in (("ct1", ct, 1), ("ct4", ct, 4), ("small1", small, 1), ("small4", small, 4))
        if k in wanted
    ]
    ingests: list[Ingest] = []
    latencies: list[Latency] = []
    for key, folder, n in plan:
        for name, start in TARGETS.items():
            with tempfile.TemporaryDirectory(dir=work) as scratch:
                console.log(f"{key}: {folder.name} over {n} association(s) into {name}")
                ingests.append(ingest(start, Path(scratch), folder, n))
                console.log(
                    f"  {ingests[-1].per_s:.0f} inst/s, peak {ingests[-1].peak_rss_mb:.0f} MB"
                )
    if many is not None:
        for name, start in TARGETS.items():
            with tempfile.TemporaryDirectory(dir=work) as scratch:
                console.log(
                    f"find: {studies} studies into {name}, then {queries} queries of each kind"
                )
                latencies += latency(start, Path(scratch), many, queries)
    if ingests:
        console.print(_ingest_table(ingests))
    if latencies:
        console.print(_latency_table(latencies))
    result = work / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result.write_text(
        json.dumps(
            {
                "machine": _machine(),
                "ingest": [
                    {**asdict(r), "per_s": r.per_s, "mb_per_s": r.mb_per_s} for r in ingests
                ],
                "latency": [asdict(r) for r in latencies],
            },
            indent=1,
        )
    )
    console.print(f"raw figures: {result}")


if __name__ == "__main__":
    app()
