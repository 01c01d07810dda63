"""The EPR (EPJ) API under /epj/v1: a patient's studies with their key findings, key images,
and signed short-lived links that open the key-image page for one named clinician."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage import keyobjects, outbound, registry
from storage.archive import Archive
from storage.audit import AuditTrail
from storage.demographics import OID_PREFIX, Identifier
from storage.intake import Intake
from storage.models import (
    VISIBLE,
    Finding,
    Instance,
    KeyImage,
    Patient,
    PatientStatus,
    Rejection,
    Series,
    Study,
)
from storage.query import NOT_REJECTED
from viewer import pages
from viewer.auth import Caller, authenticate, permit, requires
from viewer.images import ImageService, frames_shown, order_number
from viewer.render import RenderError, View, Window

EPR_ROLES = frozenset({"epr", "clinician", "radiologist", "radiology-admin"})
Epr = Annotated[Caller, Depends(requires(EPR_ROLES, "the EPR API"))]
LINK_AUDIENCE = "pacsbroker-epr-link"
# The EPR system vouches for the clinician it names; anyone else gets links for themself only.
LINK_ISSUER_ROLE = "epr"
MAX_LINK_TTL = 3600
IID_USAGE = (
    "IID needs requestType=STUDY with studyUID or accessionNumber, "
    "or requestType=PATIENT with patientID"
)
# A valid link opened in a browser starts a session for the same scope, in an HttpOnly cookie
# limited to the link's path, so the full-study viewer keeps working after the link expires.
SESSION_AUDIENCE = "pacsbroker-epr-session"
SESSION_COOKIE = "pacsbroker_epr"
SESSION_SECONDS = 8 * 3600
_SCOPE_CLAIMS = ("sub", "pid", "study", "iss", "iat")
_bearer = HTTPBearer(auto_error=False)


class KeyImageOut(BaseModel):
    series_uid: str
    sop_uid: str
    frame: int = Field(description="1-based frame to show")
    title: str = Field(description="KOS document title, e.g. 'For Referring Provider'")
    image_url: str


class StudyOut(BaseModel):
    study_uid: str
    date: str = Field(description="YYYYMMDD")
    time: str
    modalities: list[str]
    description: str
    accession_number: str
    finding_text: str = Field(description="From KOS descriptions and SR reports in the study")
    key_image_count: int
    key_images: list[KeyImageOut]


class PatientStudies(BaseModel):
    patient_id: str
    name: str
    birth_date: str
    sex: str
    studies: list[StudyOut] = Field(description="Newest first")


class LinkRequest(BaseModel):
    clinician: str = Field(min_length=1, max_length=128, description="Who will open the link")
    patient_id: str = Field(min_length=1, max_length=64)
    system: str = Field(default="", description="Identifier system URI, if ambiguous")
    study_uid: str | None = Field(default=None, description="Limit the link to this study")
    ttl_seconds: int = Field(default=300, ge=10, le=MAX_LINK_TTL)


class MarkRequest(BaseModel):
    sop_uids: list[str] = Field(min_length=1, max_length=500, description="Images of the study")
    title_code: str = Field(default="113000", description="CID 7010 title; 113000 Of Interest")
    description: str = Field(default="", max_length=1024, description="Finding text")


class MarkOut(BaseModel):
    kos_sop_uid: str = Field(description="The new Key Object Selection document")
    key_images: int


class LinkOut(BaseModel):
    url: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Scope:
    """What a signed link opens: one patient, and one study of it when `study_uid` is set."""

    clinician: str
    patient_fk: int
    study_uid: str
    issuer: str

    def caller(self, request: Request) -> Caller:
        """The clinician the link names, as the caller of a read through it."""
        return Caller(self.clinician, "epr-link", request.client.host if request.client else "")

    def covers(self, patient_fk: int, study_uid: str) -> bool:
        return patient_fk == self.patient_fk and self.study_uid in ("", study_uid)


def _patient(session: Session, patient_id: str, system: str) -> Patient:
    patient = registry.find(session, Identifier(system, patient_id))
    if patient is None or patient.status not in VISIBLE:
        raise HTTPException(404, "no such patient in the archive")
    if patient.patient_id != patient_id and _merged_away(session, patient_id, patient):
        # as C-FIND and QIDO: the ID is an alias now, so the EPR is told which one to use
        raise HTTPException(
            404, f"patient {patient_id} was merged into {patient.patient_id} in PAS; use that ID"
        )
    return patient


def _merged_away(session: Session, patient_id: str, into: Patient) -> bool:
    """Whether `patient_id` is the ID of a patient PAS merged into `into`."""
    merged = select(Patient).where(
        Patient.patient_id == patient_id, Patient.status == PatientStatus.MERGED
    )
    return any(registry.survivor(session, p).id == into.id for p in session.scalars(merged))


def _source_kept(sop_uid: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """The KOS or SR a key image or finding came from has not itself been rejected (IOCM)."""
    return ~exists().where(Rejection.sop_uid == sop_uid)


def studies_of(
    session: Session, patient: Patient, base: str, only_study: str = ""
) -> list[StudyOut]:
    """The patient's studies, newest first, each with its key images and finding text."""
    stmt = select(Study).where(Study.patient_fk == patient.id)
    if only_study:
        stmt = stmt.where(Study.study_uid == only_study)
    studies = list(session.scalars(stmt.order_by(Study.study_date.desc(), Study.study_time.desc())))
    out = []
    for st in studies:
        modalities = sorted(
            {
                m
                for m in session.scalars(select(Series.modality).where(Series.study_fk == st.id))
                if m
            }
        )
        keys = session.execute(
            select(KeyImage)
            .join(Instance, Instance.sop_uid == KeyImage.sop_uid)
            .where(
                KeyImage.study_uid == st.study_uid,
                NOT_REJECTED,
                _source_kept(KeyImage.kos_sop_uid),
            )
            .order_by(KeyImage.id)
        ).scalars()
        seen: dict[str, KeyImageOut] = {}
        for k in keys:
            frame = int(k.frames.split("\\")[0]) if k.frames else 1
            seen.setdefault(
                k.sop_uid,
                KeyImageOut(
                    series_uid=k.series_uid,
                    sop_uid=k.sop_uid,
                    frame=frame,
                    title=k.title_meaning,
                    image_url=f"{base}/studies/{st.study_uid}/key-images/{k.sop_uid}"
                    f"/image?frame={frame}",
                ),
            )
        texts = session.scalars(
            select(Finding.text)
            .where(Finding.study_uid == st.study_uid, _source_kept(Finding.sop_uid))
            .order_by(Finding.id)
        )
        out.append(
            StudyOut(
                study_uid=st.study_uid,
                date=st.study_date,
                time=st.study_time,
                modalities=modalities,
                description=st.description,
                accession_number=st.accession_number,
                finding_text="\n\n".join(t for t in texts if t),
                key_image_count=len(seen),
                key_images=list(seen.values()),
            )
        )
    return out


