"""DICOMweb (PS3.18) under /dicomweb: QIDO-RS search, WADO-RS retrieve and metadata, STOW-RS.

Search runs on the same matching engine as C-FIND and retrieve on the same outbound path as
C-MOVE, so every way out shows the same objects with the same (current PAS) demographics.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from python_multipart import MultipartParser
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import QueryParams

from storage import catalog, outbound
from storage.archive import Archive, sha256_of
from storage.audit import AuditTrail
from storage.dicomheader import InvalidObject, decode_attrs
from storage.intake import Intake
from storage.models import Instance, Series
from storage.objects import ObjectNotFound, ObjectStoreError
from storage.patientmodule import PatientModule
from storage.query import (
    COLUMNS,
    Level,
    Matcher,
    QueryError,
    keys_of,
    match,
    responses,
    tag_level,
)
from viewer.auth import CLINICAL_READERS, UPLOADERS, Caller, requires
from viewer.images import ImageService
from viewer.lookup import visible_instance
from viewer.readahead import read_ahead
from viewer.render import MEDIA, RenderError, View, Window

DICOM_JSON = "application/dicom+json"
# A retrieve reads up to this many objects, and this many bytes, ahead of the one it sends.
READ_AHEAD = 4
READ_AHEAD_BYTES = 64 << 20
# The threads of those reads, shared by every retrieve (and research view): a few retrieves at
# a time keep each other's reads going without one thread per object.
_READERS = ThreadPoolExecutor(2 * READ_AHEAD, thread_name_prefix="wado-read")
Uploader = Annotated[Caller, Depends(requires(UPLOADERS, "storing objects"))]
# matching options we do not offer: the search runs without them and says so (PS3.18 8.3.4)
_UNSUPPORTED = ("fuzzymatching", "emptyvaluematching", "multiplevaluematching")
_CONTROL = {"limit", "offset", "includefield", *_UNSUPPORTED}
_DEFAULT_KEYS = {
    Level.STUDY: [
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "InstanceAvailability",
    ],
    Level.SERIES: [
        "StudyInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
        "InstanceAvailability",
    ],
    Level.IMAGE: [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "InstanceAvailability",
    ],
}
# PS3.4 status codes used as STOW-RS failure reasons.
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700
_STUDY_MISMATCH = 0xA900
# PS3.7 Annex C general failure "Duplicate SOP Instance": the UID is archived with other bytes
_DUPLICATE_SOP = 0x0111
_RETRIEVE_URL = 0x00081190
# The patient module the registry holds: PAS is master, so includefield=all answers these from
# the registry at every level, never from the stored header's attributes.
_REGISTRY_PATIENT = [tag for tag, (level, _) in COLUMNS.items() if level is Level.PATIENT]
_PIXEL_DATA = 0x7FE00010
_MAX_COUNT = 2**31 - 1
_OCTETS = "application/octet-stream"
# PS3.18 Table 8.7.3-5: the media types of compressed frames and the syntaxes each carries;
# the first name of a syntax is the one answered when the client named none.
_FRAME_MEDIA = {
    "image/jpeg": (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1),
    "image/jls": (JPEGLSLossless, JPEGLSNearLossless),
    "image/jp2": (JPEG2000Lossless, JPEG2000),
    "image/jpx": (JPEG2000MCLossless, JPEG2000MC),
    "image/jphc": (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K),
    "image/x-dicom-rle": (RLELossless,),
    "image/dicom-rle": (RLELossless,),
}
_UNSUPPORTED_WARNING = '299 {host}: "The {name} parameter is not supported.{done}"'
# PS3.18 8.3.4.6 words the fuzzymatching warning so; the others were ignored alike
_DONE = {"fuzzymatching": " Only literal matching has been performed."}


def _tag(key: str) -> int:
    """A QIDO attribute given by keyword or by 8 hex digits."""
    if len(key) == 8:
        try:
            return int(key, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(key)
    if tag is None:
        raise HTTPException(400, f"unknown attribute {key!r} (a keyword or 8 hex digits)")
    return int(tag)


def _element(tag: int, value: str | None) -> DataElement:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise HTTPException(400, f"attribute {tag:08X} is not in the data dictionary") from None
    if vr == "SQ":
        if value is not None:
            raise HTTPException(400, f"sequence attribute {tag:08X} cannot be matched")
        return DataElement(tag, "SQ", [])
    if value is not None and vr == "UI":
        value = value.replace(",", "\\")  # QIDO lists UIDs with commas, DICOM with backslashes
    checked = value not in (None, "", "*")  # '*' stays universal matching, as in C-FIND
    if checked and vr in _MATCHABLE_TIMES and not _valid_range(value or "", _MATCHABLE_TIMES[vr]):
        raise HTTPException(
            400, f"{keyword_for_tag(tag) or f'{tag:08X}'}={value!r} is not a {vr} value or range"
        )
    return DataElement(tag, vr, value)


# PS3.4 C.2.2.2.5: a date or time, or a range of them with one end open
_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?")
_MATCHABLE_TIMES = {"DA": _DA, "TM": _TM}


def _valid_range(value: str, form: re.Pattern[str]) -> bool:
    ends = value.split("-")
    if len(ends) > 2 or not any(ends):
        return False
    for end in ends:
        if end and not form.fullmatch(end):
            return False
        if end and form is _DA:
            try:
                dt.date(int(end[:4]), int(end[4:6]), int(end[6:]))
            except ValueError:
                return False
    return True


@dataclass
class Search:
    level: Level
    identifier: Dataset
    limit: int | None
    offset: int
    everything: bool


def _search(request: Request, level: Level, parents: dict[str, str]) -> Search:
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for keyword in _DEFAULT_KEYS[level]:
        ds.add(_element(int(tag_for_keyword(keyword) or 0), None))
    everything = False
    params = request.query_params
    for field in (f for raw in params.getlist("includefield") for f in raw.split(",")):
        if field == "all":
            everything = True
            for tag in _REGISTRY_PATIENT:
                ds.add(_element(tag, None))
        elif field:
            ds.add(_element(_tag(field), None))
    for key, value in params.multi_items():
        if key in _CONTROL:
            continue
        ds.add(_element(_tag(key), value))
    for keyword, uid in parents.items():
        setattr(ds, keyword, uid)
    return Search(level, ds, _count(params, "limit"), _count(params, "offset") or 0, everything)


def _count(params: QueryParams, name: str) -> int | None:
    """limit or offset: digits only (int() would take '+5', ' 5', '1_0'), within SQL's range."""
    raw = params.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) > _MAX_COUNT:
        raise HTTPException(400, f"{name} is a whole number from 0 to {_MAX_COUNT}, not {raw!r}")
    return int(raw)


