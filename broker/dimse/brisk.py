"""Lower latency for pynetdicom acceptors, per association and per message.

Per association: pynetdicom deep-copies the acceptor's presentation contexts for every
association (127 SOP classes with 23 transfer syntaxes each here: about 20 ms per accept,
doubling C-ECHO latency). Negotiation only reads them and we never change them after start,
so every association shares one list.

Per message: pynetdicom's DUL reactor polls. Whenever a loop found nothing to do it sleeps a
fixed 1 ms, so every PDU in or out waits up to a millisecond; for small objects over one
association that sleep, not parsing or disk, bounds the store rate (docs/benchmarks.md).
A BriskDUL waits in select() on the socket and on a wake-up socket that the outgoing queue
pokes, so it reacts at once to either direction and costs nothing while idle. The association
reactor has the same fixed 1 ms sleep before it looks for a decoded message or a release; a
brisk association's sleep ends as soon as either is queued (see `install`). A BriskDIMSE sends
each pending C-FIND answer as one P-DATA PDU whose command set was encoded once per query.
A BriskSocket
reads each PDU with as few recv() calls as possible instead of 4 KiB at a time, into a buffer
of the length the peer declares, so it refuses lengths no PDU of that type may have: six
bytes claiming a 4 GiB PDU must not make the receiver allocate 4 GiB.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

import pynetdicom.association
from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

# The longest a wait may last; it bounds how late the reactor sees its own timers expire.
MAX_WAIT = 0.001
# The sleep at the top of pynetdicom's association reactor loop.
REACTOR_TICK = 0.001
PDU_HEADER = 6  # type, reserved, 4-byte length
P_DATA_TF = 0x04
# 128 contexts proposing every syntax we support come to about 80 KB: room to spare.
MAX_ASSOCIATE_PDU = 256 << 10
# With no negotiated maximum (0) a peer may send any length; this is where we stop believing it.
MAX_UNBOUNDED_PDU = 16 << 20


class PDUTooLong(Exception):
    """A peer declared a PDU longer than its type allows. Not an OSError, so pynetdicom's
    reactor answers it with an A-ABORT rather than treating it as a closed connection."""


class _WakingQueue(queue.Queue[Any]):
    """A queue whose every put also wakes the reactor that reads it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def _poke(wake: socket.socket) -> Callable[[], None]:
    def poke() -> None:
        # OSError: buffer full (a wake-up is pending anyway) or the association is closed.
        with contextlib.suppress(OSError):
            wake.send(b"\0")

    return poke


class BriskDUL(DULServiceProvider):
    _wake_r: socket.socket
    _wake_w: socket.socket

    @classmethod
    def adopt(cls, dul: DULServiceProvider) -> BriskDUL:
        """Turn a DUL that has not started yet into a BriskDUL, keeping its state."""
        dul.__class__ = cls
        assert isinstance(dul, BriskDUL)
        dul._wake_r, dul._wake_w = socket.socketpair()
        for s in (dul._wake_r, dul._wake_w):
            s.setblocking(False)
        dul.to_provider_queue = _WakingQueue(_poke(dul._wake_w))
        weakref.finalize(dul, _close, dul._wake_r, dul._wake_w)
        return dul

    @property
    def _run_loop_delay(self) -> float:
        return 0.0  # the wait happens in select(), see _is_transport_event

    @_run_loop_delay.setter
    def _run_loop_delay(self, _value: float) -> None:
        """pynetdicom's constructor assigns its fixed delay; BriskDUL does not sleep."""

    def _is_transport_event(self) -> bool:
        if super()._is_transport_event():
            return True
        self._wait()
        return False

    def _wait(self) -> None:
        if not self.event_queue.empty() or not self.to_provider_queue.empty():
            return
        watched: list[Any] = [self._wake_r]
        raw = self.socket.socket if self.socket is not None else None
        if raw is not None and raw.fileno() >= 0:
            watched.append(raw)
        try:
            select.select(watched, [], [], MAX_WAIT)
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, ValueError):
            return

    def stop_dul(self) -> bool:
        stopped = bool(super().stop_dul())
        if stopped:
            _close(self._wake_r, self._wake_w)
        return stopped


PENDING = (0xFF00, 0xFF01)
# PDV message control header (PS3.8 E.2): bit 0 command/data set, bit 1 last fragment.
DATA, DATA_LAST, COMMAND_LAST = b"\x00", b"\x02", b"\x03"
PDV_OVERHEAD = 6  # item length (4), context ID, control header


