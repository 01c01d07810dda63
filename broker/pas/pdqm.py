"""FHIR R4 Patient lookup against PAS (IHE PDQm style), cached, with a short circuit breaker."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from storage import registry
from storage.demographics import Demographics, Identifier

log = logging.getLogger("pacsbroker.pas")

_GENDER = {"male": "M", "female": "F", "other": "O"}


class PasUnavailable(RuntimeError):
    """PAS did not give a usable answer (down, slow, or an error status)."""


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
    """`lookup` returns PAS's demographics, None if PAS does not know the identifier, or
    raises PasUnavailable; answers are cached and a failing PAS is not asked again at once."""

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
        self.cache_ttl, self.negative_ttl, self.retry_after = cache_ttl, negative_ttl, retry_after
        self._cache: dict[Identifier, tuple[float, Demographics | None]] = {}
        self._down_until = 0.0
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._down_until = 0.0

    def lookup(self, ident: Identifier) -> Demographics | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(ident)
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
        try:
            r = self.http.get("/Patient", params={"identifier": token})
        except httpx.HTTPError as e:
            log.warning("PAS lookup of %s failed: %s", ident.value, e)
            raise PasUnavailable(f"{type(e).__name__}: {e}") from None
        # An unknown patient is a 200 with an empty Bundle; a 404 means a wrong base URL, and
        # reading it as "unknown" would quarantine every new study.
        if r.status_code != 200:
            raise PasUnavailable(f"PAS answered HTTP {r.status_code}")
        try:
            bundle = r.json()
            for entry in bundle.get("entry") or []:
                res = entry.get("resource") or {}
                if res.get("resourceType") == "Patient" and res.get("active", True) is not False:
                    return to_demographics(res)
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise PasUnavailable(f"unreadable PAS answer: {e}") from None
        return None
