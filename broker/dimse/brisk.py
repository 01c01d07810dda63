"""Lower latency for pynetdicom acceptors, per association and per message.

Per association: pynetdicom deep-copies the acceptor's presentation contexts for every
association (127 SOP classes with 23 transfer syntaxes each here: about 20 ms per accept, doubling
C-ECHO latency). Negotiation only reads them and we never change them after start, so every
association shares one list.

Per message: pynetdicom's DUL reactor sleeps a fixed 1 ms whenever a loop found nothing to
do, so every PDU in or out waits up to a millisecond: for small objects over one association
that sleep, not parsing or disk, bounds the store rate (docs/benchmarks.md). While an
association has recent traffic either way we poll every 50 µs; after half a second of quiet
we fall back to pynetdicom's 1 ms, so idle associations cost what they cost before.
"""

from __future__ import annotations

import time
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler

BUSY_DELAY = 0.00005
IDLE_DELAY = 0.001
LINGER = 0.5


class BriskDUL(DULServiceProvider):
    _busy_until = 0.0

    @property
    def _run_loop_delay(self) -> float:
        return BUSY_DELAY if time.monotonic() < self._busy_until else IDLE_DELAY

    @_run_loop_delay.setter
    def _run_loop_delay(self, _value: float) -> None:
        """pynetdicom's constructor assigns its fixed delay; the property decides instead."""

    def _busy(self, active: bool) -> bool:
        if active:
            self._busy_until = time.monotonic() + LINGER
        return active

    def _is_transport_event(self) -> bool:
        return self._busy(super()._is_transport_event())

    def _process_recv_primitive(self) -> bool:
        return self._busy(super()._process_recv_primitive())


class BriskRequestHandler(RequestHandler):
    """Makes each accepted association's DUL a BriskDUL before its threads start."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # The DUL already holds the socket and the state machine's first transition, so it is
        # re-classed in place rather than replaced; BriskDUL adds no state of its own.
        assoc.dul.__class__ = BriskDUL
        return assoc


class SharedContexts(list[PresentationContext]):
    """Supported contexts that every association shares instead of getting a deep copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        return self
