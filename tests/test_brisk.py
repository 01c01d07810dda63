"""The latency tuning of pynetdicom acceptors keeps idle associations cheap and contexts intact."""

from __future__ import annotations

import copy
import time
from unittest import mock

from pynetdicom import AE
from pynetdicom.association import Association

from broker.dimse import brisk
from broker.dimse.contexts import scp_contexts


def _dul() -> brisk.BriskDUL:
    assoc = Association(AE("TEST"), "acceptor")
    assoc.dul.__class__ = brisk.BriskDUL
    assert isinstance(assoc.dul, brisk.BriskDUL)
    return assoc.dul


def test_polls_fast_only_while_traffic_is_recent() -> None:
    dul = _dul()
    assert dul._run_loop_delay == brisk.IDLE_DELAY
    with mock.patch("pynetdicom.dul.DULServiceProvider._is_transport_event", return_value=True):
        assert dul._is_transport_event()
    assert dul._run_loop_delay == brisk.BUSY_DELAY
    dul._busy_until = time.monotonic() - 0.001
    assert dul._run_loop_delay == brisk.IDLE_DELAY


def test_sending_counts_as_traffic() -> None:
    dul = _dul()
    with mock.patch("pynetdicom.dul.DULServiceProvider._process_recv_primitive", return_value=True):
        assert dul._process_recv_primitive()
    assert dul._run_loop_delay == brisk.BUSY_DELAY


def test_accepted_contexts_are_shared_not_copied() -> None:
    contexts = brisk.SharedContexts(scp_contexts())
    assert copy.deepcopy(contexts) is contexts
    assert len(contexts) == len(scp_contexts())
