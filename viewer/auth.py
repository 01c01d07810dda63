"""Bearer JWTs signed with the deployment's local key; every route but health requires one."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


def caller(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
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


def verify(request: Request, token: str) -> Caller:
    """The caller a signed, unexpired token names; 401 otherwise."""
    try:
        claims = jwt.decode(
            token,
            request.app.state.signing_key,
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
    client = request.client.host if request.client else ""
    return Caller(str(claims["sub"]), str(claims.get("role", "")), client)


# Who may do what over HTTP; research roles (issue 9) read only their project's archive.
CLINICAL_READERS = frozenset({"clinician", "radiologist", "radiology-admin", "epr"})
UPLOADERS = frozenset({"radiologist", "radiology-admin", "epr", "modality", "integration"})


def requires(roles: frozenset[str], what: str) -> Callable[[Caller], Caller]:
    """A dependency that lets through only tokens whose role is in `roles`."""

    def check(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if who.role not in roles:
            raise HTTPException(
                403, f"{what} needs one of the roles {sorted(roles)}; the token has {who.role!r}"
            )
        return who

    return check
