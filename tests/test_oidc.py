"""Bearer tokens from the trust's OpenID Connect provider: a test provider publishes its
discovery document and JWKS over HTTP, as Keycloak or ADFS do, and signs tokens with RS256."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import Broker


class Provider:
    """Discovery at {issuer}/.well-known/openid-configuration, keys at {issuer}/certs."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self.server.server_port}/realms/helse"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.removeprefix("/realms/helse")
                if path == "/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": f"{provider.issuer}/certs"}
                elif path == "/certs":
                    jwk = json.loads(RSAAlgorithm.to_jwk(provider.key.public_key()))
                    body = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def token(self, key: Any = None, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": "pacsbroker",
            "sub": "f1e2d3",
            "preferred_username": "dr.idp",
            "realm_access": {"roles": ["offline_access", "clinician"]},
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": kid})


def _unsigned(alg: str) -> str:
    """A token naming `alg` and the provider's key ID, with a signature of nothing."""
    head = base64.urlsafe_b64encode(json.dumps({"alg": alg, "kid": "k1"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"sub": "x"}).encode()).rstrip(b"=")
    return f"{head.decode()}.{body.decode()}.AAAA"


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    """A token "signed" by HMAC with `secret` (PyJWT refuses to make one with a public key)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = part(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(mac)}"


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.server.shutdown()


def test_tokens_of_the_configured_provider_are_checked_against_its_keys(
    broker_factory, provider: Provider
) -> None:
    b: Broker = broker_factory(
        {
            "PACSBROKER_OIDC_ISSUER": provider.issuer,
            "PACSBROKER_OIDC_ROLE_CLAIM": "realm_access.roles",
            "PACSBROKER_OIDC_USER_CLAIM": "preferred_username",
        }
    ).start()
    studies = f"http://127.0.0.1:{b.http_port}/dicomweb/studies"

    def get(token: str) -> httpx.Response:
        return httpx.get(studies, headers={"Authorization": f"Bearer {token}"})

    assert get(provider.token()).status_code == 200
    ahead = int(time.time()) + 5  # the provider's clock a little ahead of ours
    assert get(provider.token(iat=ahead, nbf=ahead)).status_code == 200
    local = b.cli("token", "--user", "dr-local", "--role", "clinician").stdout.strip()
    assert get(local).status_code == 200  # the local key's tokens still count

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = provider.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hmac_with_public_key = _hs256(
        {"iss": provider.issuer, "aud": "pacsbroker", "sub": "x", "exp": time.time() + 60},
        public_pem,
    )
    refused = {
        "another key under its key ID": provider.token(key=stranger),
        "an unknown key ID": provider.token(kid="k9"),
        "another audience": provider.token(aud="someone-else"),
        "expired beyond the leeway": provider.token(exp=int(time.time()) - 60),
        "HMAC with the public key": hmac_with_public_key,
        "an EC algorithm on the RSA key": _unsigned("ES256"),
        "PS256 on a key for RS256": jwt.encode(
            {"iss": provider.issuer, "aud": "pacsbroker", "sub": "x", "exp": time.time() + 60},
            provider.key,
            algorithm="PS256",
            headers={"kid": "k1"},
        ),
    }
    for why, token in refused.items():
        r = get(token)
        assert r.status_code == 401, (why, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    modality = provider.token(realm_access={"roles": ["modality"]})
    assert get(modality).status_code == 403

    r = b.cli("audit", "--user", "dr.idp", "--json")
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)["events"]
    assert any(e["action"] == "dicomweb.search" for e in events), r.stdout


def test_a_provider_that_cannot_be_reached_is_503_not_a_refused_token(provider: Provider) -> None:
    from fastapi import HTTPException

    from tests.conftest import free_port
    from viewer.oidc import OidcVerifier

    gone = OidcVerifier(
        f"http://127.0.0.1:{free_port()}/realms/helse", "", "pacsbroker", "role", "sub", []
    )
    with pytest.raises(HTTPException) as err:
        gone.decode(provider.token(iss=gone.issuer))
    assert err.value.status_code == 503 and "cannot be fetched" in err.value.detail