class BriskDIMSE(DIMSEServiceProvider):
    """Sends pending C-FIND answers cheaply. Every pending answer to one query carries the same
    command set, which pynetdicom rebuilt as a dataset and encoded twice per answer (a third of
    an answer's cost); here it is encoded once per query and sent in the same P-DATA-TF as the
    identifier, so each answer is one PDU (PS3.8 9.3.5 allows several PDVs per PDU)."""

    _commands: dict[tuple[int, int, int, str], bytes]

    @classmethod
    def adopt(cls, dimse: DIMSEServiceProvider) -> BriskDIMSE:
        dimse.__class__ = cls
        assert isinstance(dimse, BriskDIMSE)
        dimse._commands = {}
        return dimse

    def send_msg(self, primitive: Any, context_id: int) -> None:
        identifier = getattr(primitive, "Identifier", None)
        if (
            not isinstance(primitive, C_FIND)
            or identifier is None
            or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status not in PENDING
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            super().send_msg(primitive, context_id)
            return
        key = (
            context_id,
            primitive.MessageIDBeingRespondedTo,
            primitive.Status,
            str(primitive.AffectedSOPClassUID),
        )
        command = self._commands.get(key)
        if command is None:
            message = C_FIND_RSP()
            message.primitive_to_message(primitive)
            command = cast(bytes, encode(message.command_set, True, True))
            self._commands = {key: command}  # one query at a time per association
        for pdata in _find_answer_pdus(
            context_id, command, identifier.getvalue(), self.maximum_pdu_size
        ):
            self.dul.send_pdu(pdata)


def _find_answer_pdus(
    context_id: int, command: bytes, data: bytes, max_pdu: int
) -> Iterator[P_DATA]:
    """One PDU holding command and identifier when both fit, else one PDV per PDU."""
    room = max_pdu - PDV_OVERHEAD if max_pdu else max(len(command), len(data), 1)
    if not max_pdu or len(command) + len(data) + 2 * PDV_OVERHEAD <= max_pdu:
        yield _p_data((context_id, COMMAND_LAST + command), (context_id, DATA_LAST + data))
        return
    if len(command) > room:  # never for a C-FIND-RSP command (~100 bytes) under a sane PDU size
        raise ValueError(f"maximum PDU {max_pdu} is too small for a C-FIND response")
    yield _p_data((context_id, COMMAND_LAST + command))
    for at in range(0, len(data), room):
        last = at + room >= len(data)
        yield _p_data((context_id, (DATA_LAST if last else DATA) + data[at : at + room]))


def _p_data(*pdvs: tuple[int, bytes]) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.extend(pdvs)
    return pdata


def _close(*socks: socket.socket) -> None:
    for s in socks:
        s.close()


class BriskSocket(AssociationSocket):
    """Reads a PDU with as few system calls as the kernel allows, not in 4 KiB pieces, and
    never into a buffer longer than a PDU of its type may be."""

    max_p_data = MAX_UNBOUNDED_PDU + PDU_HEADER
    _body_limit: int | None = None  # set by a header read: the most the PDU body may hold

    def limit_p_data(self, maximum_length: int) -> None:
        """Refuse P-DATA-TF PDUs longer than we told the peer (0: no maximum negotiated)."""
        self.max_p_data = (maximum_length or MAX_UNBOUNDED_PDU) + PDU_HEADER

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom reads a PDU as its 6-byte header, then the length the header declares
        limit, self._body_limit = self._body_limit, None
        if limit is None:
            limit = max(self.max_p_data, MAX_ASSOCIATE_PDU)
        if nr_bytes > limit:
            raise PDUTooLong(f"peer declared a {nr_bytes}-byte PDU; at most {limit} accepted")
        buf = self._read(nr_bytes)
        if nr_bytes == PDU_HEADER and len(buf) == PDU_HEADER:
            self._body_limit = self.max_p_data if buf[0] == P_DATA_TF else MAX_ASSOCIATE_PDU
        return buf

    def _read(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if not n:  # connection closed: the caller reports the short PDU
                del view
                return buf[:got]
            got += n
        return buf


class _ReactorClock:
    """Stands in for the `time` module inside pynetdicom.association, which uses only sleep()."""

    @staticmethod
    def sleep(seconds: float) -> None:
        activity: threading.Event | None = getattr(
            threading.current_thread(), "_brisk_activity", None
        )
        if activity is None or seconds != REACTOR_TICK:
            time.sleep(seconds)
            return
        activity.wait(seconds)
        activity.clear()


def install() -> None:
    """Let brisk associations' reactors wake on their queues instead of sleeping 1 ms blind."""
    pynetdicom.association.time = _ReactorClock  # type: ignore[assignment]


def wake_reactor_on_messages(assoc: Association) -> None:
    """A decoded DIMSE message or an ACSE primitive (release, abort) ends the reactor's tick."""
    activity = threading.Event()
    assoc._brisk_activity = activity  # type: ignore[attr-defined]
    assoc.dimse.msg_queue = _WakingQueue(activity.set)
    assoc.dul.to_user_queue = _WakingQueue(activity.set)


class BriskRequestHandler(RequestHandler):
    """Gives each accepted association a BriskDUL and a BriskSocket before its threads start,
    and a reactor that wakes on its messages (once `install` has run)."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        _drop_debug_dumps(assoc)
        wake_reactor_on_messages(assoc)
        BriskDIMSE.adopt(assoc.dimse)
        # The DUL already holds the socket and the state machine's first transition, so both
        # are adopted in place rather than replaced.
        BriskDUL.adopt(assoc.dul)
        sock = assoc.dul.socket
        if type(sock) is AssociationSocket:
            sock.__class__ = BriskSocket
            assert isinstance(sock, BriskSocket)
            sock.limit_p_data(assoc.acceptor.maximum_length or 0)
        return assoc


# pynetdicom's standard handlers describe every PDU and DIMSE message for its debug log, the
# 127 proposed contexts of each A-ASSOCIATE-RQ included, whether or not debug is on.
_DEBUG_DUMPS = (
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
)


def _drop_debug_dumps(assoc: Association) -> None:
    """Unbind the debug dumps from an association unless pynetdicom's debug log is on."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, handler in _DEBUG_DUMPS:
        assoc.unbind(event, handler)


class SharedContexts(list[PresentationContext]):
    """Supported contexts that every association shares instead of getting a deep copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        return self
