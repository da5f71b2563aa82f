"""A stand-in OAuth 2.0 authorization server: a real HTTP server written from RFC 6749
(authorization code grant, §4.1; refresh, §6), RFC 7636 (PKCE, S256 only), RFC 7009
(revocation) and RFC 7662 (introspection), for the oauth2 connectors' tests and demos.

- ``GET /authorize`` — §4.1.1: ``response_type=code``, ``client_id``, ``redirect_uri``,
  ``state``, ``code_challenge`` + ``code_challenge_method=S256`` (required: this server
  enforces PKCE), optional ``scope``. An unknown client or a redirect URI not registered for it
  is answered on this page (400, never redirected, §4.1.2.1); every other error redirects with
  ``error`` (``invalid_request``, ``unsupported_response_type``, ``invalid_scope``,
  ``access_denied`` when the resource owner declines) and the ``state``. Consent is automatic
  (``deny`` mode declines). Success: 302 to ``redirect_uri?code=…&state=…``; the code lives
  ``CODE_TTL_S`` and works once.
- ``POST /token`` — form-encoded; client authentication by HTTP Basic (§2.3.1) or, for a client
  without a secret, ``client_id`` in the body. ``authorization_code``: the code must be unused,
  unexpired, issued to this client for this ``redirect_uri``, and ``code_verifier`` must hash to
  its challenge; a replayed code is ``invalid_grant`` and revokes what it had issued (§4.1.2).
  ``refresh_token``: rotates the refresh token (the old one stops working). Answers §5.1
  ``{"access_token", "token_type": "Bearer", "expires_in", "refresh_token", "scope"}`` with
  ``Cache-Control: no-store``; errors §5.2 ``{"error", "error_description"}`` (400; 401 with
  ``WWW-Authenticate`` for ``invalid_client``).
- ``POST /revoke`` — RFC 7009 (200 whether or not the token was known).
- ``POST /introspect`` — RFC 7662 ``{"active": …}`` (what a resource server such as the fake
  Amazon Connect asks).

Test controls, in process or over HTTP (``POST /__fake__/mode``, ``GET /__fake__/state``):
``token_failure`` — ``"html"`` (a 502 HTML error page from a proxy), ``"timeout"`` (hold the
request ``hang_s``), ``"rate_limit"`` (429 with ``Retry-After: retry_after_s``), None;
``deny`` (decline consent); ``expires_in`` of new access tokens; ``revoke_all()`` (the user
revoked the app: every token and refresh token dies); ``expire_access_tokens()``; counters.
Run by hand: ``python -m connectors.fakes.oauth_server --port N --client ID:SECRET``.

Never use this outside tests and demos: it keeps everything in memory.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

CODE_TTL_S = 60.0
DEFAULT_EXPIRES_IN = 3600
MAX_HANG_S = 60.0
HTML_ERROR_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>nginx</center></body></html>"
)


@dataclass
class Client:
    client_id: str
    secret: str | None
    redirect_uris: list[str] = field(default_factory=list)  # empty: any http(s) URI


@dataclass
class Grant:
    """One authorization: what its code, access and refresh tokens were issued for."""

    client_id: str
    scope: str
    redirect_uri: str
    challenge: str
    code: str
    code_expires: float
    code_used: bool = False
    access: set[str] = field(default_factory=set)
    refresh: str | None = None
    revoked: bool = False


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


class FakeOAuthServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clients: list[Client] | None = None,
        scopes: set[str] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.clients = {c.client_id: c for c in clients or [Client("fibric", None)]}
        self.scopes = scopes  # None: any scope is granted
        self.lock = threading.Lock()
        self.grants: list[Grant] = []
        self.access_expiry: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.token_failure: str | None = None
        self.retry_after_s = 30
        self.hang_s = 15.0
        self.deny = False
        self.expires_in = DEFAULT_EXPIRES_IN
        self.token_requests: list[dict[str, str]] = []  # form fields, secrets masked
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeOAuthServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer((self.host, self.requested_port), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="fake-oauth", daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- test controls -------------------------------------------------------------------
    def set_mode(self, **kw: Any) -> None:
        with self.lock:
            for k in ("token_failure", "retry_after_s", "hang_s", "deny", "expires_in"):
                if k in kw:
                    setattr(self, k, kw[k])
            if self.token_failure != "timeout":
                self._release.set()
                self._release = threading.Event()

    def count(self, name: str) -> int:
        with self.lock:
            return self.counters[name]

    def revoke_all(self) -> None:
        """The resource owner revoked the application: every grant dies."""
        with self.lock:
            for g in self.grants:
                g.revoked = True

    def expire_access_tokens(self) -> None:
        with self.lock:
            for tok in self.access_expiry:
                self.access_expiry[tok] = 0.0

    def active(self, token: str) -> bool:
        """RFC 7662's question: is this access token active now?"""
        with self.lock:
            exp = self.access_expiry.get(token)
            if exp is None or time.time() >= exp:
                return False
            return any(token in g.access and not g.revoked for g in self.grants)

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token ever issued (for secret-leak scans)."""
        with self.lock:
            out = list(self.access_expiry)
            out += [g.refresh for g in self.grants if g.refresh]
            return out

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "counters": dict(self.counters),
                "grants": len(self.grants),
                "revoked": sum(g.revoked for g in self.grants),
                "token_failure": self.token_failure,
            }

    # ---- the endpoints -------------------------------------------------------------------
    def authorize(self, q: dict[str, str]) -> tuple[int, dict[str, str] | None, str | None]:
        """(status, query to redirect with or None, page text)."""
        with self.lock:
            self.counters["authorize"] += 1
            client = self.clients.get(q.get("client_id", ""))
            uri = q.get("redirect_uri", "")
            if client is None:
                return 400, None, "unknown client_id"
            if not uri.startswith(("http://", "https://")) or (
                client.redirect_uris and uri not in client.redirect_uris
            ):
                return 400, None, "redirect_uri is not registered for this client"
            out = {"state": q["state"]} if "state" in q else {}

            def fail(error: str, desc: str) -> tuple[int, dict[str, str], None]:
                return 302, {"error": error, "error_description": desc, **out}, None

            if q.get("response_type") != "code":
                return fail("unsupported_response_type", "only the code flow is supported")
            challenge = q.get("code_challenge", "")
            if q.get("code_challenge_method") != "S256" or not 43 <= len(challenge) <= 128:
                return fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
            scope = q.get("scope", "")
            if self.scopes is not None and not set(scope.split()) <= self.scopes:
                return fail("invalid_scope", "an unknown scope was requested")
            if self.deny:
                return fail("access_denied", "the resource owner declined")
            code = secrets.token_urlsafe(24)
            self.grants.append(
                Grant(client.client_id, scope, uri, challenge, code, time.time() + CODE_TTL_S)
            )
            return 302, {"code": code, **out}, None

    def _client_auth(self, header: str | None, form: dict[str, str]) -> Client | None:
        if header and header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:]).decode()
            except ValueError:
                return None
            cid, _, secret = raw.partition(":")
            cid, secret = unquote_plus(cid), unquote_plus(secret)
            client = self.clients.get(cid)
            if (
                client is None
                or client.secret is None
                or not secrets.compare_digest(client.secret, secret)
            ):
                return None
            return client
        client = self.clients.get(form.get("client_id", ""))
        return client if client is not None and client.secret is None else None

    def token(self, header: str | None, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.counters["token"] += 1
            self.token_requests.append(
                {
                    k: ("***" if k in ("code", "refresh_token", "code_verifier") else v)
                    for k, v in form.items()
                }
            )
            client = self._client_auth(header, form)
            if client is None:
                return 401, {
                    "error": "invalid_client",
                    "error_description": "client authentication failed",
                }
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                return self._code_grant(client, form)
            if grant_type == "refresh_token":
                return self._refresh_grant(client, form)
            return 400, {"error": "unsupported_grant_type"}

    def _issue(self, g: Grant, rotate: bool) -> dict[str, Any]:
        access = "at_" + secrets.token_urlsafe(24)
        g.access.add(access)
        self.access_expiry[access] = time.time() + self.expires_in
        if rotate or g.refresh is None:
            g.refresh = "rt_" + secrets.token_urlsafe(24)
        self.counters["issued"] += 1
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": g.refresh,
            "scope": g.scope,
        }

    def _code_grant(self, client: Client, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = form.get("code", "")
        g = next((x for x in self.grants if secrets.compare_digest(x.code, code)), None)
        if g is None or g.client_id != client.client_id:
            return 400, {"error": "invalid_grant", "error_description": "unknown code"}
        if g.code_used:
            g.revoked = True  # §4.1.2: a replayed code revokes what it issued
            return 400, {"error": "invalid_grant", "error_description": "code already used"}
        if time.time() > g.code_expires:
            return 400, {"error": "invalid_grant", "error_description": "code expired"}
        if form.get("redirect_uri") != g.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"}
        verifier = form.get("code_verifier", "")
        if not 43 <= len(verifier) <= 128 or s256(verifier) != g.challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        g.code_used = True
        return 200, self._issue(g, rotate=True)

    def _refresh_grant(self, client: Client, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        token = form.get("refresh_token", "")
        g = next((x for x in self.grants if x.refresh and x.refresh == token), None)
        if g is None or g.client_id != client.client_id or g.revoked:
            return 400, {"error": "invalid_grant", "error_description": "refresh token is invalid"}
        self.counters["refresh"] += 1
        return 200, self._issue(g, rotate=True)

    def revoke(self, token: str) -> None:
        with self.lock:
            for g in self.grants:
                if token == g.refresh or token in g.access:
                    g.revoked = True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOAuthServer
    protocol_version = "HTTP/1.1"
    server_version = "fake-oauth"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # this server sees codes and tokens

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        ctype = "text/html" if isinstance(body, bytes) else "application/json;charset=UTF-8"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _raw(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        parts = urlsplit(self.path)
        q = dict(parse_qsl(parts.query, keep_blank_values=True))
        if parts.path == "/authorize":
            status, redirect, page = self.fake.authorize(q)
            if redirect is None:
                return self._send(status, {"error": "invalid_request", "error_description": page})
            uri = q["redirect_uri"]
            sep = "&" if "?" in uri else "?"
            self.send_response(302)
            self.send_header("Location", f"{uri}{sep}{urlencode(redirect)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if parts.path == "/__fake__/state":
            return self._send(200, self.fake.snapshot())
        return self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        raw = self._raw()
        form = dict(parse_qsl(raw.decode(errors="replace"), keep_blank_values=True))
        fake = self.fake
        if path == "/token":
            failure = fake.token_failure
            if failure == "html":
                with fake.lock:
                    fake.counters["token"] += 1
                return self._send(502, HTML_ERROR_PAGE)
            if failure == "rate_limit":
                with fake.lock:
                    fake.counters["token"] += 1
                return self._send(
                    429,
                    {"error": "slow_down", "error_description": "too many requests"},
                    {"Retry-After": str(fake.retry_after_s)},
                )
            if failure == "timeout":
                with fake.lock:
                    fake.counters["token"] += 1
                fake._release.wait(min(fake.hang_s, MAX_HANG_S))
                try:
                    return self._send(503, HTML_ERROR_PAGE)
                except OSError:
                    return None  # the client gave up waiting, as intended
            status, body = fake.token(self.headers.get("Authorization"), form)
            extra = {"WWW-Authenticate": 'Basic realm="fake"'} if status == 401 else None
            return self._send(status, body, extra)
        if path == "/revoke":
            fake.revoke(form.get("token", ""))
            return self._send(200, {})
        if path == "/introspect":
            return self._send(200, {"active": fake.active(form.get("token", ""))})
        if path == "/__fake__/mode":
            fake.set_mode(**json.loads(raw or b"{}"))
            return self._send(200, {})
        if path == "/__fake__/revoke_all":
            fake.revoke_all()
            return self._send(200, {})
        return self._send(404, {"error": "not_found"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in OAuth 2.0 authorization server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client", action="append", help="CLIENT_ID[:SECRET] (default fibric)")
    args = parser.parse_args(argv)
    clients = []
    for spec in args.client or ["fibric"]:
        cid, _, secret = spec.partition(":")
        clients.append(Client(cid, secret or None))
    fake = FakeOAuthServer(host=args.host, port=args.port, clients=clients).start()
    print(f"fake oauth server ready at {fake.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