def _study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def _url(base: str, hit: Any, level: Level) -> str:
    url = _study_url(base, hit.study.study_uid)
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{hit.series.series_uid}"
    if level is Level.IMAGE:
        url += f"/instances/{hit.instance.sop_uid}"
    return url


def _add_everything(ds: Dataset, hit: Any, level: Level) -> None:
    """includefield=all: every stored attribute of the level or above it that the answer does
    not hold yet (it holds the registry's patient module)."""
    depth = {Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}
    attrs = hit.attrs(level)
    if attrs is None:
        return
    for elem in attrs:
        if elem.tag in ds or elem.tag.is_private or elem.VR in ("OB", "OW", "UN", "SQ"):
            continue
        owner = tag_level(int(elem.tag))
        if depth.get(owner, 0) <= depth[level]:
            ds.add(elem)


def _base(request: Request, prefix: str = "/dicomweb") -> str:
    return str(request.base_url).rstrip("/") + prefix


@dataclass(frozen=True)
class MediaRange:
    media: str
    params: dict[str, str]

    def param(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)


def _media_ranges(request: Request) -> list[MediaRange]:
    """The Accept header's media ranges, most preferred first (q=0 ones left out)."""
    ranked: list[tuple[float, MediaRange]] = []
    for entry in (request.headers.get("accept", "") or "*/*").split(","):
        media, *params = (p.strip() for p in entry.split(";"))
        values = {
            k.strip().lower(): v.strip().strip('"')
            for k, _, v in (p.partition("=") for p in params)
        }
        try:
            q = float(values.pop("q", "1"))
        except ValueError:
            raise HTTPException(400, f"bad q-value in Accept: {entry.strip()!r}") from None
        if media and q > 0:
            ranked.append((q, MediaRange(media.lower(), values)))
    ranked.sort(key=lambda r: -r[0])  # stable: equal q-values keep the client's order
    return [r for _, r in ranked]


def _dicom_syntaxes(request: Request) -> list[str]:
    """The transfer syntaxes a WADO-RS retrieve may answer in, most preferred first
    ("*": as stored); explicit VR little endian where a range names none (PS3.18 8.7.3)."""
    wanted: list[str] = []
    for r in _media_ranges(request):
        if r.media in ("*/*", "multipart/*") or (
            r.media == "multipart/related"
            and r.param("type", "application/dicom") == "application/dicom"
        ):
            wanted.append(r.param("transfer-syntax") or str(ExplicitVRLittleEndian))
    if not wanted:
        raise HTTPException(
            406, 'this resource is sent as multipart/related; type="application/dicom"'
        )
    return wanted


def _accept_json(request: Request) -> None:
    """QIDO, metadata and STOW answer in DICOM JSON only; dicom+xml alone is refused (406)."""
    ok = {DICOM_JSON, "application/json", "application/*", "*/*"}
    if not any(r.media in ok for r in _media_ranges(request)):
        raise HTTPException(406, f"this resource is sent as {DICOM_JSON}")


