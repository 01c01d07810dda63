"""FHIR R4 Patient lookup against PAS (IHE PDQm style), cached, with a short circuit breaker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from storage import registry
from storage.demographics import Demographics, Identifier
from storage.settings import Settings

log = logging.getLogger("pacsbroker.pas")

_GENDER = {"male": "M", "female": "F", "other": "O"}


class PasUnavailable(RuntimeError):
    """PAS did not give a usable answer (down, slow, or an error status)."""


class PasAmbiguous(LookupError):
    """PAS has more than one active patient for the identifier; an admin must choose."""


def client(settings: Settings) -> PasClient | None:
    """The PAS client the settings describe; None when no PAS is configured."""
    if not settings.pas_fhir_url:
        return None
    return PasClient(settings.pas_fhir_url, timeout=settings.pas_timeout, token=settings.pas_token)


def to_demographics(resource: dict[str, Any]) -> Demographics:
    """Map a FHIR Patient resource to the registry's demographics."""
    idents = tuple(
        Identifier(str(i.get("system", "")), str(i["value"]))
        for i in resource.get("identifier", [])
        if i.get("value")
    )
    names = resource.get("name") or [{}]
    hn = next((n for n in names if n.get("use") == "official"), names[0])
    given = list(hn.get("given") or [])
    parts = [str(hn.get("family", "")), given[0] if given else "", " ".join(given[1:])]
    return Demographics(
        identifiers=idents,
        name=registry.person_name(parts),
        birth_date=str(resource.get("birthDate", "")).replace("-", "")[:8],
        sex=_GENDER.get(str(resource.get("gender", "")), ""),
    )


class PasClient:
    """`lookup` returns PAS's demographics, None if PAS does not know the identifier, or raises
    PasUnavailable or PasAmbiguous; answers are cached and a failing PAS is not asked at once."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 2.0,
        token: str = "",
        cache_ttl: float = 300.0,
        negative_ttl: float = 30.0,
        retry_after: float = 5.0,
    ) -> None:
        headers = {"Accept": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers=headers)
        self.timeout = timeout
        self.cache_ttl, self.negative_ttl, self.retry_after = cache_ttl, negative_ttl, retry_after
        self._cache: dict[Identifier, tuple[float, Demographics | None]] = {}
        self._down_until = 0.0
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._down_until = 0.0

    def lookup(self, ident: Identifier, *, fresh: bool = False) -> Demographics | None:
        """`fresh` asks PAS even if a recent answer is cached (it may have learnt since)."""
        now = time.monotonic()
        with self._lock:
            hit = None if fresh else self._cache.get(ident)
            if hit is not None and hit[0] > now:
                return hit[1]
            if now < self._down_until:
                raise PasUnavailable("PAS failed recently; not asking again yet")
        try:
            found = self._search(ident)
        except PasUnavailable:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after
            raise
        ttl = self.cache_ttl if found is not None else self.negative_ttl
        with self._lock:
            self._cache[ident] = (time.monotonic() + ttl, found)
        return found

    def _search(self, ident: Identifier) -> Demographics | None:
        token = f"{ident.system}|{ident.value}" if ident.system else ident.value
        deadline = time.monotonic() + self.timeout
        r = self._get("/Patient", {"identifier": token}, deadline, ident)
        # An unknown patient is a 200 with an empty Bundle; a 404 means a wrong base URL, and
        # reading it as "unknown" would quarantine every new study.
        if r.status_code != 200:
            raise PasUnavailable(f"PAS answered HTTP {r.status_code}")
        try:
            found = self._survivors(_json(r), deadline, ident)
            if len(found) > 1:
                ids = ", ".join(sorted(found))
                raise PasAmbiguous(f"PAS has {len(found)} active patients for {ident.value}: {ids}")
            return to_demographics(next(iter(found.values()))) if found else None
        except (KeyError, AttributeError, TypeError) as e:
            raise PasUnavailable(f"unreadable PAS answer: {e}") from None

    def _survivors(
        self, bundle: dict[str, Any], deadline: float, ident: Identifier
    ) -> dict[str, dict[str, Any]]:
        """The active patients the search matched, replaced ones followed to their survivor,
        keyed by resource id (a record and its replacement are often both matched)."""
        entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
        included = {_key(res): res for e in entries if isinstance(res := e.get("resource"), dict)}
        found: dict[str, dict[str, Any]] = {}
        for n, entry in enumerate(entries):
            res = entry.get("resource") or {}
            if res.get("resourceType") != "Patient" or _search_mode(entry) != "match":
                continue
            survivor = self._follow(res, included, deadline, ident)
            if survivor is not None:
                found[_key(survivor) if survivor.get("id") else f"entry {n}"] = survivor
        return found

    def _follow(
        self,
        res: dict[str, Any],
        included: dict[str, dict[str, Any]],
        deadline: float,
        ident: Identifier,
    ) -> dict[str, Any] | None:
        """`res` if active, else the patient its `replaced-by` links lead to (None if none)."""
        seen: set[str] = set()
        while res.get("active", True) is False:
            ref = _replaced_by(res)
            if ref is None or ref in seen or len(seen) >= _MAX_LINKS:
                return None
            seen.add(ref)
            nxt = included.get(ref) or self._read(ref, deadline, ident)
            if nxt is None:
                log.warning("PAS links %s to %s, which PAS does not have", ident.value, ref)
                return None
            res = nxt
        return res

    def _read(self, ref: str, deadline: float, ident: Identifier) -> dict[str, Any] | None:
        """The resource `ref` (`Patient/<id>`), None if PAS has no such resource."""
        r = self._get(f"/{ref}", None, deadline, ident)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise PasUnavailable(f"PAS answered HTTP {r.status_code} to a read of {ref}")
        return _json(r)

    def _get(
        self, path: str, params: dict[str, str] | None, deadline: float, ident: Identifier
    ) -> httpx.Response:
        """A GET that gives up at `deadline`, however slowly PAS sends its bytes."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise PasUnavailable(f"no answer within {self.timeout:g} s")
        call = _Call(lambda: self.http.get(path, params=params, timeout=left))
        # httpx's timeout applies per read, so a PAS that dribbles bytes could hold ingest
        # indefinitely; the join bounds the whole request, and an abandoned thread still ends
        # at httpx's per-read timeout or when the answer is complete.
        call.start()
        call.join(left)
        try:
            r = call.result()
        except httpx.HTTPError as e:
            log.warning("PAS lookup of %s failed: %s", ident.value, e)
            raise PasUnavailable(f"{type(e).__name__}: {e}") from None
        if r is None:
            log.warning("PAS lookup of %s took longer than %g s", ident.value, self.timeout)
            raise PasUnavailable(f"no answer within {self.timeout:g} s")
        return r


