"""The MLLP listener: framing, one message at a time per connection, limits, stop."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from broker.pas.listener import END, START, MllpListener
from tests.conftest import free_port


class Echo:
    """A handler that records what it got and in which thread, and answers ACK:<message>."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.threads: set[str] = set()

    def __call__(self, raw: bytes, peer: str) -> bytes:
        self.got.append(raw)
        self.threads.add(threading.current_thread().name)
        return b"ACK:" + raw


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def port(echo: Echo) -> Iterator[int]:
    port = free_port()
    listener = MllpListener("127.0.0.1", port, echo, max_message=1000)
    listener.start()
    yield port
    listener.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def replies(sock: socket.socket, n: int) -> list[bytes]:
    buf = b""
    while buf.count(END) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [f.removeprefix(START) for f in buf.split(END)[:-1]]


def test_frames_split_and_joined_across_reads_are_answered_in_order(port: int, echo: Echo) -> None:
    with connect(port) as s:
        s.sendall(b"junk" + START + b"MSG1" + END + START + b"MS")
        assert replies(s, 1) == [b"ACK:MSG1"]
        s.sendall(b"G2\x1c")
        s.sendall(b"\x0d" + START + b"MSG3" + END)
        assert replies(s, 2) == [b"ACK:MSG2", b"ACK:MSG3"]
    assert echo.got == [b"MSG1", b"MSG2", b"MSG3"]


def test_a_frame_ended_by_its_fs_alone_is_answered(port: int, echo: Echo) -> None:
    """Some senders leave out the CR after FS and wait for the ACK before sending more."""
    with connect(port) as s:
        s.sendall(START + b"NOCR\x1c")
        assert replies(s, 1) == [b"ACK:NOCR"]
        s.sendall(START + b"NEXT" + END)
        assert replies(s, 1) == [b"ACK:NEXT"]
    assert echo.got == [b"NOCR", b"NEXT"]


def test_each_connection_is_served_in_its_own_thread(port: int, echo: Echo) -> None:
    with connect(port) as a, connect(port) as b:
        a.sendall(START + b"A" + END)
        assert replies(a, 1) == [b"ACK:A"]
        b.sendall(START + b"B" + END)
        assert replies(b, 1) == [b"ACK:B"]
    assert len(echo.threads) == 2


def test_a_frame_over_the_limit_closes_the_connection(port: int, echo: Echo) -> None:
    with connect(port) as s:
        s.sendall(START + b"x" * 2000)
        assert s.recv(100) == b""
    with connect(port) as s:  # the listener still serves others
        s.sendall(START + b"ok" + END)
        assert replies(s, 1) == [b"ACK:ok"]
    assert echo.got == [b"ok"]


def test_a_connection_closed_inside_a_frame_is_not_answered(port: int, echo: Echo) -> None:
    with connect(port) as s:
        s.sendall(START + b"half")
    with connect(port) as s:
        s.sendall(START + b"whole" + END)
        assert replies(s, 1) == [b"ACK:whole"]
    assert echo.got == [b"whole"]


def test_stop_ends_open_connections_and_refuses_new_ones(echo: Echo) -> None:
    port = free_port()
    listener = MllpListener("127.0.0.1", port, echo)
    listener.start()
    s = connect(port)
    s.sendall(START + b"A" + END)
    assert replies(s, 1) == [b"ACK:A"]
    listener.stop()
    assert s.recv(100) == b""
    s.close()
    with pytest.raises(OSError):
        connect(port).close()


def test_a_port_in_use_fails_at_start(port: int, echo: Echo) -> None:
    with pytest.raises(RuntimeError, match=f"port {port}"):
        MllpListener("127.0.0.1", port, echo).start()


def test_connections_over_the_cap_are_closed_and_a_freed_slot_is_served_again(echo: Echo) -> None:
    port = free_port()
    listener = MllpListener("127.0.0.1", port, echo, max_connections=2)
    listener.start()
    try:
        first, second = connect(port), connect(port)
        for s in (first, second):
            s.sendall(START + b"HELD" + END)
            assert replies(s, 1) == [b"ACK:HELD"]
        with connect(port) as third, contextlib.suppress(ConnectionResetError):
            assert third.recv(1) == b""  # closed at once, nothing answered
        first.close()
        for _ in range(50):  # the listener notices the close when its thread reads EOF
            with connect(port) as again, contextlib.suppress(ConnectionError):
                again.sendall(START + b"AGAIN" + END)
                if replies(again, 1) == [b"ACK:AGAIN"]:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("a slot freed by a closed connection was never served")
        second.close()
    finally:
        listener.stop()


def test_on_close_runs_in_the_thread_of_each_connection_that_ends(echo: Echo) -> None:
    ended: list[str] = []
    port = free_port()
    listener = MllpListener(
        "127.0.0.1", port, echo, on_close=lambda: ended.append(threading.current_thread().name)
    )
    listener.start()
    try:
        with connect(port) as s:
            s.sendall(START + b"A" + END)
            assert replies(s, 1) == [b"ACK:A"]
        deadline = time.time() + 5
        while not ended and time.time() < deadline:
            time.sleep(0.01)
        assert ended == list(echo.threads)  # the thread that served the connection
    finally:
        listener.stop()
