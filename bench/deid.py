"""`python -m bench.deid`: our de-identification (PS3.15 Annex E with project options, keyed
pseudonyms and UIDs) against dicognito on the same files, read and written the same way."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import typer
from pydicom import dcmread
from pydicom.dataset import Dataset
from rich.console import Console
from rich.table import Table

from bench import data
from bench.run import _machine
from storage.deid.deidentify import Deidentifier
from storage.deid.profile import DEFAULT_OPTIONS
from storage.deid.pseudonyms import ProjectKey
from storage.research.export import encode

console = Console(width=120)
app = typer.Typer(add_completion=False)


def _dicognito() -> Callable[[Dataset], bytes]:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def run(ds: Dataset) -> bytes:
        anonymizer.anonymize(ds)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    return run


def _ours() -> Callable[[Dataset], bytes]:
    deid = Deidentifier(ProjectKey(os.urandom(32)), DEFAULT_OPTIONS, "research:bench")
    return lambda ds: encode(deid(ds))


def _rate(files: list[bytes], tool: Callable[[Dataset], bytes], rounds: int) -> float:
    """Best instances/s over `rounds` passes: parse, de-identify, encode, all in memory."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for raw in files:
            tool(dcmread(BytesIO(raw)))
        best = max(best, len(files) / (time.perf_counter() - start))
    return best


@app.command()
def main(studies: int = 20, per_study: int = 25, size: int = 256, rounds: int = 3) -> None:
    """Instances per second of both tools on the same CT series, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = data.studies(Path(tmp), studies, per_study, size)
        files = [p.read_bytes() for p in data.files(folder)]
    console.print(f"{len(files)} CT instances of {size}², {_machine()}")
    ours = _rate(files, _ours(), rounds)
    theirs = _rate(files, _dicognito(), rounds)
    table = Table("tool", "instances/s")
    table.add_row("pacsbroker (storage/deid)", f"{ours:.0f}")
    table.add_row("dicognito", f"{theirs:.0f}")
    table.add_row("ratio (ours / dicognito)", f"{ours / theirs:.2f}")
    console.print(table)


if __name__ == "__main__":
    app()
