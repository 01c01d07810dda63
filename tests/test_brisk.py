"""The latency tuning of pynetdicom acceptors: wake-ups, whole-PDU reads, shared contexts."""

from __future__ import annotations

import copy
import socket
import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from broker.dimse import brisk
from broker.dimse.contexts import scp_contexts


def _dul() -> brisk.BriskDUL:
    return brisk.BriskDUL.adopt(Association(AE("TEST"), "acceptor").dul)


def test_idle_wait_blocks_instead_of_spinning() -> None:
    dul = _dul()
    start = time.perf_counter()
    for _ in range(20):
        dul._wait()
    assert time.perf_counter() - start >= 20 * brisk.MAX_WAIT * 0.9


def test_an_outgoing_primitive_wakes_the_reactor_at_once() -> None:
    dul = _dul()
    woke = threading.Event()

    def reactor() -> None:
        dul._wait()
        woke.set()

    # a long MAX_WAIT shows that the wake-up, not the timeout, ends the wait
    brisk_wait, brisk.MAX_WAIT = brisk.MAX_WAIT, 5.0
    try:
        t = threading.Thread(target=reactor)
        t.start()
        time.sleep(0.05)
        dul.to_provider_queue.put("primitive")
        assert woke.wait(1.0)
        t.join()
    finally:
        brisk.MAX_WAIT = brisk_wait
    assert dul._run_loop_delay == 0.0


def test_wake_sockets_are_closed_when_the_dul_stops() -> None:
    dul = _dul()
    dul.state_machine.current_state = "Sta1"
    assert dul.stop_dul()
    assert dul._wake_r.fileno() == -1 and dul._wake_w.fileno() == -1


def test_socket_reads_a_whole_pdu_sent_in_pieces() -> None:
    a, b = socket.socketpair()
    sock = AssociationSocket(Association(AE("TEST"), "acceptor"), client_socket=a)
    sock.__class__ = brisk.BriskSocket
    payload = bytes(range(256)) * 4096

    def sender() -> None:
        for i in range(0, len(payload), 70_000):
            b.sendall(payload[i : i + 70_000])
            time.sleep(0.001)
        b.close()

    threading.Thread(target=sender).start()
    assert sock.recv(len(payload)) == payload
    assert sock.recv(10) == b""  # closed: a short read, reported by the caller
    a.close()


def test_accepted_contexts_are_shared_not_copied() -> None:
    contexts = brisk.SharedContexts(scp_contexts())
    assert copy.deepcopy(contexts) is contexts
    assert len(contexts) == len(scp_contexts())


def test_socket_refuses_pdus_longer_than_their_type_allows() -> None:
    a, b = socket.socketpair()
    sock = AssociationSocket(Association(AE("TEST"), "acceptor"), client_socket=a)
    sock.__class__ = brisk.BriskSocket
    assert isinstance(sock, brisk.BriskSocket)
    sock.limit_p_data(16384)
    b.sendall(b"\x04\x00\x00\x00\x40\x06" + bytes(16390))  # a P-DATA-TF of 16384 + 6
    assert len(sock.recv(6)) == 6 and len(sock.recv(16390)) == 16390
    for header, length in (
        (b"\x04\x00\x00\x00\x40\x07", 16391),
        (b"\x01\x00\xff\xff\xff\xff", 2**32 - 1),
    ):
        b.sendall(header)
        assert sock.recv(6) == header
        with pytest.raises(brisk.PDUTooLong):
            sock.recv(length)
    a.close()
    b.close()


def test_debug_dumps_are_not_bound_unless_pynetdicom_debug_is_on() -> None:
    assoc = Association(AE(), "acceptor")

    def bound() -> list[bool]:
        return [
            any(h == handler for h, _ in assoc.get_handlers(event))
            for event, handler in brisk._DEBUG_DUMPS
        ]

    assert all(bound())
    brisk._drop_debug_dumps(assoc)
    assert not any(bound())