_MAX_LINKS = 5


class _Call(threading.Thread):
    """One HTTP request in a daemon thread, so the caller can stop waiting for it."""

    def __init__(self, fn: Callable[[], httpx.Response]) -> None:
        super().__init__(name="pas-lookup", daemon=True)
        self._fn = fn
        self._response: httpx.Response | None = None
        self._error: httpx.HTTPError | None = None

    def run(self) -> None:
        try:
            self._response = self._fn()
        except httpx.HTTPError as e:
            self._error = e

    def result(self) -> httpx.Response | None:
        """The response, None while it is still running; raises the request's error."""
        if self._error is not None:
            raise self._error
        return None if self.is_alive() else self._response


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError as e:
        raise PasUnavailable(f"unreadable PAS answer: {e}") from None
    if not isinstance(body, dict):
        raise PasUnavailable("unreadable PAS answer: not a JSON object")
    return body


def _key(res: dict[str, Any]) -> str:
    """`Patient/<id>`, the form `link.other.reference` uses."""
    return f"{res.get('resourceType', '')}/{res.get('id', '')}"


def _search_mode(entry: dict[str, Any]) -> str:
    """`match` for a search hit, `include` for a resource only included alongside."""
    return str((entry.get("search") or {}).get("mode") or "match")


def _replaced_by(res: dict[str, Any]) -> str | None:
    """The `Patient/<id>` reference of the link to the patient that replaced `res`."""
    for link in res.get("link") or []:
        if link.get("type") == "replaced-by":
            ref = str((link.get("other") or {}).get("reference") or "")
            # an absolute reference ends in Patient/<id> too
            parts = ref.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
                return f"Patient/{parts[-1]}"
    return None
