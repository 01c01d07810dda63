"""Rendered images for every HTTP route that shows pixels, with one shared cache."""

from __future__ import annotations

from fastapi import HTTPException, Response
from fastapi.concurrency import run_in_threadpool

from storage import outbound
from storage.archive import Archive
from storage.models import Instance
from storage.objects import ObjectNotFound, ObjectStoreError
from viewer.render import MEDIA, RenderCache, RenderError, View, render


class ImageService:
    def __init__(self, archive: Archive, cache_bytes: int = 64 << 20) -> None:
        self.archive = archive
        self.cache = RenderCache(cache_bytes)

    def image(self, inst: Instance, view: View) -> bytes:
        """A rendered frame, from the cache when it was rendered before."""
        key = (inst.sop_uid, view)
        data = self.cache.get(key)
        if data is None:
            try:
                data = render(outbound.stored(self.archive.store, inst), view)
            except RenderError as e:
                raise HTTPException(406, str(e)) from None
            except (ObjectNotFound, ObjectStoreError) as e:
                raise HTTPException(503, f"object unreadable: {e}") from None
            self.cache.put(key, data)
        return data

    def response(self, inst: Instance, view: View) -> Response:
        return _response(self.image(inst, view), view)

    async def response_async(self, inst: Instance, view: View) -> Response:
        """Cache hits answer on the event loop; renders run in a worker thread."""
        data = self.cache.get((inst.sop_uid, view))
        if data is None:
            data = await run_in_threadpool(self.image, inst, view)
        return _response(data, view)


def _response(data: bytes, view: View) -> Response:
    return Response(
        data, media_type=MEDIA[view.fmt], headers={"Cache-Control": "private, max-age=300"}
    )
