"""Bearer tokens from the trust's OpenID Connect provider, checked against its published keys.

The provider is named by its issuer (`OIDC_ISSUER`); its signing keys come from its JWKS
(`OIDC_JWKS_URL`, else the `jwks_uri` of its discovery document) and are cached by PyJWT's
client, which fetches them again for a key ID it has not seen (key rotation).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx
import jwt
from fastapi import HTTPException

# public-key algorithms only: an HMAC "signed" with the provider's public key proves nothing
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
LEEWAY = 30  # seconds of clock difference between the provider and us
RETRY_AFTER = 30.0  # seconds during which an unreachable provider is not asked again
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class OidcVerifier:
    """Checks tokens whose `iss` is the configured provider: signature, expiry, audience."""

    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        audience: str,
        role_claim: str,
        user_claim: str,
        known_roles: Iterable[str],
        timeout: float = 5.0,
    ) -> None:
        self.issuer, self.audience = issuer, audience
        self.role_claim, self.user_claim = role_claim, user_claim
        self.known_roles = frozenset(known_roles)
        self.timeout = timeout
        self._jwks_url = jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    def decode(self, token: str) -> tuple[str, str, float]:
        """(user, role, exp) of a valid token from the provider; 401 otherwise, 503 when the
        provider's keys cannot be fetched (blocking: call it off the event loop)."""
        try:
            key = self._keys().get_signing_key_from_jwt(token)
            if key.algorithm_name not in ALGORITHMS:
                raise jwt.InvalidKeyError(f"the provider's key is for {key.algorithm_name}")
            # only the key's own algorithm: an ES256 header on an RSA key is refused, not run
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as e:
            self._down_until = time.monotonic() + RETRY_AFTER
            raise HTTPException(503, f"the token issuer's keys cannot be fetched: {e}") from None
        except jwt.ExpiredSignatureError:
            raise HTTPException(401, "token expired", headers=_CHALLENGE) from None
        except (jwt.PyJWTError, TypeError, ValueError) as e:
            raise HTTPException(401, f"invalid token: {e}", headers=_CHALLENGE) from None
        user = str(claims.get(self.user_claim) or claims["sub"])
        return user, self.role_of(claims), float(claims["exp"])

    @property
    def reachable(self) -> bool:
        """False for a while after the provider's keys could not be fetched."""
        return time.monotonic() >= self._down_until

    def role_of(self, claims: dict[str, Any]) -> str:
        """The claim named by `role_claim` (a dotted path, e.g. `realm_access.roles`): a role,
        or a list of which the first role we know (else the first entry) counts."""
        value: Any = claims
        for part in self.role_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            names = [v for v in value if isinstance(v, str)]
            known = [v for v in names if v in self.known_roles or ":" in v]
            return (known or names or [""])[0]
        return ""

    def _keys(self) -> jwt.PyJWKClient:
        if not self.reachable:
            raise jwt.PyJWKClientConnectionError("the provider did not answer a moment ago")
        with self._lock:
            if self._client is None:
                url = self._jwks_url or self._discovered_jwks_url()
                self._client = jwt.PyJWKClient(url, timeout=int(self.timeout) or 1)
            return self._client

    def _discovered_jwks_url(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            r = httpx.get(url, timeout=self.timeout)
            r.raise_for_status()
            return str(r.json()["jwks_uri"])
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise jwt.PyJWKClientConnectionError(f"{url}: {e}") from None
