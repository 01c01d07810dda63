"""C-FIND for Patient Root and Study Root: matching in the index, exactly the requested keys."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event

from broker.dimse.access import AccessPolicy, Action
from broker.dimse.contexts import FIND_MODELS
from broker.dimse.store import NOT_AUTHORISED, status
from storage import audit
from storage.archive import Archive
from storage.query import Level, Matcher, keys_of, responses

log = logging.getLogger("pacsbroker.find")

IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
LEVELS = {"PATIENT": {lvl for lvl in Level}, "STUDY": {Level.STUDY, Level.SERIES, Level.IMAGE}}


def query_level(identifier: Dataset, model: str) -> Level:
    """The Query/Retrieve Level of an identifier, checked against the information model."""
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw)
    except ValueError:
        raise ValueError(f"QueryRetrieveLevel {raw!r} is not PATIENT/STUDY/SERIES/IMAGE") from None
    if level not in LEVELS[model]:
        raise ValueError(f"level {raw} is not part of the {model} root model")
    return level


def _syntax(event: Event) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the context the answers go out on."""
    ts = UID(event.context.transfer_syntax)
    return bool(ts.is_implicit_VR), bool(ts.is_little_endian)


class FindHandler:
    def __init__(self, policy: AccessPolicy, archive: Archive, trail: audit.AuditTrail) -> None:
        self.policy = policy
        self.archive = archive
        self.trail = trail

    def __call__(self, event: Event) -> Iterator[tuple[Any, Dataset | None]]:
        assoc = event.assoc
        calling, address = assoc.requestor.ae_title, assoc.requestor.address
        decision = self.policy.decide(calling, address, Action.QUERY)
        if not decision.allowed:
            yield status(NOT_AUTHORISED, decision.reason), None
            return
        try:
            identifier = event.identifier
            model = FIND_MODELS[str(event.context.abstract_syntax)]
            level = query_level(identifier, model)
        except Exception as e:
            yield status(IDENTIFIER_MISMATCH, str(e)), None
            return
        settings = self.archive.settings
        with self.archive.sessions() as session:
            try:
                matcher = Matcher(
                    level, keys_of(identifier), pn_case_insensitive=settings.pn_case_insensitive
                )
                hits = list(matcher.hits(session))
                answers = list(
                    responses(
                        session,
                        level,
                        hits,
                        identifier,
                        retrieve_ae=settings.ae_title,
                        syntax=_syntax(event),
                    )
                )
            except Exception as e:
                log.exception("C-FIND from %s failed", calling)
                yield status(UNABLE_TO_PROCESS, f"query failed: {e}"), None
                return
            self.trail.record(
                actor=calling,
                role="dicom-peer",
                source=address,
                action="dicom.find",
                detail=f"{level.value} {len(hits)} matches",
                patients=[
                    (h.patient.patient_id, h.study.study_uid if h.study else "") for h in hits
                ],
            )
        log.info("C-FIND %s from %s: %d matches", level.value, calling, len(answers))
        for ds in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds
