"""The MLLP listener: framed HL7 messages in, one at a time per connection, ACKs out."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from broker.pas.hl7v2 import message_type

log = logging.getLogger("pacsbroker.hl7")

START, END = b"\x0b", b"\x1c\x0d"
# a frame ends at its FS (no HL7 text may hold one); the CR MLLP puts after it is optional here,
# as some senders leave it out and would wait for an ACK that a strict reader never sends
_FS = b"\x1c"

Handler = Callable[[bytes, str], bytes]


def route(handlers: dict[str, Handler], fallback: Handler) -> Handler:
    """One handler per MSH-9 message type (ADT, ORM, ...); the fallback answers the rest."""

    def handle(raw: bytes, peer: str) -> bytes:
        return handlers.get(message_type(raw), fallback)(raw, peer)

    return handle


class FrameTooLarge(Exception):
    """More than `max_message` bytes without the end of a frame."""


class FrameReader:
    """MLLP frames from a blocking socket; None once the peer has closed the connection."""

    def __init__(self, sock: socket.socket, peer: str, max_message: int) -> None:
        self.sock, self.peer, self.max_message = sock, peer, max_message
        self.buf = bytearray()

    def next(self) -> bytes | None:
        start = self._until(START)
        if start is None:
            return None
        if self.buf[:start].strip(b"\r\n"):
            log.warning("HL7 from %s: %d bytes outside an MLLP frame skipped", self.peer, start)
        del self.buf[: start + len(START)]
        end = self._until(_FS)
        if end is None:
            return None  # closed inside a frame: nothing to answer
        frame = bytes(self.buf[:end])
        del self.buf[: end + len(_FS)]  # its CR, if sent, is skipped before the next frame
        return frame

    def _until(self, sep: bytes) -> int | None:
        """Where `sep` starts in the buffer, reading as needed; None at end of stream."""
        searched = 0
        while (at := self.buf.find(sep, searched)) < 0:
            if len(self.buf) > self.max_message:
                raise FrameTooLarge
            searched = max(0, len(self.buf) - len(sep) + 1)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        return at


class MllpListener:
    """Accepts in its own thread and serves each connection in a thread of its own, which
    reads a frame, runs `handle` (blocking: it writes the index) and writes the ACK before it
    reads the next: no hand-off between an event loop and a worker per message."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Handler,
        *,
        max_message: int = 10 << 20,
        max_connections: int = 64,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.host, self.port, self.handle, self.max_message = host, port, handle, max_message
        self.on_close = on_close  # run by a connection's thread as it ends
        # a thread per connection: the cap keeps a flood of connections from exhausting them
        self.max_connections = max_connections
        self._server: socket.socket | None = None
        self._thread = threading.Thread(target=self._accept, name="hl7-mllp", daemon=True)
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        try:
            # the first address the host names, as the DICOM and HTTP ports bind it
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            self._server = socket.create_server((self.host, self.port), family=family)
        except OSError as e:
            raise RuntimeError(f"HL7 listener on port {self.port}: {e}") from e
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and end the open connections (a frame being handled is answered)."""
        self._stopping.set()
        if self._server is not None:
            _shutdown(self._server)
            self._server.close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            _shutdown(sock)

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._server.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("HL7 listener: accept failed")
                continue
            peer = f"{addr[0]}:{addr[1]}"
            with self._lock:
                full = len(self._clients) >= self.max_connections
                if not full:
                    self._clients.add(sock)
            if full:
                log.warning(
                    "HL7 connection from %s refused: %d connections open already",
                    peer,
                    self.max_connections,
                )
                sock.close()
                continue
            threading.Thread(
                target=self._serve, args=(sock, peer), name=f"hl7-{peer}", daemon=True
            ).start()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = FrameReader(sock, peer, self.max_message)
        try:
            while (message := frames.next()) is not None:
                sock.sendall(START + self.handle(message, peer) + END)
        except FrameTooLarge:
            log.warning(
                "HL7 from %s: frame larger than %d bytes; connection closed", peer, self.max_message
            )
        except (ConnectionError, OSError) as e:
            if not self._stopping.is_set():
                log.info("HL7 connection from %s ended: %s", peer, e)
        except Exception:
            log.exception("HL7 connection from %s failed", peer)
        finally:
            with self._lock:
                self._clients.discard(sock)
            sock.close()
            self.on_close()


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked in accept() or recv() on `sock`."""
    with contextlib.suppress(OSError):  # not connected, or already closed
        sock.shutdown(socket.SHUT_RDWR)
