"""Bearer JWTs signed with the deployment's local key or by the trust's OpenID Connect provider;
every route but health requires one."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from storage.settings import Settings
from viewer.oidc import OidcVerifier

ISSUER = "pacsbroker-local"
AUDIENCE = "pacsbroker"
ALGORITHMS = ["HS256"]


def signing_key(data_dir: Path) -> bytes:
    """The local signing key, created on first use and readable only by the owner."""
    path = data_dir / "keys" / "signing.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path.read_bytes()


def issue_token(key: bytes, user: str, role: str, ttl: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "sub": user,
        "role": role,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    return jwt.encode(claims, key, algorithm="HS256")


@dataclass(frozen=True)
class Caller:
    user: str
    role: str
    address: str


_bearer = HTTPBearer(auto_error=False)
# The admin console's browser session: the same JWT, set by /admin/login (viewer/console.py).
SESSION_COOKIE = "pacsbroker_admin"
# Changes made with the cookie must carry this header. SameSite does not tell apart two ports
# of one host, but a custom header makes a browser ask first (CORS), which no origin passes.
CONSOLE_HEADER = "X-Pacs-Console"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate(request: Request, creds: HTTPAuthorizationCredentials | None) -> Caller:
    """The caller a request's bearer token (else the console's session cookie) names."""
    if creds is not None:
        return verify(request, creds.credentials)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if request.method not in _SAFE_METHODS and CONSOLE_HEADER.lower() not in request.headers:
        raise HTTPException(403, f"a change made with the console cookie needs {CONSOLE_HEADER}")
    return verify(request, cookie)


async def caller(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The authentication dependency. Async on purpose: FastAPI runs a sync dependency in a
    worker thread, and that hand-off cost more than the check itself on every request; only
    a provider token not verified before goes to a thread, as its keys may need fetching."""
    if creds is not None and _asks_provider(request, creds.credentials):
        return await run_in_threadpool(authenticate, request, creds)
    return authenticate(request, creds)


def _asks_provider(request: Request, token: str) -> bool:
    oidc: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    if oidc is None:
        return False
    now = time.time()
    for verifier in (request.app.state.signing_key, _provider(oidc)):
        if _verified.get(token, verifier, now) is not None:
            return False  # verified before: no decoding of its claims on every request
    return _claimed_issuer(token) == oidc.issuer


@dataclass(frozen=True)
class _Verified:
    key: bytes  # the signing key that verified the token
    user: str
    role: str
    exp: float


class TokenCache:
    """Tokens whose signature and claims were verified, by their exact string, until `exp`.

    A hit skips only the HMAC and claim parsing, which gave the same answer for the same
    string: the expiry is checked again on every use, a token signed with another key never
    hits, and a string not seen verified (a forged or altered token) is always verified in
    full. There is no revocation list to consult: a JWT is valid until it expires.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._tokens: dict[str, _Verified] = {}

    def get(self, token: str, key: bytes, now: float) -> _Verified | None:
        hit = self._tokens.get(token)
        if hit is None or hit.key != key:
            return None
        if now >= hit.exp:  # PyJWT's rule with no leeway: expired once exp <= now
            self._tokens.pop(token, None)
            return None
        return hit

    def put(self, token: str, verified: _Verified) -> None:
        if len(self._tokens) >= self.size:
            # oldest first: dicts keep insertion order; concurrent threads may race to pop
            self._tokens.pop(next(iter(self._tokens), token), None)
        self._tokens[token] = verified


_verified = TokenCache()


def verify(request: Request, token: str) -> Caller:
    """The caller a signed, unexpired token names (signed with the local key, or by the
    configured OpenID Connect provider); 401 otherwise."""
    key: bytes = request.app.state.signing_key
    oidc: OidcVerifier | None = getattr(request.app.state, "oidc", None)
    client = request.client.host if request.client else ""
    now = time.time()
    hit = _verified.get(token, key, now)
    if hit is None and oidc is not None:
        hit = _verified.get(token, _provider(oidc), now)
        if hit is None and _claimed_issuer(token) == oidc.issuer:
            hit = _Verified(_provider(oidc), *oidc.decode(token))
            _verified.put(token, hit)
    if hit is None:
        hit = _decode(token, key)
        _verified.put(token, hit)
    return Caller(hit.user, hit.role, client)


def _provider(oidc: OidcVerifier) -> bytes:
    """What the cache records as the verifier of the provider's tokens."""
    return b"oidc:" + oidc.issuer.encode()


def _claimed_issuer(token: str) -> str:
    """The `iss` a token claims, unverified: which verifier to ask, nothing more."""
    try:
        return str(jwt.decode(token, options={"verify_signature": False}).get("iss", ""))
    except jwt.InvalidTokenError:
        return ""


def _decode(token: str, key: bytes) -> _Verified:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=ALGORITHMS,
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise HTTPException(401, "token expired", headers={"WWW-Authenticate": "Bearer"}) from None
    except jwt.InvalidTokenError as e:
        raise HTTPException(
            401, f"invalid token: {e}", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    return _Verified(key, str(claims["sub"]), str(claims.get("role", "")), float(claims["exp"]))


# Who may do what over HTTP; research roles (issue 9) read only their project's archive.
CLINICAL_READERS = frozenset({"clinician", "radiologist", "radiology-admin", "epr"})
UPLOADERS = frozenset({"radiologist", "radiology-admin", "epr", "modality", "integration"})


def oidc_verifier(settings: Settings) -> OidcVerifier | None:
    """The verifier of the configured OpenID Connect provider's tokens, if one is."""
    if not settings.oidc_issuer:
        return None
    return OidcVerifier(
        settings.oidc_issuer,
        settings.oidc_jwks_url,
        settings.oidc_audience,
        settings.oidc_role_claim,
        settings.oidc_user_claim,
        known_roles=CLINICAL_READERS | UPLOADERS,
    )


def permit(who: Caller, roles: frozenset[str], what: str) -> Caller:
    """`who`, if its role is one of `roles`; 403 otherwise."""
    if who.role not in roles:
        raise HTTPException(
            403, f"{what} needs one of the roles {sorted(roles)}; the token has {who.role!r}"
        )
    return who


def requires(roles: frozenset[str], what: str) -> Callable[[Caller], Awaitable[Caller]]:
    """A dependency that lets through only tokens whose role is in `roles` (async, as
    `caller` is: no worker thread for a set lookup)."""

    async def check(who: Annotated[Caller, Depends(caller)]) -> Caller:
        return permit(who, roles, what)

    return check
