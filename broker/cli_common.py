"""What the `pacsbroker` commands share: settings, the archive, the caller's name, refusals
printed in red, and following a durable job with a progress bar."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from sqlalchemy.orm import Session

from storage.settings import Settings

console = Console(stderr=True)


def settings() -> Settings:
    try:
        return Settings()
    except Exception as e:
        console.print(f"[red]configuration error:[/red] {e}")
        raise typer.Exit(2) from None


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def audited(session: Session, action: str, detail: str) -> None:
    """Audit an admin change made from the CLI, in the change's own transaction."""
    from storage import audit

    audit.record(
        session, actor=actor(), role="radiology-admin", source="cli", action=action, detail=detail
    )


def display_host(s: Settings) -> str:
    return "127.0.0.1" if s.bind_host in ("0.0.0.0", "::") else s.bind_host


def progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@contextmanager
def refused(*errors: type[Exception], code: int = 1) -> Iterator[None]:
    """Print what the user asked for that cannot be done, and exit with `code`."""
    try:
        yield
    except errors as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(code) from None


Command = Callable[..., Any]


class Commands:
    """Top-level commands a module defines, added to the main app by `register`."""

    def __init__(self) -> None:
        self._found: list[tuple[str | None, Command]] = []

    def command(self, name: str | None = None) -> Callable[[Command], Command]:
        def add(fn: Command) -> Command:
            self._found.append((name, fn))
            return fn

        return add

    def register(self, app: typer.Typer) -> None:
        for name, fn in self._found:
            app.command(name)(fn)


JSON_OPT = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
WAIT_OPT = Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar")]


def open_archive() -> Any:
    from storage.archive import Archive

    return Archive(settings(), run_migrations=True)


def job_line(j: dict[str, Any]) -> str:
    progress = f"{j['done']}/{j['total']}" if j["total"] else str(j["done"])
    return (
        f"{j['id']:>5}  {j['kind']:<16} {j['state']:<10} {progress:>11}  "
        f"{(j['created_at'] or '')[:19]}  {j['created_by']}  {j['message']}"
    )


def follow(job_id: int) -> dict[str, Any]:
    """Poll the job row with a progress bar until the job ends; returns its final state."""
    import time

    from storage import jobs

    archive = open_archive()
    ended = ("succeeded", "failed", "cancelled")
    waited_queued = time.monotonic()
    with progress() as bar:
        task = bar.add_task(f"job {job_id}", total=None)
        while True:
            with archive.sessions() as session:
                j = jobs.as_dict(jobs.get(session, job_id))
            bar.update(
                task,
                completed=j["done"],
                total=j["total"] or None,
                description=f"{j['kind']} #{job_id} {j['state']}: {j['message'][:60]}",
            )
            if j["state"] in ended:
                break
            if j["state"] != "queued":
                waited_queued = time.monotonic()
            elif time.monotonic() - waited_queued > 15:
                console.print("[yellow]still queued: is `pacsbroker serve` running?[/yellow]")
                waited_queued = float("inf")
            time.sleep(0.5)
    archive.close()
    colour = "green" if j["state"] == "succeeded" else "red"
    console.print(f"job {job_id} [{colour}]{j['state']}[/{colour}]: {j['message']}")
    return j


def queued(job: Any, wait: bool, as_json: bool) -> dict[str, Any]:
    from storage import jobs

    j = jobs.as_dict(job)
    if wait:
        j = follow(job.id)
    elif not as_json:
        console.print(f"queued job {job.id} ({job.kind}): `pacsbroker jobs show {job.id} --wait`")
    if as_json:
        print(json.dumps(j))
    if j["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)
    return j
