"""The pure half of the OAuth 2.0 authorization dance (RFC 6749 §4.1 with PKCE, RFC 7636):
the signed ``state``, the PKCE pair, the authorize URL, reading a token response into the
credentials the vault seals, and when a token is due for refresh.

No I/O here (the token endpoint is called by ``connectors/oauth.py``). Decisions §43.

``state`` is ``<connector_id>.<nonce>.<expires_at>.<mac>``: the MAC (HMAC-SHA256 under a key
derived from ``FIBRIC_SECRET_KEY``) covers the tenant, the mode, the connector, the nonce and the
expiry, so a state is bound to one tenant's connector and cannot be forged or moved to another;
the connector record holds the one nonce it currently accepts, so a state completes at most once.
The PKCE ``code_verifier`` is derived from the nonce under another derived key, so nothing secret
is stored for the dance and the verifier never leaves this deployment except to the token endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from typing import Any
from urllib.parse import urlencode

# How long an authorize URL stays usable: a person signs in and consents within minutes.
STATE_TTL_S = 600
# Refresh an access token this long before it expires (a short-lived token: in the last 10 % of
# its life), so a dispatch never carries a token that expires in flight.
REFRESH_MARGIN_S = 120.0
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CONNECTOR_ID_RE = re.compile(r"^cn_[0-9A-Z]{26}$")
# Token responses are small JSON documents; a token longer than this is refused as malformed.
MAX_TOKEN_CHARS = 8192


class StateError(ValueError):
    """Why a ``state`` was refused: ``malformed``, ``bad_signature`` or ``expired``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _derive(secret_key: str, purpose: bytes) -> bytes:
    return hashlib.sha256(b"fibric-oauth-v1\x00" + purpose + b"\x00" + secret_key.encode()).digest()


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def _mac(secret_key: str, tenant_id: str, livemode: bool, payload: str) -> str:
    msg = f"{tenant_id}|{int(livemode)}|{payload}".encode()
    return _b64(hmac.new(_derive(secret_key, b"state"), msg, hashlib.sha256).digest())


def make_state(
    secret_key: str,
    *,
    tenant_id: str,
    livemode: bool,
    connector_id: str,
    nonce: str,
    expires_at: int,
) -> str:
    payload = f"{connector_id}.{nonce}.{expires_at}"
    return f"{payload}.{_mac(secret_key, tenant_id, livemode, payload)}"


def parse_state(state: str) -> tuple[str, str, int, str]:
    """``(connector_id, nonce, expires_at, mac)``; ``StateError("malformed")`` if not a state."""
    parts = state.split(".") if isinstance(state, str) and len(state) <= 300 else []
    if len(parts) != 4 or not CONNECTOR_ID_RE.match(parts[0]) or not NONCE_RE.match(parts[1]):
        raise StateError("malformed")
    if not parts[2].isdigit() or len(parts[2]) > 12:
        raise StateError("malformed")
    return parts[0], parts[1], int(parts[2]), parts[3]


def verify_state(
    secret_key: str, state: str, *, tenant_id: str, livemode: bool, now: float
) -> tuple[str, str]:
    """Check the MAC against the tenant and mode of the connector the state names, then the
    expiry; ``(connector_id, nonce)``. Raises ``StateError``."""
    connector_id, nonce, expires_at, mac = parse_state(state)
    payload = f"{connector_id}.{nonce}.{expires_at}"
    if not hmac.compare_digest(mac, _mac(secret_key, tenant_id, livemode, payload)):
        raise StateError("bad_signature")
    if now > expires_at:
        raise StateError("expired")
    return connector_id, nonce


def pkce_verifier(secret_key: str, nonce: str) -> str:
    """RFC 7636 §4.1 ``code_verifier``: 43 characters of the unreserved alphabet."""
    return _b64(hmac.new(_derive(secret_key, b"pkce"), nonce.encode(), hashlib.sha256).digest())


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, method S256: ``BASE64URL(SHA256(ASCII(code_verifier)))``."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def authorize_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    scopes: list[str],
) -> str:
    """RFC 6749 §4.1.1 authorization request (+ RFC 7636 §4.3)."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if scopes:
        params["scope"] = " ".join(scopes)
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"


class TokenResponseError(ValueError):
    pass


def credentials_from_token(
    doc: Any, now: float, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The vault's oauth2 credentials from an RFC 6749 §5.1 access token response. A refresh
    response without a new ``refresh_token`` keeps the previous one (§6). Raises
    ``TokenResponseError`` on a response that is not a usable bearer token."""
    if not isinstance(doc, dict):
        raise TokenResponseError("the token response is not a JSON object")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise TokenResponseError("the token response has no access_token")
    kind = doc.get("token_type")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise TokenResponseError("the token response is not a bearer token (token_type)")
    expires_in = doc.get("expires_in")
    expires_at: float | None = None
    if expires_in is not None:
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # some providers send it as a string
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            raise TokenResponseError("expires_in is not a number")
        if not math.isfinite(expires_in) or expires_in <= 0:
            raise TokenResponseError("expires_in is not positive")
        expires_at = round(now + float(expires_in), 3)
    refresh = doc.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or len(refresh) > MAX_TOKEN_CHARS):
        raise TokenResponseError("refresh_token is malformed")
    if not refresh and previous:
        refresh = previous.get("refresh_token")
    scope = doc.get("scope")
    if not isinstance(scope, str):
        scope = (previous or {}).get("scope")
    out: dict[str, Any] = {
        "type": "oauth2",
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": expires_at,
        "obtained_at": round(now, 3),
    }
    if refresh:
        out["refresh_token"] = refresh
    if scope:
        out["scope"] = scope
    return out


def refresh_due(
    credentials: dict[str, Any], now: float, margin_s: float = REFRESH_MARGIN_S
) -> bool:
    """True when the access token expires within the margin (for a token living less than ten
    margins: within its last 10 %) and a refresh token exists to renew it."""
    expires_at = credentials.get("expires_at")
    if not credentials.get("refresh_token") or not isinstance(expires_at, int | float):
        return False
    obtained = credentials.get("obtained_at")
    lifetime = expires_at - obtained if isinstance(obtained, int | float) else None
    margin = margin_s if lifetime is None else min(margin_s, 0.1 * lifetime)
    return now >= expires_at - margin


def provider_error(doc: Any) -> tuple[str, str | None] | None:
    """``(error, error_description)`` of an RFC 6749 §5.2 error response, else None."""
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        return None
    desc = doc.get("error_description")
    return doc["error"][:100], desc[:300] if isinstance(desc, str) else None


def credentials_fingerprint(ciphertext: str | None) -> str:
    """Names one sealed set of credentials (a vault write) without revealing anything: the
    ``expect_credentials`` of a refresh's write, so the control agent keeps the first of two
    refreshers' renewals and refuses one built on tokens already replaced (decisions §47)."""
    return hashlib.sha256((ciphertext or "").encode()).hexdigest()[:32]
