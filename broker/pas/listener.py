"""The MLLP listener: framed HL7 messages in, one at a time per connection, ACKs out."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

from broker.pas.hl7v2 import message_type

log = logging.getLogger("pacsbroker.hl7")

START, END = b"\x0b", b"\x1c\x0d"

Handler = Callable[[bytes, str], bytes]


def route(handlers: dict[str, Handler], fallback: Handler) -> Handler:
    """One handler per MSH-9 message type (ADT, ORM, ...); the fallback answers the rest."""

    def handle(raw: bytes, peer: str) -> bytes:
        return handlers.get(message_type(raw), fallback)(raw, peer)

    return handle


class MllpListener:
    """Runs an asyncio server in its own thread; `handle` (blocking: it writes the index)
    runs in a worker thread, and the next frame of a connection waits for its ACK."""

    def __init__(
        self,
        host: str,
        port: int,
        handle: Handler,
        *,
        max_message: int = 10 << 20,
    ) -> None:
        self.host, self.port, self.handle, self.max_message = host, port, handle, max_message
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="hl7-mllp", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise RuntimeError(f"HL7 listener on port {self.port}: {self._error}")

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(
                    self._client, self.host, self.port, reuse_address=True, limit=self.max_message
                )
            )
        except OSError as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = f"{host}:{port}"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                junk = await reader.readuntil(START)
                if len(junk) > 1:
                    log.warning(
                        "HL7 from %s: %d bytes outside an MLLP frame skipped", peer, len(junk) - 1
                    )
                frame = await reader.readuntil(END)
                message = frame[: -len(END)]
                reply = await asyncio.to_thread(self.handle, message, peer)
                writer.write(START + reply + END)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        except asyncio.LimitOverrunError:
            log.warning(
                "HL7 from %s: frame larger than %d bytes; connection closed", peer, self.max_message
            )
        except (ConnectionError, OSError) as e:
            log.info("HL7 connection from %s ended: %s", peer, e)
        except Exception:
            log.exception("HL7 connection from %s failed", peer)
        finally:
            writer.close()