@dataclass(frozen=True)
class FrameAnswer:
    """How frames go out: decoded (octet-stream, explicit VR little endian) or as stored."""

    media: str
    syntax: str

    @property
    def decoded(self) -> bool:
        return self.media == _OCTETS

    @property
    def part_type(self) -> str:
        return f"{self.media}; transfer-syntax={self.syntax}"


_DECODED = FrameAnswer(_OCTETS, str(ExplicitVRLittleEndian))


def _as_stored(stored_ts: str) -> FrameAnswer | None:
    if not UID(stored_ts).is_compressed:
        return _DECODED
    media = next((m for m, syntaxes in _FRAME_MEDIA.items() if stored_ts in syntaxes), None)
    return FrameAnswer(media, stored_ts) if media else None


def _frame_range(r: MediaRange, stored_ts: str, default_type: str | None) -> FrameAnswer | None:
    """What one Accept media range allows for frames stored in `stored_ts`; `default_type`
    (None: as stored) is the part type when the range names none."""
    if r.media == "multipart/related":
        kind = r.param("type", default_type)
    elif r.media in ("*/*", "multipart/*"):
        kind = default_type
    else:
        return None  # frames are always multipart (PS3.18 8.7.3.5)
    if kind in ("*", "*/*"):  # dicomweb-client's default part type: any
        kind = default_type
    syntax = r.param("transfer-syntax")
    if kind is None or syntax == "*":
        return _as_stored(stored_ts)
    if kind == _OCTETS:
        return _DECODED if syntax in (None, ExplicitVRLittleEndian) else None
    if stored_ts in _FRAME_MEDIA.get(kind, ()) and syntax in (None, stored_ts):
        return FrameAnswer(kind, stored_ts)
    return None


def _frame_answer(request: Request, stored_ts: str, default_type: str | None) -> FrameAnswer:
    """The first acceptable way to send frames of an object stored in `stored_ts`, or 406."""
    for r in _media_ranges(request):
        answer = _frame_range(r, stored_ts, default_type)
        if answer is not None:
            return answer
    raise HTTPException(
        406,
        f"frames of this instance are {_OCTETS}"
        + (f" or {a.part_type}" if (a := _as_stored(stored_ts)) and not a.decoded else "")
        + ", as multipart/related",
    )


