"""Rendered images for every HTTP route that shows pixels, with one shared cache."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException, Response
from sqlalchemy import select

from storage import outbound
from storage.archive import Archive
from storage.dicomheader import decode_attrs
from storage.models import VISIBLE, Instance, Patient, Series, Study
from storage.objects import ObjectNotFound, ObjectStoreError
from storage.query import NOT_REJECTED
from viewer.render import (
    MEDIA,
    FrameOutOfRange,
    RenderCache,
    RenderError,
    View,
    frame_count,
    render,
)

# Renders are CPU work that holds the GIL most of the time: more threads than cores only
# share the cores among more images, so every image of a burst finishes late. A few threads
# (one over the cores, to cover the object-store read) serve a burst first come, first done.
RENDER_THREADS = (os.cpu_count() or 1) + 1


class ImageService:
    def __init__(self, archive: Archive, cache_bytes: int = 64 << 20) -> None:
        self.archive = archive
        self.cache = RenderCache(cache_bytes)
        self._renders = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="render")

    def image(self, inst: Instance, view: View) -> bytes:
        """A rendered frame, from the cache when it was rendered before."""
        key = (inst.sop_uid, view)
        data = self.cache.get(key)
        if data is None:
            try:
                data = render(outbound.stored(self.archive.store, inst), view)
            except FrameOutOfRange as e:
                raise HTTPException(400, str(e)) from None
            except RenderError as e:
                raise HTTPException(406, str(e)) from None
            except (ObjectNotFound, ObjectStoreError) as e:
                raise HTTPException(503, f"object unreadable: {e}") from None
            self.cache.put(key, data)
        return data

    def representative(self, study_uid: str, series_uid: str = "") -> tuple[str, str, str]:
        """(study, series, SOP UID) of the image that stands for a study or series: the middle
        image of its first series by series number that has images."""
        with self.archive.sessions() as session:
            stmt = (
                select(Series.series_uid, Series.series_number, Instance)
                .join(Instance.series)
                .join(Series.study)
                .join(Study.patient)
                .where(Study.study_uid == study_uid, Patient.status.in_(VISIBLE), NOT_REJECTED)
            )
            if series_uid:
                stmt = stmt.where(Series.series_uid == series_uid)
            rows = [(uid, n, i) for uid, n, i in session.execute(stmt) if frames_shown(i)]
        if not rows:
            raise HTTPException(404, f"no images in that {'series' if series_uid else 'study'}")
        first = min(rows, key=lambda r: (order_number(r[1]), r[0]))[0]
        images = sorted(
            (i for uid, _, i in rows if uid == first),
            key=lambda i: (order_number(i.instance_number), i.id),
        )
        return study_uid, first, images[len(images) // 2].sop_uid

    def no_rendered_sets(self) -> Response:
        """WADO-RS rendered studies and series (a multipart of every image) are not offered."""
        raise HTTPException(
            406,
            "rendered studies and series are not offered: render each instance, "
            "or ask for the study's or series' thumbnail",
        )

    def response(self, inst: Instance, view: View) -> Response:
        return _response(self.image(inst, view), view)

    async def response_async(self, inst: Instance, view: View) -> Response:
        """Cache hits answer on the event loop; renders run in the render threads."""
        data = self.cache.get((inst.sop_uid, view))
        if data is None:
            data = await asyncio.wrap_future(self._renders.submit(self.image, inst, view))
        return _response(data, view)


def _response(data: bytes, view: View) -> Response:
    return Response(
        data, media_type=MEDIA[view.fmt], headers={"Cache-Control": "private, max-age=300"}
    )


def frames_shown(inst: Instance) -> int:
    """How many frames the viewers show: a waveform is one (its plot); 0 for objects they
    cannot draw (KOS, SR, PDF)."""
    try:
        attrs = decode_attrs(inst.attrs, inst.attrs_ts)
    except Exception:
        return 0
    if "Rows" not in attrs:
        return 1 if "WaveformSequence" in attrs else 0
    try:
        return frame_count(attrs)
    except RenderError:
        return 1  # shown as one image, whose rendering then says what is wrong


def order_number(text: str) -> int:
    """A series or instance number for sorting; 0 when it is empty or not a number."""
    try:
        return int(text)
    except ValueError:
        return 0
