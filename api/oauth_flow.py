"""The OAuth 2.0 authorization dance of oauth2 connectors, api side (decisions §43).

Start: a fresh nonce, a signed ``state`` bound to the tenant, mode and connector, and the
provider's authorize URL with the PKCE challenge. Callback (``GET
/v1/connectors/oauth/callback``, no API key): the state is verified against the connector it
names (its tenant and mode are in the MAC), the nonce must be the connector's current one, the
code is exchanged at the token endpoint, and the tokens are sealed in the vault through the
control agent, which checks the nonce again (a state completes once, even when two callbacks
race). Nothing here returns, logs or stores a token in the clear.
"""

from __future__ import annotations

import time
from typing import Any

from agents.oauth import (
    STATE_TTL_S,
    StateError,
    authorize_url,
    make_state,
    new_nonce,
    parse_state,
    pkce_challenge,
    pkce_verifier,
    verify_state,
)
from api.commands import command_as
from api.state import ApiState
from connectors.marketplace import Listing, load_catalogue
from connectors.oauth import TokenEndpointError, exchange_code, provider_for, redirect_uri
from schemas.connector import Connector
from schemas.errors import ErrorCode, FibricError

CALLBACK_ACTOR = "oauth_callback"


def state_secret(state: ApiState) -> str:
    key = state.extra.get("oauth_secret")
    if key is None:
        key = state.extra["oauth_secret"] = state.settings.load_secret_key()
    return key


def start(
    state: ApiState, *, listing: Listing, connector_id: str, tenant_id: str, livemode: bool
) -> tuple[str, str]:
    """``(nonce, authorize_url)`` of a new authorization of the connector."""
    provider = provider_for(listing, state.settings)
    if provider is None:
        raise FibricError(
            ErrorCode.STATE_CONFLICT, f"{listing.id} has no OAuth 2.0 endpoints configured."
        )
    secret = state_secret(state)
    nonce = new_nonce()
    signed = make_state(
        secret,
        tenant_id=tenant_id,
        livemode=livemode,
        connector_id=connector_id,
        nonce=nonce,
        expires_at=int(time.time() + STATE_TTL_S),
    )
    url = authorize_url(
        provider.endpoints.authorize_url,
        client_id=provider.endpoints.client_id,
        redirect_uri=redirect_uri(state.settings),
        state=signed,
        code_challenge=pkce_challenge(pkce_verifier(secret, nonce)),
        scopes=provider.endpoints.scopes,
    )
    return nonce, url


def _invalid_state(message: str) -> FibricError:
    return FibricError(ErrorCode.INVALID_PARAMETER, message, param="state")


def resolve_state(state: ApiState, raw: str | None) -> tuple[Connector, str]:
    """The connector a callback's ``state`` completes, and its nonce; the state's MAC is checked
    with the tenant and mode of that connector, so one tenant's state never completes another
    tenant's connector. Unknown connector, forged and cross-tenant states get one answer."""
    if not raw:
        raise FibricError(ErrorCode.MISSING_PARAMETER, "state is required.", param="state")
    try:
        connector_id, *_ = parse_state(raw)
    except StateError:
        raise _invalid_state("state is not an authorization state of this service.") from None
    cn = state.view.connectors.get(connector_id)
    not_valid = "state is not valid for any pending authorization."
    if cn is None or cn.auth.get("type") != "oauth2":
        raise _invalid_state(not_valid)
    try:
        _, nonce = verify_state(
            state_secret(state), raw, tenant_id=cn.tenant_id, livemode=cn.livemode, now=time.time()
        )
    except StateError as exc:
        if exc.reason == "expired":
            raise _invalid_state(
                "state has expired; start the authorization again (POST "
                f"/v1/connectors/{cn.id}/authorize)."
            ) from None
        raise _invalid_state(not_valid) from None
    if cn.oauth_nonce != nonce:
        raise FibricError(
            ErrorCode.STATE_CONFLICT,
            "This authorization was already completed or superseded; start it again from the "
            "connector's authorize_url.",
            param="state",
        )
    return cn, nonce


async def _conclude(
    state: ApiState, cn: Connector, request_id: str, args: dict[str, Any]
) -> dict[str, Any]:
    return await command_as(
        state,
        "connector.authorize",
        tenant_id=cn.tenant_id,
        livemode=cn.livemode,
        actor=CALLBACK_ACTOR,
        request_id=request_id,
        args={"connector_id": cn.id, **args},
    )


async def complete(
    state: ApiState,
    request_id: str,
    *,
    raw_state: str | None,
    code: str | None,
    error: str | None,
    error_description: str | None,
) -> dict[str, Any]:
    """Run the callback; the connector object when it is connected, else a FibricError after
    the connector moved to ``error`` (or stayed ``pending_auth`` when only waiting helps)."""
    cn, nonce = resolve_state(state, raw_state)
    listing = load_catalogue()[cn.listing]
    if error is not None:  # RFC 6749 §4.1.2.1: the provider (or the person) declined
        reason = f"the provider declined the authorization: {error[:100]}"
        if error_description:
            reason += f" ({error_description[:200]})"
        await _conclude(
            state, cn, request_id, {"nonce": nonce, "outcome": "failed", "detail": reason}
        )
        raise FibricError(
            ErrorCode.AUTH_FAILED,
            f"{listing.name}: {reason}; {cn.id} moved to error.",
            details={"connector_id": cn.id, "provider_error": error[:100]},
        )
    if not code or len(code) > 2048:
        raise FibricError(
            ErrorCode.MISSING_PARAMETER if not code else ErrorCode.INVALID_PARAMETER,
            "code is required (or error, when the provider declined).",
            param="code",
        )
    provider = provider_for(listing, state.settings)
    assert provider is not None  # resolve_state found an oauth2 connector of a live listing
    try:
        creds = await exchange_code(
            provider,
            code=code,
            verifier=pkce_verifier(state_secret(state), nonce),
            redirect_uri=redirect_uri(state.settings),
            timeout_s=state.settings.oauth_timeout_s,
        )
    except TokenEndpointError as exc:
        details: dict[str, Any] = {"connector_id": cn.id, "upstream_status": exc.status}
        if exc.kind == "rate_limited":
            # The code was not consumed: the same callback URL works after Retry-After, and the
            # connector stays pending_auth (nothing is lost).
            details["retry_after_s"] = exc.retry_after_s
            raise FibricError(
                ErrorCode.SERVICE_UNAVAILABLE,
                f"{listing.name}: {exc.message}; {cn.id} is still pending_auth, retry this "
                "callback later.",
                details=details,
                headers={"Retry-After": str(exc.retry_after_s or 1)},
            ) from None
        detail = f"token exchange failed: {exc.message}"
        await _conclude(
            state, cn, request_id, {"nonce": nonce, "outcome": "failed", "detail": detail}
        )
        if exc.error:
            details["provider_error"] = exc.error
        code_ = (
            ErrorCode.AUTH_FAILED
            if exc.kind in ("invalid_grant", "rejected")
            else ErrorCode.CONNECTOR_UPSTREAM_ERROR
        )
        raise FibricError(
            code_, f"{listing.name}: {detail}; {cn.id} moved to error.", details=details
        ) from None
    health = {"token_expires_at": _iso_epoch(creds.get("expires_at"))}
    return await _conclude(
        state,
        cn,
        request_id,
        {
            "nonce": nonce,
            "outcome": "granted",
            "ciphertext": state.box.seal(creds),
            "health": health,
        },
    )


def _iso_epoch(value: Any) -> str | None:
    if not isinstance(value, int | float):
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")