def _view(frame: int, window: str | None, size: int | None, fmt: str) -> View:
    try:
        return View(
            frame=frame,
            window=Window.parse(window) if window else None,
            size=size,
            fmt="png" if fmt == "png" else "jpeg",
        )
    except RenderError as e:
        raise HTTPException(400, str(e)) from None


class Epj:
    def __init__(self, archive: Archive, trail: AuditTrail, intake: Intake | None) -> None:
        self.trail = trail
        self.archive = archive
        self.intake = intake

    def _audit(
        self,
        who: Caller,
        action: str,
        patient: Patient,
        studies: list[str],
        scope: Scope | None = None,
    ) -> None:
        self.trail.record(
            actor=who.user,
            role=who.role,
            source=who.address,
            action=action,
            patients=[(patient.patient_id, s) for s in studies] or [(patient.patient_id, "")],
            detail=f"link issued by {scope.issuer}" if scope else "",
        )

    def patient_studies(
        self, request: Request, who: Caller, patient_id: str, system: str
    ) -> PatientStudies:
        with self.archive.sessions() as session:
            patient = _patient(session, patient_id, system)
            studies = studies_of(session, patient, _base(request))
            self._audit(who, "epr.studies", patient, [s.study_uid for s in studies])
            return PatientStudies(
                patient_id=patient.patient_id,
                name=patient.name,
                birth_date=patient.birth_date,
                sex=patient.sex,
                studies=studies,
            )

    def instance(
        self, who: Caller, study_uid: str, sop_uid: str, scope: Scope | None = None
    ) -> Instance:
        with self.archive.sessions() as session:
            found = outbound.visible_instances(session, study_uid, [sop_uid])
            if not found:
                raise HTTPException(404, "no such image in the archive")
            ((inst, patient),) = found
            if scope is not None and not scope.covers(patient.id, study_uid):
                raise HTTPException(403, "the link does not cover this image")
            self._audit(who, "epr.image", patient, [study_uid], scope)
            return inst

    def mark(
        self, who: Caller, study_uid: str, body: MarkRequest, scope: Scope | None = None
    ) -> MarkOut:
        """Mark key images: a new KOS goes through the spool and ingest like any object."""
        if self.intake is None:
            raise HTTPException(503, "this server does not accept new objects (no spool)")
        wanted = set(body.sop_uids)
        with self.archive.sessions() as session:
            rows = outbound.visible_instances(session, study_uid, wanted)
            if len(rows) != len(wanted):
                raise HTTPException(404, "not every image named is in this study")
            patient = rows[0][1]
            if scope is not None and not scope.covers(patient.id, study_uid):
                raise HTTPException(403, "the link does not cover this study")
            insts = [inst for inst, _ in rows]
            modules = outbound.patient_modules(session, insts)
            refs = [outbound.indexed_header(i, modules[i.id]) for i in insts]
            self._audit(who, "epr.mark-key-images", patient, [study_uid], scope)
        try:
            payload = keyobjects.build(
                refs,
                title_code=body.title_code,
                description=body.description,
                author=who.user,
                uid_root=self.archive.settings.uid_root,
            )
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        try:
            ident = self.intake.accept(payload, source=f"KOS:{who.user}"[:64], address=who.address)
        except OSError as e:
            raise HTTPException(503, f"the spool cannot be written: {e}") from None
        return MarkOut(kos_sop_uid=ident.sop_uid, key_images=len(refs))

    def invoke(self, request: Request, who: Caller) -> RedirectResponse:
        """IHE IID: open the images for a patient or a study in the caller's browser."""
        q = request.query_params
        kind = q.get("requestType", "").upper()
        if kind == "STUDY":
            patient_id, studies = self._iid_studies(
                q.get("studyUID", ""), q.get("accessionNumber", "")
            )
            # several studies of the patient: the patient's page, which lists them all
            one = studies[0] if len(studies) == 1 else ""
            body = LinkRequest(clinician=who.user, patient_id=patient_id, study_uid=one)
        elif kind == "PATIENT" and q.get("patientID"):
            ident = _cx(q["patientID"])
            body = LinkRequest(clinician=who.user, patient_id=ident.value, system=ident.system)
        else:
            raise HTTPException(400, IID_USAGE)
        url = self.link(request, who, body).url
        if body.study_uid and q.get("keyImagesOnly", "").lower() != "true":
            url += f"/studies/{body.study_uid}"
        if "lang" in q:
            url += f"?lang={pages.lang_of(q['lang'])}"
        return RedirectResponse(url, status_code=303)

    def _iid_studies(self, study_uids: str, accessions: str) -> tuple[str, list[str]]:
        """(patient ID, study UIDs) of an IID STUDY request: the studies its studyUID and
        accessionNumber lists name (RAD TF-3 4.106.4.1.2.2), which must be one patient's."""
        uids = [u for u in study_uids.split(",") if u]
        numbers = [a for a in accessions.split(",") if a]
        if not uids and not numbers:
            raise HTTPException(400, IID_USAGE)
        found: dict[str, str] = {}
        with self.archive.sessions() as session:
            for column, values in ((Study.study_uid, uids), (Study.accession_number, numbers)):
                for value in values:
                    rows = session.execute(
                        select(Patient.patient_id, Study.study_uid)
                        .join(Study, Study.patient_fk == Patient.id)
                        .where(column == value, Patient.status.in_(VISIBLE))
                    ).all()
                    if not rows:
                        raise HTTPException(404, f"no such study in the archive: {value}")
                    if len(rows) > 1:  # accession numbers are unique per issuer only
                        raise HTTPException(
                            400, f"{len(rows)} studies have accession number {value}; give studyUID"
                        )
                    found[rows[0][1]] = rows[0][0]
        if uids and numbers and set(found) != set(uids):
            raise HTTPException(400, "studyUID and accessionNumber name different studies")
        if len(set(found.values())) > 1:
            raise HTTPException(400, "the studies requested are of different patients")
        return next(iter(found.values())), list(found)

    def link(self, request: Request, who: Caller, body: LinkRequest) -> LinkOut:
        if body.clinician != who.user and who.role != LINK_ISSUER_ROLE:
            raise HTTPException(
                403,
                f"only the role {LINK_ISSUER_ROLE!r} may issue links for another clinician; "
                f"a {who.role!r} token gets links for {who.user!r} only",
            )
        with self.archive.sessions() as session:
            patient = _patient(session, body.patient_id, body.system)
            if body.study_uid:
                owner = session.scalar(
                    select(Study.patient_fk).where(Study.study_uid == body.study_uid)
                )
                if owner != patient.id:
                    raise HTTPException(404, "the study is not this patient's")
            self._audit(
                who,
                f"epr.link-issued for {body.clinician}",
                patient,
                [body.study_uid or ""],
            )
            pid = patient.id
        now = int(time.time())
        claims = {
            "aud": LINK_AUDIENCE,
            "sub": body.clinician,
            "pid": pid,
            "study": body.study_uid or "",
            "iss": who.user,
            "iat": now,
            "exp": now + body.ttl_seconds,
        }
        token = jwt.encode(claims, request.app.state.signing_key, algorithm="HS256")
        return LinkOut(
            url=f"{_base(request)}/open/{token}",
            expires_at=dt.datetime.fromtimestamp(now + body.ttl_seconds, dt.UTC),
        )

    def scope(self, request: Request, token: str) -> Scope:
        """What the link opens; after it expires, what the browser's session for it opens."""
        try:
            claims = _decode(request, token, LINK_AUDIENCE)
        except jwt.ExpiredSignatureError:
            session = _session_claims(request, token)
            if session is None:
                raise pages.LinkError(
                    "Lenken er utløpt. Åpne den på nytt fra journalen.",
                    "The link has expired. Open it again from the patient record.",
                ) from None
            claims = session
        except jwt.InvalidTokenError:
            raise pages.LinkError("Lenken er ugyldig.", "The link is not valid.") from None
        return Scope(
            str(claims["sub"]),
            int(claims["pid"]),
            str(claims.get("study", "")),
            str(claims.get("iss", "")),
        )

    def start_session(self, request: Request, token: str, response: Response) -> None:
        """Give the browser a session for the link's scope while the link itself is valid;
        one opened through the session is not prolonged."""
        try:
            claims = _decode(request, token, LINK_AUDIENCE)
        except jwt.InvalidTokenError:
            return
        now = int(time.time())
        session = {k: claims[k] for k in _SCOPE_CLAIMS if k in claims}
        session.update(aud=SESSION_AUDIENCE, exp=now + SESSION_SECONDS)
        response.set_cookie(
            SESSION_COOKIE,
            jwt.encode(session, request.app.state.signing_key, algorithm="HS256"),
            max_age=SESSION_SECONDS,
            path=f"{urlsplit(_base(request)).path}/open/{token}",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def study(self, request: Request, token: str, study_uid: str) -> dict[str, Any]:
        """Series and instances of one study in the link's scope, for the full-study viewer."""
        scope = self.scope(request, token)
        who = scope.caller(request)
        with self.archive.sessions() as session:
            row = session.execute(
                select(Study, Patient)
                .join(Study.patient)
                .where(Study.study_uid == study_uid, Patient.status.in_(VISIBLE))
            ).first()
            if row is None:
                raise HTTPException(404, "no such study in the archive")
            study, patient = row
            if not scope.covers(patient.id, study_uid):
                raise HTTPException(403, "the link does not cover this study")
            series_out = []
            for se in session.scalars(select(Series).where(Series.study_fk == study.id)):
                insts = session.scalars(
                    select(Instance).where(Instance.series_fk == se.id, NOT_REJECTED)
                ).all()
                ordered = sorted(insts, key=lambda i: (order_number(i.instance_number), i.id))
                shown = [(i, n) for i in ordered if (n := frames_shown(i))]
                if not shown:
                    continue  # the viewer shows images; KOS and SR feed the key-image page
                series_out.append(
                    {
                        "series_uid": se.series_uid,
                        "number": se.series_number,
                        "modality": se.modality,
                        "description": se.description,
                        "instances": [{"sop_uid": i.sop_uid, "frames": n} for i, n in shown],
                    }
                )
            series_out.sort(key=lambda x: order_number(str(x["number"])))
            self._audit(who, "epr.study-viewer", patient, [study_uid], scope)
            return {
                "study_uid": study_uid,
                "date": study.study_date,
                "description": study.description,
                "patient": {"id": patient.patient_id, "name": patient.name},
                "series": series_out,
            }

    def open_page(self, request: Request, token: str, lang: str) -> HTMLResponse:
        scope = self.scope(request, token)
        who = scope.caller(request)
        base = f"{_base(request)}/open/{token}"
        with self.archive.sessions() as session:
            patient = session.get(Patient, scope.patient_fk)
            if patient is None or patient.status not in VISIBLE:
                raise pages.LinkError("Pasienten finnes ikke.", "No such patient.")
            studies = studies_of(session, patient, base, scope.study_uid)
            for st in studies:
                for k in st.key_images:
                    k.image_url = f"{base}/images/{st.study_uid}/{k.sop_uid}?frame={k.frame}"
            studies_shown = [s.study_uid for s in studies]
            self._audit(who, "epr.key-image-page", patient, studies_shown, scope)
            return HTMLResponse(pages.key_images(patient, studies, lang, who.user, base))


def _decode(request: Request, token: str, audience: str, verify_exp: bool = True) -> dict[str, Any]:
    return jwt.decode(
        token,
        request.app.state.signing_key,
        algorithms=["HS256"],
        audience=audience,
        options={"require": ["exp", "sub", "pid"], "verify_exp": verify_exp},
    )


def _session_claims(request: Request, token: str) -> dict[str, Any] | None:
    """The browser's unexpired session for this (expired but genuine) link, if it has one."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        link = _decode(request, token, LINK_AUDIENCE, verify_exp=False)
        session = _decode(request, cookie, SESSION_AUDIENCE)
    except jwt.InvalidTokenError:
        return None
    # the cookie must be this link's: a session never widens or moves the scope
    return session if all(link.get(k) == session.get(k) for k in _SCOPE_CLAIMS) else None


def _cx(value: str) -> Identifier:
    """An HL7 CX patient ID, `ID^^^namespace&OID&ISO`: the value and its assigning authority's
    universal ID as the system (none when only a namespace, or nothing, is given)."""
    pid, _, rest = value.partition("^^^")
    authority = rest.split("^")[0].split("&")
    oid = authority[1] if len(authority) >= 2 else ""
    return Identifier(f"{OID_PREFIX}{oid}" if oid else "", pid)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/epj/v1"


def router(
    archive: Archive, images: ImageService, trail: AuditTrail, intake: Intake | None
) -> APIRouter:
    epj = Epj(archive, trail, intake)
    r = APIRouter(prefix="/epj/v1", tags=["epr"])

    @r.get("/patients/{patient_id}/studies", response_model=PatientStudies)
    def patient_studies(
        request: Request, who: Epr, patient_id: str, system: str = ""
    ) -> PatientStudies:
        """A patient's studies, newest first, with key findings and key-image links."""
        return epj.patient_studies(request, who, patient_id, system)

    @r.get("/studies/{study_uid}/key-images/{sop_uid}/image")
    def key_image(
        who: Epr,
        study_uid: str,
        sop_uid: str,
        frame: Annotated[int, Query(ge=1)] = 1,
        window: str | None = None,
        size: Annotated[int | None, Query(ge=16, le=4096)] = None,
        format: str = "jpeg",
    ) -> Response:
        """A rendered image (JPEG or PNG) with an optional window preset or center,width."""
        inst = epj.instance(who, study_uid, sop_uid)
        return images.response(inst, _view(frame, window, size, format))

    @r.post("/studies/{study_uid}/key-images", response_model=MarkOut, status_code=202)
    def mark(who: Epr, study_uid: str, body: MarkRequest) -> MarkOut:
        """Mark key images: creates a KOS, filed like any received object (202: on its way)."""
        return epj.mark(who, study_uid, body)

    @r.post(
        "/open/{token}/studies/{study_uid}/key-images",
        response_model=MarkOut,
        status_code=202,
        include_in_schema=False,
    )
    def mark_from_viewer(
        request: Request, token: str, study_uid: str, body: MarkRequest
    ) -> MarkOut:
        scope = epj.scope(request, token)
        who = scope.caller(request)
        return epj.mark(who, study_uid, body, scope)

    @r.post("/links", response_model=LinkOut)
    def link(request: Request, who: Epr, body: LinkRequest) -> LinkOut:
        """A signed, short-lived link for one clinician to one patient (optionally one study).
        Only the `epr` role may name another clinician than the caller (403 otherwise)."""
        return epj.link(request, who, body)

    @r.get("/open/{token}", response_class=HTMLResponse, include_in_schema=False)
    def open_link(request: Request, token: str, lang: str = "nb") -> HTMLResponse:
        page = epj.open_page(request, token, lang)
        epj.start_session(request, token, page)
        return page

    @r.get("/open/{token}/images/{study_uid}/{sop_uid}", include_in_schema=False)
    def open_image(
        request: Request,
        token: str,
        study_uid: str,
        sop_uid: str,
        frame: Annotated[int, Query(ge=1)] = 1,
        window: str | None = None,
        size: Annotated[int | None, Query(ge=16, le=4096)] = None,
    ) -> Response:
        scope = epj.scope(request, token)
        who = scope.caller(request)
        inst = epj.instance(who, study_uid, sop_uid, scope)
        return images.response(inst, _view(frame, window, size, "jpeg"))

    @r.get("/open/{token}/studies/{study_uid}.json", include_in_schema=False)
    def open_study_json(request: Request, token: str, study_uid: str) -> dict[str, Any]:
        return epj.study(request, token, study_uid)

    @r.get(
        "/open/{token}/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False
    )
    def open_study(request: Request, token: str, study_uid: str, lang: str = "nb") -> HTMLResponse:
        epj.scope(request, token)
        base = f"{_base(request)}/open/{token}"
        page = HTMLResponse(pages.study_viewer(base, study_uid, lang))
        epj.start_session(request, token, page)
        return page

    return r


def iid_router(archive: Archive, trail: AuditTrail) -> APIRouter:
    """IHE Invoke Image Display at the path the profile names, behind the same authentication;
    it is a browser launch, so its errors are pages, not JSON."""
    epj = Epj(archive, trail, None)
    r = APIRouter(tags=["epr"])

    @r.get("/IHEInvokeImageDisplay")
    def invoke(
        request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Response:
        """requestType=STUDY&studyUID=… or &accessionNumber=… (full study; keyImagesOnly=true
        for key images) or requestType=PATIENT&patientID=ID^^^&OID&ISO (key findings)."""
        try:
            who = permit(authenticate(request, creds), EPR_ROLES, "the EPR API")
            return epj.invoke(request, who)
        except HTTPException as e:
            return pages.request_error_page(request, e)

    return r


def install_link_errors(app: Any) -> None:
    """Expired or forged links get a readable page, never an image."""
    app.add_exception_handler(pages.LinkError, pages.link_error_page)
