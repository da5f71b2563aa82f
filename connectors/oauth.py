"""The token endpoint of an oauth2 listing's provider (RFC 6749 §4.1.3 code exchange with the
PKCE verifier, RFC 7636 §4.5; §6 refresh), over a real HTTP client.

Every way a provider can answer badly becomes one ``TokenEndpointError`` with a clear message
and a ``kind`` the caller acts on: ``invalid_grant`` (the code or the refresh token is no good:
revoked, expired, replayed), ``rejected`` (any other RFC 6749 §5.2 error, e.g.
``invalid_client``), ``rate_limited`` (429, with ``retry_after_s`` from ``Retry-After``),
``unavailable`` (5xx, an HTML error page, a timeout, a refused connection) or ``malformed`` (a
2xx that is not a bearer token). Tokens, the client secret and the code are never put in a
message, a log line or an exception. Redirects are never followed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from agents.oauth import TokenResponseError, credentials_from_token, provider_error
from connectors.marketplace import Listing, OAuthEndpoints
from schemas.settings import Settings

TokenErrorKind = Literal["invalid_grant", "rejected", "rate_limited", "unavailable", "malformed"]
# Longest Retry-After we report as such; beyond it the provider is simply unavailable for now.
MAX_RETRY_AFTER_S = 3600
CALLBACK_PATH = "/v1/connectors/oauth/callback"


@dataclass(frozen=True)
class Provider:
    endpoints: OAuthEndpoints
    client_secret: str | None = None


def provider_for(listing: Listing, settings: Settings) -> Provider | None:
    """The listing's endpoints with this deployment's overrides and client registration."""
    if listing.oauth is None:
        return None
    override = settings.oauth_providers.get(listing.id) or {}
    merged = listing.oauth.model_dump() | {
        k: v for k, v in override.items() if k in OAuthEndpoints.model_fields and v
    }
    secret = override.get("client_secret")
    return Provider(OAuthEndpoints.model_validate(merged), secret if secret else None)


def redirect_uri(settings: Settings) -> str:
    return settings.public_base_url + CALLBACK_PATH


class TokenEndpointError(Exception):
    def __init__(
        self,
        kind: TokenErrorKind,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.error = error
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None, now: float) -> int | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0, min(round(when - now), MAX_RETRY_AFTER_S))


async def _post(provider: Provider, form: dict[str, str], timeout_s: float) -> Any:
    ep = provider.endpoints
    auth: Any = httpx.USE_CLIENT_DEFAULT
    if provider.client_secret:
        # client_secret_basic (RFC 6749 §2.3.1); httpx form-encodes the pair per the RFC's note
        auth = httpx.BasicAuth(ep.client_id, provider.client_secret)
    else:
        form = {**form, "client_id": ep.client_id}  # a public client identifies itself (§3.2.1)
    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(3.0, timeout_s)),
            follow_redirects=False,
            trust_env=False,
        ) as client:
            resp = await client.post(
                ep.token_url, data=form, auth=auth, headers={"Accept": "application/json"}
            )
    except httpx.TimeoutException:
        raise TokenEndpointError(
            "unavailable", f"the token endpoint did not answer within {timeout_s:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise TokenEndpointError(
            "unavailable", f"the token endpoint could not be reached ({type(exc).__name__})"
        ) from None
    try:
        body = resp.json() if resp.content else None
    except ValueError:
        body = None
    status = resp.status_code
    if status == 429:
        after = retry_after_seconds(resp.headers.get("retry-after"), time.time())
        hint = f"; retry after {after} s" if after is not None else ""
        raise TokenEndpointError(
            "rate_limited",
            f"the token endpoint is rate limiting (HTTP 429){hint}",
            status=status,
            retry_after_s=after,
        )
    err = provider_error(body)
    if status >= 400 and err is not None and status < 500:
        code, desc = err
        kind: TokenErrorKind = "invalid_grant" if code == "invalid_grant" else "rejected"
        raise TokenEndpointError(
            kind,
            f"the provider refused the grant: {code}" + (f" ({desc})" if desc else ""),
            status=status,
            error=code,
        )
    if status >= 300 or body is None:
        ctype = resp.headers.get("content-type", "").split(";")[0].strip() or "no content type"
        what = "an HTML page" if "html" in ctype else f"a non-JSON body ({ctype})"
        if body is not None:
            what = "a JSON body without an RFC 6749 error"
        raise TokenEndpointError(
            "unavailable" if status >= 500 or status < 400 else "rejected",
            f"the token endpoint answered HTTP {status} with {what}",
            status=status,
        )
    return body


async def exchange_code(
    provider: Provider, *, code: str, verifier: str, redirect_uri: str, timeout_s: float
) -> dict[str, Any]:
    """Authorization code -> the credentials to seal (RFC 6749 §4.1.3, RFC 7636 §4.5)."""
    body = await _post(
        provider,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        timeout_s,
    )
    try:
        return credentials_from_token(body, time.time())
    except TokenResponseError as exc:
        raise TokenEndpointError(
            "malformed", f"the token endpoint answered 200 but {exc}"
        ) from None


async def refresh(
    provider: Provider, credentials: dict[str, Any], *, timeout_s: float
) -> dict[str, Any]:
    """A new access token for ``credentials`` (RFC 6749 §6); keeps the refresh token unless the
    provider rotates it."""
    token = credentials.get("refresh_token")
    if not token:
        raise TokenEndpointError("invalid_grant", "there is no refresh token to renew the grant")
    form = {"grant_type": "refresh_token", "refresh_token": str(token)}
    if credentials.get("scope"):
        form["scope"] = str(credentials["scope"])
    body = await _post(provider, form, timeout_s)
    try:
        return credentials_from_token(body, time.time(), previous=credentials)
    except TokenResponseError as exc:
        raise TokenEndpointError(
            "malformed", f"the token endpoint answered 200 but {exc}"
        ) from None
