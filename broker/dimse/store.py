"""C-STORE: validate the header, write the received bytes durably to the spool, then answer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from broker.dimse.access import AccessPolicy, Action
from storage import spool
from storage.dicomheader import InvalidObject, InvalidUID, validate
from storage.spool import RecordRef, SpoolWriter

log = logging.getLogger("pacsbroker.store")

NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
UID_MISMATCH = 0xA900
MISSING_UIDS = 0xC001
CANNOT_PARSE = 0xC002
INVALID_UID = 0xC003


def status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _refusal_code(e: InvalidObject) -> int:
    """A "cannot understand" status (0xCxxx) that tells the sender which kind of fault it was."""
    if isinstance(e, InvalidUID):
        return INVALID_UID
    return MISSING_UIDS if str(e).startswith("missing") else CANNOT_PARSE


class StoreHandler:
    def __init__(
        self, policy: AccessPolicy, writer: SpoolWriter, notify: Callable[[RecordRef], None]
    ) -> None:
        self.policy = policy
        self.writer = writer
        self.notify = notify

    def __call__(self, event: Event) -> Dataset | int:
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        address = assoc.requestor.address
        decision = self.policy.decide(calling, address, Action.STORE)
        if not decision.allowed:
            log.warning("C-STORE refused from %s@%s: %s", calling, address, decision.reason)
            return status(NOT_AUTHORISED, decision.reason)
        req: Any = event.request
        ts = str(event.context.transfer_syntax)
        ds_bytes = req.DataSet.getvalue()
        try:
            ident = validate(ds_bytes, ts)
        except InvalidObject as e:
            code = _refusal_code(e)
            log.warning("C-STORE from %s rejected: %s", calling, e)
            return status(code, str(e))
        if ident.sop_uid != str(req.AffectedSOPInstanceUID).strip("\0 "):
            msg = "SOPInstanceUID differs from the command's Affected SOP Instance UID"
            log.warning("C-STORE from %s rejected: %s", calling, msg)
            return status(UID_MISMATCH, msg)
        meta = spool.received(calling, address, ident.sop_uid)
        try:
            ref = self.writer.append(meta, event.encoded_dataset(include_meta=True))
        except OSError as e:
            log.error("spool write failed for %s from %s: %s", ident.sop_uid, calling, e)
            return status(OUT_OF_RESOURCES, f"spool write failed: {e.strerror}")
        self.notify(ref)
        return 0x0000