def _multipart(parts: Iterator[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    for content_type, body in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def _multipart_async(
    parts: AsyncIterator[tuple[str, bytes] | None], boundary: str
) -> AsyncIterator[bytes]:
    """_multipart for parts read ahead (None: a part that could not be read, left out). An
    async iterator, because Starlette runs each step of a sync one in a worker thread."""
    async for part in parts:
        if part is not None:
            content_type, body = part
            yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
            yield body
            yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _pixel_vr(transfer_syntax: str, header: Dataset) -> str:
    if UID(transfer_syntax).is_compressed:
        return "OB"
    return "OW" if int(header.get("BitsAllocated", 8) or 8) > 8 else "OB"


def _bulk_uri(instance_url: str) -> Callable[[DataElement], str]:
    def uri(elem: DataElement) -> str:
        return f"{instance_url}/bulk/{int(elem.tag):08X}"

    return uri


def _viewport(raw: str) -> tuple[int | None, int | None]:
    """PS3.18 viewport=vw,vh (either may be empty; the source region is not supported)."""
    vw, _, vh = raw.partition(",")
    vh = vh.split(",")[0]
    try:
        box = (int(vw) if vw else None, int(vh) if vh else None)
    except ValueError:
        raise HTTPException(400, "viewport is 'width,height'") from None
    if any(v is not None and v < 1 for v in box):
        raise HTTPException(400, "viewport width and height are at least 1")
    return box


def _fit(box: tuple[int | None, int | None], inst: Instance) -> int | None:
    """The longest side that fits the image into the box keeping its aspect ratio (the
    renderer scales the longest side down to it)."""
    vw, vh = box
    if vw is None or vh is None or vw == vh:
        return vw or vh
    header = decode_attrs(inst.attrs, inst.attrs_ts)
    width, height = int(header.get("Columns", 0) or 0), int(header.get("Rows", 0) or 0)
    if not width or not height:
        return min(vw, vh)
    scale = min(vw / width, vh / height)
    return max(1, int(max(width, height) * scale))


def _view(request: Request, inst: Instance, frame: int, thumbnail: bool) -> View:
    """WADO-RS rendering parameters: Accept, window, viewport, quality."""
    accept = request.headers.get("accept", "") or "image/jpeg"
    fmt = next(
        (f for f, media in MEDIA.items() if media in accept),
        "jpeg" if ("*/*" in accept or "image/*" in accept) else "",
    )
    if not fmt:
        raise HTTPException(406, "rendered images are image/jpeg or image/png")
    params = request.query_params
    try:
        window = Window.parse(params["window"]) if "window" in params else None
        quality = int(params.get("quality", 90))
    except RenderError as e:
        raise HTTPException(400, str(e)) from None
    except ValueError:
        raise HTTPException(400, "quality is 1-100") from None
    size = _fit(_viewport(params["viewport"]), inst) if "viewport" in params else None
    if thumbnail:
        size = min(size or 128, 256)
    return View(frame=frame, window=window, size=size, fmt=fmt, quality=max(1, min(quality, 100)))


def _multipart_response(parts: Iterator[tuple[str, bytes]], kind: str) -> StreamingResponse:
    boundary = uuid.uuid4().hex
    return StreamingResponse(
        _multipart(parts, boundary),
        media_type=f'multipart/related; type="{kind}"; boundary={boundary}',
    )


class DicomWeb:
    def __init__(
        self,
        archive: Archive,
        images: ImageService,
        trail: AuditTrail,
        intake: Intake | None,
        stow_max_bytes: int,
        *,
        prefix: str = "/dicomweb",
        issuer: str | None = None,
    ) -> None:
        self.trail = trail
        self.images = images
        self.archive = archive
        self.intake = intake
        self.stow_max_bytes = stow_max_bytes
        self.prefix = prefix
        # a view of one research project: only patients under this Issuer of Patient ID
        self.issuer = issuer

    # QIDO-RS

    def search(
        self, request: Request, who: Caller, level: Level, parents: dict[str, str]
    ) -> Response:
        _accept_json(request)
        if self.issuer is not None:
            parents = {**parents, "IssuerOfPatientID": self.issuer}
        q = _search(request, level, parents)
        base = _base(request, self.prefix)
        pn_ci = self.archive.settings.pn_case_insensitive
        with self.archive.sessions() as session:
            try:
                hits = match(
                    session,
                    level,
                    q.identifier,
                    pn_case_insensitive=pn_ci,
                    limit=q.limit,
                    offset=q.offset,
                )
                answers = list(
                    responses(
                        session,
                        level,
                        hits,
                        q.identifier,
                        retrieve_ae=self.archive.settings.ae_title,
                    )
                )
            except QueryError as e:
                raise HTTPException(400, str(e)) from None
            out = []
            for hit, ds in zip(hits, answers, strict=True):
                del ds.QueryRetrieveLevel
                if q.everything:
                    _add_everything(ds, hit, level)
                ds.add(DataElement(_RETRIEVE_URL, "UR", _url(base, hit, level)))
                out.append(ds.to_json_dict(suppress_invalid_tags=True))
            self.trail.record(
                actor=who.user,
                role=who.role,
                source=who.address,
                action="dicomweb.search",
                detail=f"{level.value.lower()} search, {len(out)} results: {request.url.query}",
                patients=[
                    (h.patient.patient_id, h.study.study_uid if h.study else "") for h in hits
                ],
            )
        warnings = [
            _UNSUPPORTED_WARNING.format(
                host=request.url.netloc, name=name, done=_DONE.get(name, "")
            )
            for name in _UNSUPPORTED
            if request.query_params.get(name, "").lower() == "true"
        ]
        headers = {"Warning": ", ".join(warnings)} if warnings else {}
        return Response(_json(out), media_type=DICOM_JSON, headers=headers)

    # WADO-RS

    def _select(
        self, session: Session, study: str, series: str | None, sop: str | None
    ) -> list[Instance]:
        ids = Dataset()
        if self.issuer is not None:
            ids.IssuerOfPatientID = self.issuer
        ids.StudyInstanceUID = study
        level = Level.STUDY
        if series is not None:
            ids.SeriesInstanceUID = series
            level = Level.SERIES
        if sop is not None:
            ids.SOPInstanceUID = sop
            level = Level.IMAGE
        matcher = Matcher(level, keys_of(ids), pn_case_insensitive=False)
        instances = outbound.instances_of(session, level, list(matcher.hits(session)))
        if not instances:
            what = "instance" if sop else "series" if series else "study"
            raise HTTPException(404, f"no such {what} in the archive")
        return instances

    def _read(
        self, who: Caller, action: str, study: str, series: str | None, sop: str | None
    ) -> tuple[list[Instance], dict[int, Any], dict[int, str]]:
        """The selected instances, their current patient modules and series UIDs; audited."""
        with self.archive.sessions() as session:
            instances = self._select(session, study, series, sop)
            patients = outbound.patient_modules(session, instances)
            rows = session.execute(
                select(Instance.id, Series.series_uid)
                .join(Instance.series)
                .where(Instance.id.in_([i.id for i in instances]))
            )
            series_of = {iid: uid for iid, uid in rows}
            self.trail.record(
                actor=who.user,
                role=who.role,
                source=who.address,
                action=action,
                detail=f"{len(instances)} instances of study {study}",
                patients={(pm.patient_id, study) for pm in patients.values()},
            )
        return instances, patients, series_of

    def _one(self, who: Caller, action: str, study: str, series: str, sop: str) -> Instance:
        """One visible instance by its three UIDs, in a single query; audited."""
        found = visible_instance(self.archive.engine, study, series, sop)
        if found is None or (self.issuer is not None and found.issuer != self.issuer):
            raise HTTPException(404, "no such instance in the archive")
        self.trail.record(
            actor=who.user,
            role=who.role,
            source=who.address,
            action=action,
            detail=f"instance {sop}",
            patients=[(found.patient_id, study)],
        )
        return found.instance

    def retrieve(
        self,
        request: Request,
        who: Caller,
        study: str,
        series: str | None = None,
        sop: str | None = None,
    ) -> StreamingResponse:
        wanted = _dicom_syntaxes(request)
        instances, patients, _ = self._read(who, "dicomweb.retrieve", study, series, sop)
        plan = [
            (inst, ts)
            for inst in instances
            if (ts := outbound.serving_syntax(inst.transfer_syntax, wanted))
        ]
        if not plan:
            raise HTTPException(406, f"no instance can be sent in {', '.join(wanted)}")
        store = self.archive.store

        def read(inst: Instance, ts: str) -> tuple[str, bytes] | None:
            try:
                body = outbound.part10(store, inst, patients[inst.id], ts)
            except (ObjectNotFound, ObjectStoreError, outbound.NotServable):
                return None  # logged by the store or the decoder; the client sees it missing
            return f"application/dicom; transfer-syntax={ts}", body

        jobs = [(inst.size, functools.partial(read, inst, ts)) for inst, ts in plan]
        parts = read_ahead(jobs, _READERS, READ_AHEAD, READ_AHEAD_BYTES)
        boundary = uuid.uuid4().hex
        return StreamingResponse(
            _multipart_async(parts, boundary),
            media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        )

    def metadata(
        self,
        request: Request,
        who: Caller,
        study: str,
        series: str | None = None,
        sop: str | None = None,
    ) -> Response:
        """From the index alone: the stored attributes up to the pixel data, current patient
        module, and BulkDataURIs for every large binary value."""
        _accept_json(request)
        instances, patients, series_of = self._read(who, "dicomweb.metadata", study, series, sop)
        base = _base(request, self.prefix)
        out = []
        for inst in instances:
            ds = outbound.indexed_header(inst, patients[inst.id])
            url = f"{base}/studies/{study}/series/{series_of[inst.id]}/instances/{inst.sop_uid}"
            item = ds.to_json_dict(
                bulk_data_threshold=1024,
                bulk_data_element_handler=_bulk_uri(url),
                # one malformed value (an IS of '1A') must not fail the whole answer
                suppress_invalid_tags=True,
            )
            if "Rows" in ds:  # an image: its pixel data was not indexed, but it is there
                item[f"{_PIXEL_DATA:08X}"] = {
                    "vr": _pixel_vr(inst.transfer_syntax, ds),
                    "BulkDataURI": f"{url}/bulk/{_PIXEL_DATA:08X}",
                }
            out.append(item)
        return Response(_json(out), media_type=DICOM_JSON)

    def bulk(
        self, request: Request, who: Caller, ids: tuple[str, str, str], tag: str
    ) -> StreamingResponse:
        """A binary value as stored; encapsulated pixel data frame by frame, as frames with
        transfer-syntax=* would be (or decoded, if the client asks for octet-stream)."""
        try:
            number = int(tag, 16)
        except ValueError:
            raise HTTPException(404, f"instance has no bulk data {tag!r}") from None
        inst = self._one(who, "dicomweb.bulkdata", *ids)
        if number == _PIXEL_DATA and UID(inst.transfer_syntax).is_compressed:
            answer = _frame_answer(request, inst.transfer_syntax, None)
            frames = self._frames(inst, None, answer)
            if answer.decoded:
                frames = [b"".join(frames)]
            return _multipart_response(((answer.part_type, f) for f in frames), answer.media)
        try:
            value = outbound.bulk_value(self.archive.store, inst, number)
        except ValueError:
            raise HTTPException(404, f"instance has no bulk data {tag!r}") from None
        except (ObjectNotFound, ObjectStoreError) as e:
            raise HTTPException(503, f"object unreadable: {e}") from None
        return _multipart_response(iter([(_OCTETS, value)]), _OCTETS)

    def frames(
        self, request: Request, who: Caller, ids: tuple[str, str, str], numbers: str
    ) -> StreamingResponse:
        try:
            wanted = [int(n) for n in numbers.split(",")]
        except ValueError:
            raise HTTPException(400, "frames are listed as 1-based numbers: 1,2,3") from None
        inst = self._one(who, "dicomweb.frames", *ids)
        answer = _frame_answer(request, inst.transfer_syntax, _OCTETS)
        frames = self._frames(inst, wanted, answer)
        return _multipart_response(((answer.part_type, f) for f in frames), answer.media)

    def _frames(
        self, inst: Instance, numbers: list[int] | None, answer: FrameAnswer
    ) -> list[bytes]:
        """The frames (None: all) decoded or as stored, per `answer`."""
        read = outbound.frames if answer.decoded else outbound.stored_frames
        try:
            return read(self.archive.store, inst, numbers)
        except IndexError as e:
            raise HTTPException(404, str(e)) from None
        except ValueError as e:
            raise HTTPException(406, str(e)) from None
        except (ObjectNotFound, ObjectStoreError) as e:
            raise HTTPException(503, f"object unreadable: {e}") from None

    def rendered(
        self,
        request: Request,
        who: Caller,
        ids: tuple[str, str, str],
        frame: int = 1,
        thumbnail: bool = False,
    ) -> Response:
        inst = self._one(who, "dicomweb.rendered", *ids)
        return self.images.response(inst, _view(request, inst, frame, thumbnail))

    async def rendered_async(
        self, request: Request, who: Caller, ids: tuple[str, str, str]
    ) -> Response:
        """The hot path of a viewer: one indexed lookup, then the cache or a worker thread."""
        inst = self._one(who, "dicomweb.rendered", *ids)
        return await self.images.response_async(inst, _view(request, inst, 1, False))

    def wado_uri(self, request: Request, who: Caller) -> Response:
        """WADO-URI (PS3.18 chapter 9): one object as DICOM or as a rendered image."""
        q = request.query_params
        if q.get("requestType") != "WADO":
            raise HTTPException(400, "requestType=WADO is required")
        try:
            ids = (q["studyUID"], q["seriesUID"], q["objectUID"])
        except KeyError as e:
            raise HTTPException(400, f"{e.args[0]} is required") from None
        content = q.get("contentType", "image/jpeg").split(",")[0].strip()
        instances, patients, _ = self._read(who, "dicomweb.wado-uri", *ids)
        inst = instances[0]
        if content == "application/dicom":
            return self._wado_part10(inst, patients[inst.id], q.get("transferSyntax"))
        fmt = {"image/jpeg": "jpeg", "image/png": "png"}.get(content)
        if fmt is None:
            raise HTTPException(
                406, f"contentType {content!r}: application/dicom, image/jpeg or image/png"
            )
        try:
            window = (
                Window(float(q["windowCenter"]), max(float(q["windowWidth"]), 1.0))
                if "windowCenter" in q and "windowWidth" in q
                else None
            )
            box = (int(q.get("columns", 0)) or None, int(q.get("rows", 0)) or None)
            frame = int(q.get("frameNumber", 1))
            quality = int(q.get("imageQuality", 90))
        except ValueError:
            raise HTTPException(
                400, "windowCenter/Width, rows, columns, frameNumber are numbers"
            ) from None
        size = _fit(box, inst)
        return self.images.response(
            inst, View(frame=frame, window=window, size=size, fmt=fmt, quality=quality)
        )

    def _wado_part10(self, inst: Instance, pm: PatientModule, syntax: str | None) -> Response:
        """WADO-URI application/dicom: explicit VR little endian unless transferSyntax says."""
        ts = outbound.serving_syntax(inst.transfer_syntax, [syntax or ExplicitVRLittleEndian])
        if ts is None:
            raise HTTPException(406, f"the object cannot be sent in transfer syntax {syntax}")
        try:
            body = outbound.part10(self.archive.store, inst, pm, ts)
        except outbound.NotServable as e:
            raise HTTPException(406, str(e)) from None
        except (ObjectNotFound, ObjectStoreError) as e:
            raise HTTPException(503, f"object unreadable: {e}") from None
        return Response(body, media_type="application/dicom")

    # STOW-RS

    async def store(self, request: Request, who: Caller, study: str | None) -> Response:
        if self.intake is None:
            raise HTTPException(503, "this server does not accept uploads (no spool)")
        _accept_json(request)  # before the upload is read: the answer could not be sent
        ctype = request.headers.get("content-type", "")
        boundary = _boundary(ctype)
        declared = int(request.headers.get("content-length", 0) or 0)
        if declared > self.stow_max_bytes:
            raise HTTPException(413, f"upload larger than STOW_MAX_MB ({self.stow_max_bytes} B)")
        parts = await _read_parts(request, boundary, self.stow_max_bytes)
        if not parts:
            raise HTTPException(400, "the multipart body has no parts")
        result = await run_in_threadpool(self._accept_parts, parts, who, study, _base(request))
        return result

    def _accept_part(
        self, content_type: str, body: bytes, who: Caller, study: str | None, base: str
    ) -> Dataset:
        """One part spooled (never dropped once readable), answered by its reference item:
        a FailureReason in it puts it in FailedSOPSequence."""
        assert self.intake is not None
        if content_type.split(";")[0].strip().lower() not in ("application/dicom", ""):
            return _failure(body, _CANNOT_UNDERSTAND)
        try:
            ident = self.intake.accept(body, source=f"STOW:{who.user}"[:64], address=who.address)
        except InvalidObject:
            return _failure(body, _CANNOT_UNDERSTAND)
        except OSError:
            return _failure(body, _OUT_OF_RESOURCES)
        item = Dataset()
        item.ReferencedSOPClassUID = ident.sop_class_uid
        item.ReferencedSOPInstanceUID = ident.sop_uid
        if study is not None and ident.study_uid != study:
            # spooled already (never drop clinical data) but reported as not in this study
            item.FailureReason = _STUDY_MISMATCH
        elif self._conflicts(ident.sop_uid, body):
            # archived as a conflict copy; retrieving the UID gives the original, not this one
            item.FailureReason = _DUPLICATE_SOP
        else:
            item.add(
                DataElement(
                    _RETRIEVE_URL,
                    "UR",
                    f"{_study_url(base, ident.study_uid)}/series/{ident.series_uid}"
                    f"/instances/{ident.sop_uid}",
                )
            )
        return item

    def _conflicts(self, sop_uid: str, body: bytes) -> bool:
        """Whether the index holds other bytes under this SOP Instance UID."""
        with self.archive.sessions() as session:
            known = catalog.existing(session, [sop_uid]).get(sop_uid)
        return known is not None and known[0] != sha256_of(body)

    def _accept_parts(
        self, parts: list[tuple[str, bytes]], who: Caller, study: str | None, base: str
    ) -> Response:
        stored: list[Dataset] = []
        failed: list[Dataset] = []
        for content_type, body in parts:
            item = self._accept_part(content_type, body, who, study, base)
            (failed if "FailureReason" in item else stored).append(item)
        answer = Dataset()
        if study is not None:
            answer.add(DataElement(_RETRIEVE_URL, "UR", _study_url(base, study)))
        answer.ReferencedSOPSequence = stored
        if failed:
            answer.FailedSOPSequence = failed
        status = 200 if not failed else 202 if stored else 409
        return Response(_json(answer.to_json_dict()), status_code=status, media_type=DICOM_JSON)


def _failure(body: bytes, reason: int) -> Dataset:
    """A FailedSOPSequence item with whatever identifies the part (PS3.18 10.5.3)."""
    item = Dataset()
    try:
        ds = dcmread(BytesIO(body), force=True, stop_before_pixels=True)
        meta = ds.get("file_meta", Dataset())
        sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        sop_uid = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
    except Exception:
        # whatever is unreadable only leaves the part unidentified; the reason still goes out
        sop_class = sop_uid = None
    if sop_class:
        item.ReferencedSOPClassUID = sop_class
    if sop_uid:
        item.ReferencedSOPInstanceUID = sop_uid
    item.FailureReason = reason
    return item


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _boundary(content_type: str) -> str:
    media, *params = (p.strip() for p in content_type.split(";"))
    values = {
        k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)
    }
    if media.lower() != "multipart/related" or not values.get("boundary"):
        raise HTTPException(
            415, 'STOW-RS takes multipart/related; type="application/dicom" with a boundary'
        )
    if values.get("type", "application/dicom").lower() != "application/dicom":
        raise HTTPException(415, f"unsupported multipart type {values.get('type')!r}")
    return values["boundary"]


async def _read_parts(request: Request, boundary: str, limit: int) -> list[tuple[str, bytes]]:
    """Parse the body as it streams in, refusing it once it passes `limit` bytes."""
    parts: list[tuple[str, bytes]] = []
    current: dict[str, Any] = {}
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        current["headers"][header["field"].decode("latin-1").lower()] = header["value"].decode(
            "latin-1"
        )
        header["field"] = header["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] += data[start:end]

    def on_part_end() -> None:
        parts.append((current["headers"].get("content-type", ""), bytes(current["data"])))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, f"upload larger than STOW_MAX_MB ({limit} B)")
        try:
            parser.write(chunk)
        except Exception as e:
            raise HTTPException(400, f"malformed multipart body: {e}") from None
    parser.finalize()
    return parts


def read_routes(
    r: APIRouter,
    web_of: Callable[..., DicomWeb | Awaitable[DicomWeb]],
    reader: Callable[..., Caller | Awaitable[Caller]],
) -> None:
    """The read-only routes (QIDO-RS, WADO-RS, WADO-URI, rendered images) on `r`, served by
    the DicomWeb `web_of` gives to the callers `reader` lets through: the clinical archive,
    or one research project's view of the research archive."""
    who_dep, web_dep = Depends(reader), Depends(web_of)

    # first: routes are matched in order, and this is the one a viewer asks for per image
    @r.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
    async def rendered(
        request: Request,
        study: str,
        series: str,
        sop: str,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> Response:
        return await web.rendered_async(request, who, (study, series, sop))

    @r.get("/studies")
    def search_studies(
        request: Request, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.search(request, who, Level.STUDY, {})

    @r.get("/series")
    def search_all_series(
        request: Request, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.search(request, who, Level.SERIES, {})

    @r.get("/instances")
    def search_all_instances(
        request: Request, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.search(request, who, Level.IMAGE, {})

    @r.get("/studies/{study}/series")
    def search_series(
        request: Request, study: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.search(request, who, Level.SERIES, {"StudyInstanceUID": study})

    @r.get("/studies/{study}/instances")
    def search_study_instances(
        request: Request, study: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.search(request, who, Level.IMAGE, {"StudyInstanceUID": study})

    @r.get("/studies/{study}/series/{series}/instances")
    def search_instances(
        request: Request, study: str, series: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        parents = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
        return web.search(request, who, Level.IMAGE, parents)

    @r.get("/studies/{study}")
    def retrieve_study(
        request: Request, study: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> StreamingResponse:
        return web.retrieve(request, who, study)

    @r.get("/studies/{study}/series/{series}")
    def retrieve_series(
        request: Request, study: str, series: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> StreamingResponse:
        return web.retrieve(request, who, study, series)

    @r.get("/studies/{study}/series/{series}/instances/{sop}")
    def retrieve_instance(
        request: Request,
        study: str,
        series: str,
        sop: str,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> StreamingResponse:
        return web.retrieve(request, who, study, series, sop)

    @r.get("/studies/{study}/metadata")
    def study_metadata(
        request: Request, study: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.metadata(request, who, study)

    @r.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(
        request: Request, study: str, series: str, who: Caller = who_dep, web: DicomWeb = web_dep
    ) -> Response:
        return web.metadata(request, who, study, series)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata(
        request: Request,
        study: str,
        series: str,
        sop: str,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> Response:
        return web.metadata(request, who, study, series, sop)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/bulk/{tag}")
    def bulk(
        request: Request,
        study: str,
        series: str,
        sop: str,
        tag: str,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> StreamingResponse:
        return web.bulk(request, who, (study, series, sop), tag)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/frames/{numbers}")
    def frames(
        request: Request,
        study: str,
        series: str,
        sop: str,
        numbers: str,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> StreamingResponse:
        return web.frames(request, who, (study, series, sop), numbers)

    @r.get("/wado")
    def wado_uri(request: Request, who: Caller = who_dep, web: DicomWeb = web_dep) -> Response:
        """WADO-URI: ?requestType=WADO&studyUID=&seriesUID=&objectUID=[&contentType=]"""
        return web.wado_uri(request, who)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
    def frame_rendered(
        request: Request,
        study: str,
        series: str,
        sop: str,
        frame: int,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> Response:
        return web.rendered(request, who, (study, series, sop), frame)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    def thumbnail(
        request: Request,
        study: str,
        series: str,
        sop: str,
        who: Caller = who_dep,
        web: DicomWeb = web_dep,
    ) -> Response:
        return web.rendered(request, who, (study, series, sop), thumbnail=True)


def router(
    archive: Archive, images: ImageService, trail: AuditTrail, intake: Intake | None
) -> APIRouter:
    web = DicomWeb(archive, images, trail, intake, archive.settings.stow_max_mb << 20)
    r = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

    async def clinical() -> DicomWeb:  # async: a sync dependency costs a worker-thread hop
        return web

    read_routes(r, clinical, requires(CLINICAL_READERS, "reading patient data"))

    @r.post("/studies")
    async def store(request: Request, who: Uploader) -> Response:
        return await web.store(request, who, None)

    @r.post("/studies/{study}")
    async def store_in_study(request: Request, who: Uploader, study: str) -> Response:
        return await web.store(request, who, study)

    reader = Depends(requires(CLINICAL_READERS, "reading patient data"))

    @r.get("/studies/{study}/thumbnail")
    def study_thumbnail(request: Request, study: str, who: Caller = reader) -> Response:
        return web.rendered(request, who, images.representative(study), thumbnail=True)

    @r.get("/studies/{study}/series/{series}/thumbnail")
    def series_thumbnail(
        request: Request, study: str, series: str, who: Caller = reader
    ) -> Response:
        return web.rendered(request, who, images.representative(study, series), thumbnail=True)

    @r.get("/studies/{study}/rendered")
    @r.get("/studies/{study}/series/{series}/rendered")
    def rendered_set(who: Caller = reader) -> Response:
        return images.no_rendered_sets()

    return r
