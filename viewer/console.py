"""The admin console's pages: `/admin`, one page whose tabs static/admin.js fills from the admin
API, and a cookie login, because a browser cannot send a bearer header when it navigates."""

from __future__ import annotations

import json
import re
import time
from html import escape
from pathlib import Path
from typing import Annotated

import jwt
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security.utils import get_authorization_scheme_param

from viewer.admin import ADMIN_ROLE
from viewer.auth import SESSION_COOKIE, Caller, verify

STATIC = Path(__file__).with_name("static")
LABELS: dict[str, dict[str, str]] = json.loads((STATIC / "admin.labels.json").read_text("utf-8"))
_CONSOLE, _LOGIN, _STYLE, _SCRIPT = (
    (STATIC / name).read_text("utf-8")
    for name in ("admin.html", "admin.login.html", "admin.css", "admin.js")
)
_SLOT = re.compile(r"\{\{(\w+)\}\}")
_NO_STORE = {"Cache-Control": "no-store"}


def _lang(lang: str) -> str:
    return lang if lang in LABELS else "nb"


def _render(template: str, lang: str, **values: str) -> str:
    """Fill the {{slots}}: values and labels escaped; style, script and labels JSON verbatim."""
    labels, values = LABELS[lang], {"lang": lang, **values}
    verbatim = {
        "style": _STYLE,
        "script": _SCRIPT,
        # `</` must not end the <script> element that carries the JSON
        "labels_json": json.dumps(labels, ensure_ascii=False).replace("</", "<\\/"),
    }

    def slot(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in verbatim:
            return verbatim[name]
        return escape(values[name] if name in values else labels[name])

    return _SLOT.sub(slot, template)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _admin(request: Request, token: str) -> tuple[Caller | None, str, int]:
    """The admin a token names, or why not: a label key and the HTTP status."""
    try:
        who = verify(request, token)
    except HTTPException:
        return None, "bad_token", 401
    if who.role != ADMIN_ROLE:
        return None, "wrong_role", 403
    return who, "", 200


def _presented(request: Request) -> str:
    """The token a request carries: a bearer header first, as the API reads it, else the cookie."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return request.cookies.get(SESSION_COOKIE, "")


def _login_page(request: Request, lang: str, problem: str, status: int) -> HTMLResponse:
    message = LABELS[lang][problem] if problem else ""
    html = _render(_LOGIN, lang, message=message, root=_root(request))
    headers = {**_NO_STORE, "WWW-Authenticate": "Bearer"} if status == 401 else _NO_STORE
    return HTMLResponse(html, status_code=status, headers=headers)


def _sign_in(request: Request, token: str, lang: str) -> Response:
    """Check the token and keep it in the session cookie; the cookie dies with the token."""
    if not token:
        return _login_page(request, lang, "", 401)
    who, problem, status = _admin(request, token)
    if who is None:
        return _login_page(request, lang, problem, status)
    expires = int(jwt.decode(token, options={"verify_signature": False})["exp"])
    response = RedirectResponse(f"{_root(request)}/admin?lang={lang}", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(1, expires - int(time.time())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def router() -> APIRouter:
    r = APIRouter(prefix="/admin", include_in_schema=False)

    @r.get("", response_class=HTMLResponse)
    def console(request: Request, lang: str = "nb") -> Response:
        """The console for an admin bearer token or session; the login form (401/403) otherwise."""
        lang = _lang(lang)
        token = _presented(request)
        who, problem, status = _admin(request, token) if token else (None, "", 401)
        if who is None:
            return _login_page(request, lang, problem, status)
        root = _root(request)
        html = _render(_CONSOLE, lang, user=who.user, root=root, api=f"{root}/api/v1/admin")
        return HTMLResponse(html, headers=_NO_STORE)

    @r.get("/login", response_class=HTMLResponse)
    def login_link(request: Request, token: str = "", lang: str = "nb") -> Response:
        """The link `pacsbroker admin-url` prints: sign in with the token in the URL."""
        return _sign_in(request, token.strip(), _lang(lang))

    @r.post("/login", response_class=HTMLResponse)
    def login_form(
        request: Request,
        token: Annotated[str, Form()] = "",
        lang: Annotated[str, Form()] = "nb",
    ) -> Response:
        return _sign_in(request, token.strip(), _lang(lang))

    @r.post("/logout")
    def logout(request: Request, lang: str = "nb") -> RedirectResponse:
        response = RedirectResponse(f"{_root(request)}/admin?lang={_lang(lang)}", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return r
