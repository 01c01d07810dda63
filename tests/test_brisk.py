"""The latency tuning of pynetdicom acceptors: wake-ups, whole-PDU reads, shared contexts,
C-FIND answers in one PDU, and no full collections."""

from __future__ import annotations

import copy
import gc
import socket
import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from broker import heap
from broker.dimse import brisk
from broker.dimse.contexts import scp_contexts
from broker.dimse.server import ReusePortServer


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


def test_reactor_tick_ends_when_a_message_or_release_is_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assoc = Association(AE("TEST"), "acceptor")
    brisk.wake_reactor_on_messages(assoc)
    # a long tick shows that the queued item, not the timeout, ends the sleep
    monkeypatch.setattr(brisk, "REACTOR_TICK", 5.0)
    for q in (assoc.dimse.msg_queue, assoc.dul.to_user_queue):
        done = threading.Event()

        def reactor(done: threading.Event) -> None:
            brisk._ReactorClock.sleep(5.0)
            done.set()

        t = threading.Thread(target=reactor, args=(done,))
        t._brisk_activity = assoc._brisk_activity  # type: ignore[attr-defined]
        t.start()
        time.sleep(0.05)
        assert not done.is_set()
        q.put((1, "message"))
        assert done.wait(1.0)
        t.join()


def test_other_sleeps_in_pynetdicom_still_sleep() -> None:
    start = time.perf_counter()
    brisk._ReactorClock.sleep(0.02)
    assert time.perf_counter() - start >= 0.019


def _reassembled(pdus: list[P_DATA]) -> tuple[bytes, bytes, list[int]]:
    command, data, controls = b"", b"", []
    for pdu in pdus:
        for cid, pdv in pdu.presentation_data_value_list:
            assert cid == 5
            controls.append(pdv[0])
            if pdv[0] & 1:
                command += pdv[1:]
            else:
                data += pdv[1:]
    return command, data, controls


def test_find_answer_is_one_pdu_when_command_and_identifier_fit() -> None:
    pdus = list(brisk._find_answer_pdus(5, b"C" * 100, b"D" * 300, 16384))
    assert len(pdus) == 1
    assert _reassembled(pdus) == (b"C" * 100, b"D" * 300, [0x03, 0x02])
    assert len(list(brisk._find_answer_pdus(5, b"C" * 100, b"D" * 10**6, 0))) == 1


def test_find_answer_is_fragmented_within_the_peers_maximum_pdu() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    pdus = list(brisk._find_answer_pdus(5, b"C" * 100, data, 4096))
    for pdu in pdus:
        assert sum(len(v) + 5 for _, v in pdu.presentation_data_value_list) <= 4096
    command, got, controls = _reassembled(pdus)
    assert (command, got) == (b"C" * 100, data)
    assert controls == [0x03, 0x00, 0x00, 0x02]  # command last, data…, data last


def test_receivers_skip_pynetdicoms_periodic_full_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def collect(*_args: object) -> int:
        calls.append(1)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    server = ReusePortServer.__new__(ReusePortServer)
    server._gc = [0, 59]
    for _ in range(200):
        server.service_actions()
    assert calls == []


def test_settle_freezes_the_start_up_heap() -> None:
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_pynetdicoms_reactor_still_sleeps_the_tick_that_install_reroutes() -> None:
    """If an upgrade of pynetdicom changes its loop, the wake-up silently stops working."""
    import inspect

    source = inspect.getsource(Association._run_reactor)
    assert f"time.sleep({brisk.REACTOR_TICK})" in source


def test_pynetdicoms_c_store_still_encodes_through_the_function_verbatim_replaces() -> None:
    """If an upgrade of pynetdicom encodes elsewhere, retrieves silently lose stored bytes."""
    import inspect

    import pynetdicom.dsutils

    from broker.dimse import verbatim

    assert verbatim._ENCODE is pynetdicom.dsutils.encode
    assert "bytestream = encode(" in inspect.getsource(Association.send_c_store)
