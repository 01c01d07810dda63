"""`python -m bench.adt`: sustained HL7 ADT rate over one MLLP connection (target 1,000/s)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console

from storage import nationalid
from tests.conftest import Broker
from tools.pas_sim import adt_message

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=150)
app = typer.Typer(add_completion=False)


class MllpConnection:
    """One persistent MLLP connection; each message waits for its ACK, as PAS senders do."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, message: bytes) -> bytes:
        self.sock.sendall(b"\x0b" + message + b"\x1c\x0d")
        while b"\x1c\x0d" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the MLLP connection")
            self.buf += chunk
        reply, _, self.buf = self.buf.partition(b"\x1c\x0d")
        return reply.lstrip(b"\x0b")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc: on a shared
    machine the broker's CPU per message is steadier than the wall-clock rate."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _patients(n: int) -> list[str]:
    out: list[str] = []
    day = dt.date(1950, 1, 1)
    while len(out) < n:
        fnr = nationalid.make(day, 100 + len(out) % 400, synthetic=True)
        if fnr:
            out.append(fnr)
        day += dt.timedelta(days=3)
    return out


@app.command()
def main(
    messages: int = typer.Option(5000, help="A08 updates to send after the A04 registrations"),
    patients: int = typer.Option(200, help="Distinct patients the updates rotate over"),
    work: Path = typer.Option(ROOT / "var" / "bench", help="Scratch space"),
) -> None:
    """Register patients with A04, then time A08 updates, each acknowledged before the next."""
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        broker = Broker(Path(scratch) / "broker", {"PACSBROKER_LOG_LEVEL": "WARNING"}).start()
        try:
            conn = MllpConnection(broker.hl7_port)
            ids = _patients(patients)
            for fnr in ids:
                assert b"|AA|" in conn.send(adt_message("A04", fnr, "Bench^Patient"))
            latencies: list[float] = []
            assert broker.proc is not None
            cpu = _cpu_seconds(broker.proc.pid)
            start = time.perf_counter()
            for i in range(messages):
                msg = adt_message("A08", ids[i % len(ids)], f"Bench^Patient^{i}")
                t = time.perf_counter()
                ack = conn.send(msg)
                latencies.append((time.perf_counter() - t) * 1000)
                if b"|AA|" not in ack:
                    raise RuntimeError(f"message {i} not accepted: {ack!r}")
            elapsed = time.perf_counter() - start
            cpu = _cpu_seconds(broker.proc.pid) - cpu
        finally:
            broker.stop()
    q = statistics.quantiles(latencies, n=100)
    console.print(
        f"{messages} ADT^A08 over one MLLP connection: {messages / elapsed:.0f} msg/s "
        f"(target 1000), ACK latency p50 {q[49]:.2f} ms, p95 {q[94]:.2f} ms, "
        f"max {max(latencies):.1f} ms; broker CPU {cpu / messages * 1000:.2f} ms/msg"
    )


if __name__ == "__main__":
    app()
