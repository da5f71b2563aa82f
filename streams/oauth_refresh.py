"""Renewing an oauth2 connector's access token when a worker's dispatch meets a 401 (decisions
§47; the api's health monitor renews before expiry and on a probe's 401, §43).

Why here, in the worker, and not in the connector server or by asking the api: the worker
already holds the plaintext credentials (it opens the vault to start the connector's session)
and the vault key, so sealing the renewed tokens here exposes nothing new; the connector server
is the one process that must never hold the refresh token or write config; and asking the api's
monitor would put an api round trip, two config versions and the api's availability in the path
of every dispatch that meets an expired token. The write still goes through the control agent
(``connector.credentials``: a new connector version every worker restarts its session on).

Races between refreshers (this worker's lanes, other workers, the api's monitor) are settled on
the *credentials*, not on the connector's version: ``expect_credentials`` names the sealed
tokens a refresh replaced, so the control agent keeps the first renewal and refuses one built on
tokens someone else already replaced; and a refresh refused with ``invalid_grant`` is called a
revocation only after the view shows nobody else renewed the tokens meanwhile (a provider that
rotates refresh tokens answers the slower of two refreshers ``invalid_grant``).

Never logs, returns or sends a token in the clear: only sealed ciphertext leaves this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agents.oauth import credentials_fingerprint
from agents.secrets import SecretBox
from connectors.marketplace import load_catalogue
from connectors.oauth import TokenEndpointError, provider_for, refresh
from schemas.connector import Connector, ConnectorHealth
from schemas.settings import Settings

log = logging.getLogger(__name__)

ACTOR = "worker_token_refresh"
# After the provider answered invalid_grant, how long another refresher's renewal may take to
# reach the config log before this worker calls the grant revoked (a seal, one command, one
# changelog record: well under a second on a healthy control plane).
REVOKE_CONFIRM_S = 1.0

SendCommand = Callable[[str, Connector, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Renewed:
    """Fresh tokens (sealed as ``ciphertext``) to restart the session with."""

    credentials: dict[str, Any]
    ciphertext: str


@dataclass(frozen=True)
class Superseded:
    """Someone else renewed the tokens meanwhile: the vault's ``ciphertext`` is newer."""

    ciphertext: str


@dataclass(frozen=True)
class Revoked:
    reason: str


@dataclass(frozen=True)
class Failed:
    """The token endpoint failed for now (HTML page, timeout, 429...): keep the 401 answer."""

    message: str


Renewal = Renewed | Superseded | Revoked | Failed

REVOKED_REASON = "the connector's authorization was revoked; authorize it again"


class TokenRenewer:
    def __init__(self, settings: Settings, box: SecretBox, view: Any, send: SendCommand) -> None:
        self._settings = settings
        self._box = box
        self._view = view
        self._send = send

    def _vault_ciphertext(self, connector_id: str) -> str | None:
        entry = self._view.vault.get(connector_id)
        return entry.ciphertext if entry is not None and entry.ciphertext else None

    async def renew(
        self, cn: Connector, credentials: dict[str, Any], replaces: str | None
    ) -> Renewal:
        """Refresh ``credentials`` (the ones sealed as ``replaces`` that met the 401)."""
        listing = load_catalogue().get(cn.listing)
        provider = provider_for(listing, self._settings) if listing is not None else None
        if provider is None:
            return Failed("the listing has no OAuth 2.0 endpoints configured")
        try:
            fresh = await refresh(provider, credentials, timeout_s=self._settings.oauth_timeout_s)
        except TokenEndpointError as exc:
            if exc.kind != "invalid_grant":
                return Failed(exc.message)
            return await self._refused(cn, replaces)
        sealed = self._box.seal(fresh)
        health = (cn.health or ConnectorHealth()).model_copy(
            update={
                "token_refreshed_at": datetime.now(UTC),
                "token_expires_at": _at(fresh.get("expires_at")),
            }
        )
        await self._send(
            "connector.credentials",
            cn,
            {
                "ciphertext": sealed,
                "expect_credentials": credentials_fingerprint(replaces),
                "health": health.model_dump(mode="json"),
            },
        )
        log.info("renewed the access token of %s after a 401", cn.id)
        return Renewed(fresh, sealed)

    async def _refused(self, cn: Connector, replaces: str | None) -> Renewal:
        """invalid_grant: revoked, unless another refresher renewed the tokens meanwhile."""
        for wait in (0.0, REVOKE_CONFIRM_S):
            if wait:
                await asyncio.sleep(wait)
            await self._view.sync()
            now = self._vault_ciphertext(cn.id)
            if now is not None and now != replaces:
                return Superseded(now)
        await self._send(
            "connector.set_status",
            cn,
            {
                "status": "error",
                "grant": "revoked",
                "expect_credentials": credentials_fingerprint(replaces),
                "detail": "authorization revoked: the provider refused the refresh token "
                "(invalid_grant); authorize the connector again",
                "reason": "authorization revoked",
            },
        )
        log.warning("the OAuth grant of %s was revoked (invalid_grant on refresh)", cn.id)
        return Revoked(REVOKED_REASON)


def _at(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


def command_sender(producer: Any, actor_suffix: str) -> SendCommand:
    """Fire-and-forget commands to the control agent (its reply is not awaited: the worker goes
    on with the tokens it holds; every worker's view then moves to the new version)."""
    from schemas.commands import Command
    from schemas.ids import new_id
    from streams.topics import COMMANDS

    async def send(type_: str, cn: Connector, args: dict[str, Any]) -> None:
        cmd = Command(
            id=new_id("cmd"),
            reply_to=f"{ACTOR}-{actor_suffix}",
            type=type_,  # type: ignore[arg-type]
            tenant_id=cn.tenant_id,
            livemode=cn.livemode,
            actor=ACTOR,
            args={"connector_id": cn.id, **args},
            at=datetime.now(UTC),
        )
        await producer.send_and_wait(
            COMMANDS, cmd.model_dump_json().encode(), key=cn.tenant_id.encode()
        )

    return send


__all__ = [
    "Failed",
    "Renewal",
    "Renewed",
    "Revoked",
    "Superseded",
    "TokenRenewer",
    "command_sender",
]
