"""The per-request shortcuts of the HTTP hot paths keep the security behaviour: verified-token
cache, async authentication, reading retrieve objects ahead within bounds."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Annotated, Any, cast

import jwt
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from storage.archive import Archive
from storage.models import Instance
from viewer import auth
from viewer.auth import Caller, TokenCache, _Verified, caller, issue_token, requires
from viewer.images import RENDER_THREADS, ImageService
from viewer.readahead import read_ahead
from viewer.render import View

pytestmark = pytest.mark.sqlite_only  # no index involved

KEY = b"k" * 32


def _app(key: bytes) -> FastAPI:
    app = FastAPI()
    app.state.signing_key = key

    @app.get("/who")
    def who(me: Annotated[Caller, Depends(requires(frozenset({"clinician"}), "reading"))]) -> str:
        return f"{me.user}/{me.role}"

    return app


def _forged(token: str) -> str:
    """The same header and claims with one character of the signature changed."""
    head, claims, sig = token.split(".")
    i = len(sig) // 2
    return f"{head}.{claims}.{sig[:i]}{'A' if sig[i] != 'A' else 'B'}{sig[i + 1 :]}"


def _get(client: TestClient, token: str) -> Any:
    return client.get("/who", headers={"Authorization": f"Bearer {token}"})


def test_a_token_is_verified_once_and_forgeries_still_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    token = issue_token(KEY, "dr-cache", "clinician")
    with TestClient(_app(KEY)) as client:
        assert [_get(client, token).json() for _ in range(3)] == ["dr-cache/clinician"] * 3
        assert decoded == [token]  # the signature was checked on the first request only
        forged = _forged(token)
        for _ in range(2):  # a forgery of a cached token is never taken from the cache
            r = _get(client, forged)
            assert r.status_code == 401 and "dr-cache" not in r.text
        assert decoded.count(forged) == 2
        wrong_role = issue_token(KEY, "dr-cache", "research:x")
        assert _get(client, wrong_role).status_code == 403
        assert _get(client, wrong_role).status_code == 403  # cached, and still refused
    with TestClient(_app(b"o" * 32)) as other:  # another deployment's key: the string is new
        assert _get(other, token).status_code == 401


def test_the_cache_keeps_expiry_and_the_key_that_verified() -> None:
    cache = TokenCache(size=2)
    cache.put("t", _Verified(KEY, "dr", "clinician", exp=100.0))
    assert cache.get("t", KEY, now=99.9) is not None
    assert cache.get("t", b"o" * 32, now=99.9) is None
    assert cache.get("t", KEY, now=100.0) is None  # expired at exp, as PyJWT has it
    assert cache.get("t", KEY, now=50.0) is None  # and dropped: verified in full again
    for name in ("a", "b", "c"):
        cache.put(name, _Verified(KEY, name, "clinician", exp=100.0))
    assert cache.get("a", KEY, 1.0) is None and cache.get("c", KEY, 1.0) is not None


def test_an_expired_token_is_refused_with_the_reason() -> None:
    expired = issue_token(KEY, "dr-old", "clinician", ttl=-10)
    with TestClient(_app(KEY)) as client:
        r = _get(client, expired)
    assert r.status_code == 401 and r.json()["detail"] == "token expired"


def test_authentication_runs_on_the_event_loop() -> None:
    """FastAPI runs sync dependencies in a worker thread, which cost more than the check."""
    assert inspect.iscoroutinefunction(caller)
    assert inspect.iscoroutinefunction(requires(frozenset({"clinician"}), "reading"))


class _Manual(Executor):
    """Runs nothing until the test says so, and records what was submitted."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Callable[[], Any], Future[Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.submitted.append((fn, future))
        return future

    def finish(self, index: int) -> None:
        fn, future = self.submitted[index]
        future.set_result(fn())


def _jobs(sizes: list[int]) -> list[tuple[int, Callable[[], int]]]:
    return [(size, (lambda n=n: n)) for n, size in enumerate(sizes)]


def test_read_ahead_keeps_order_within_depth_and_budget() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        pool = _Manual()
        got: list[int] = []
        in_flight: list[int] = []
        reader = read_ahead(_jobs([10, 10, 10, 100, 10]), pool, depth=3, budget=25)

        async def consume() -> None:
            async for n in reader:
                got.append(n)

        task = asyncio.create_task(consume())
        for _ in range(5):
            await asyncio.sleep(0)
            in_flight.append(len(pool.submitted) - len(got))
            # the newest read finishes first; the results still come out in order
            for i in reversed(range(len(pool.submitted))):
                if not pool.submitted[i][1].done():
                    pool.finish(i)
            for _ in range(5):
                await asyncio.sleep(0)
        await task
        return got, in_flight

    got, in_flight = asyncio.run(scenario())
    assert got == [0, 1, 2, 3, 4]
    # 10+10 fit the 25-byte budget, a third does not; the 100-byte object is read alone
    assert max(in_flight) == 2 and in_flight[2] == 1


def test_read_ahead_cancels_reads_not_started_when_the_client_leaves() -> None:
    async def scenario() -> _Manual:
        pool = _Manual()
        reader = read_ahead(_jobs([1] * 10), pool, depth=4, budget=100)
        first = asyncio.ensure_future(reader.__anext__())
        await asyncio.sleep(0)
        pool.finish(0)
        assert await first == 0
        await reader.aclose()
        return pool

    pool = asyncio.run(scenario())
    assert len(pool.submitted) == 4  # never more than `depth` asked for
    assert all(f.cancelled() for _, f in pool.submitted[1:])


def test_renders_run_in_the_bounded_render_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in the 40-thread pool that also serves sync routes: a burst of renders sharing
    two cores among 40 threads made every image of the burst late."""
    service = ImageService(cast(Archive, object()))
    ran_in: list[str] = []

    def image(inst: Instance, view: View) -> bytes:
        ran_in.append(threading.current_thread().name)
        return b"jpeg"

    monkeypatch.setattr(service, "image", image)
    inst = Instance(sop_uid="1.2.3")
    response = asyncio.run(service.response_async(inst, View()))
    assert response.body == b"jpeg" and ran_in[0].startswith("render")
    assert service._renders._max_workers == RENDER_THREADS
