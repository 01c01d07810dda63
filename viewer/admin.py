"""Admin API for the radiology admin role: the quarantine and its resolution."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from broker.pas import pdqm, reconcile
from storage import audit, quarantine, removal
from storage.archive import Archive
from storage.demographics import Identifier
from viewer.auth import Caller, caller

ADMIN_ROLE = "radiology-admin"


async def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    # async: a sync dependency would cost a worker-thread hand-off per request
    if who.role != ADMIN_ROLE:
        raise HTTPException(403, f"role {ADMIN_ROLE!r} required, token has {who.role!r}")
    return who


def record_change(
    session: Session,
    who: Caller,
    action: str,
    detail: str,
    patients: Iterable[tuple[str, str]] = (),
) -> None:
    """Audit a caller's change in the change's own transaction, so neither commits alone."""
    audit.record(
        session,
        actor=who.user,
        role=who.role,
        source=who.address,
        action=action,
        detail=detail,
        patients=patients,
    )


class Assignment(BaseModel):
    patient_id: str = Field(description="An identifier of the registry patient to file under")
    system: str = Field(default="", description="Its system URI, if the value is ambiguous")


def router(archive: Archive) -> APIRouter:
    r = APIRouter(prefix="/api/v1/admin", tags=["admin"])

    @r.get("/quarantine")
    def list_quarantine(who: Annotated[Caller, Depends(admin)]) -> dict[str, Any]:
        with archive.sessions() as session:
            return quarantine.listing(session)

    @r.post("/quarantine/studies/{study_uid}/assign")
    def assign(
        study_uid: str,
        body: Assignment,
        who: Annotated[Caller, Depends(admin)],
    ) -> dict[str, Any]:
        with archive.sessions() as session, session.begin():
            try:
                ident = Identifier(body.system, body.patient_id)
                target = reconcile.assignable(session, pdqm.client(archive.settings), ident)
                if target is None:
                    raise HTTPException(404, f"no patient {body.patient_id!r} in registry or PAS")
                quarantine.assign(session, study_uid, target, actor=who.user, source=who.address)
            except quarantine.QuarantineError as e:
                raise HTTPException(409, str(e)) from None
            return {"study_uid": study_uid, "patient_id": target.patient_id}

    @r.post("/quarantine/studies/{study_uid}/reject")
    def reject(study_uid: str, who: Annotated[Caller, Depends(admin)]) -> dict[str, Any]:
        with archive.sessions() as session, session.begin():
            try:
                n = quarantine.reject(session, study_uid, actor=who.user, source=who.address)
            except quarantine.QuarantineError as e:
                raise HTTPException(409, str(e)) from None
        removal.purge(archive.sessions, archive.store)
        return {"study_uid": study_uid, "deleted_objects": n}

    return r
