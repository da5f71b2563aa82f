"""The connector health probe and OAuth token keeper, run in the api role (decisions §43).

Every ``connector_probe_interval_s`` each installed connector that can be probed (not
``pending_auth``) gets one ``connector.check`` call through the api's connector runtime,
bounded by ``connector_probe_timeout_s`` and at most ``connector_probe_concurrency`` at once.
Before it, an oauth2 connector whose access token is due (``agents.oauth.refresh_due``) is
refreshed; a check answered ``auth_failed`` (the provider's 401) is refreshed once and checked
again. Refreshed tokens are sealed and written through the control agent
(``connector.credentials``: a new connector version, so workers restart their session with
them); ``invalid_grant`` means the grant was revoked: the connector moves to ``error`` and
dispatches are refused with ``connector_unavailable`` until it is authorized again.

Writes go through the control agent with the version the decision was made on
(``expect_version``): a re-authorization, test or uninstall in the meantime wins. A status
change is ``connector.set_status`` (the audit trail, and the ``connector.status_changed``
webhook); a probe that changed nothing writes ``connector.touch`` only when ``last_synced_at``
is older than the interval (honest to that resolution) and otherwise stays in memory here
(``latest``, shown by ``GET /v1/connectors/{id}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.connector_health import PROBED, Probe, next_status, record
from agents.oauth import credentials_fingerprint, refresh_due
from api.commands import command_as
from api.state import ApiState
from connectors.marketplace import CHECK_TOOL, load_catalogue
from connectors.oauth import TokenEndpointError, provider_for, refresh
from schemas.connector import Connector, ConnectorHealth
from schemas.errors import FibricError
from schemas.ids import new_id
from streams.oauth_refresh import REVOKE_CONFIRM_S

log = logging.getLogger(__name__)
ACTOR = "connector_health"
# last_synced_at is rewritten at most this often when nothing else changes
MIN_SYNC_RESOLUTION_S = 30.0


def _iso(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if isinstance(ts, int | float) else None


def _with_token_of(
    live: ConnectorHealth | None, stored: ConnectorHealth | None
) -> ConnectorHealth | None:
    """``live`` with the stored token renewal when that is newer than the one ``live`` knows."""
    if live is None or stored is None or stored.token_refreshed_at is None:
        return live
    if live.token_refreshed_at is not None and live.token_refreshed_at >= stored.token_refreshed_at:
        return live
    return live.model_copy(
        update={
            "token_refreshed_at": stored.token_refreshed_at,
            "token_expires_at": stored.token_expires_at,
        }
    )


class ConnectorHealthMonitor:
    def __init__(self, state: ApiState) -> None:
        self.state = state
        s = state.settings
        self.interval_s = s.connector_probe_interval_s
        self.timeout_s = s.connector_probe_timeout_s
        self._sem = asyncio.Semaphore(s.connector_probe_concurrency)
        self._live: dict[str, ConnectorHealth] = {}
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def latest(self, connector_id: str) -> ConnectorHealth | None:
        """The last probe in this process, with the token fields of a renewal recorded since
        (a worker renews a token on a dispatch's 401, decisions §47)."""
        live = self._live.get(connector_id)
        cn = self.state.view.connectors.get(connector_id)
        return _with_token_of(live, cn.health if cn is not None else None)

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="connector-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad round must not end the probing
                log.exception("connector health round failed")

    async def round(self) -> None:
        """Probe every probeable connector once (bounded concurrency)."""
        view = self.state.view
        due = [
            cn
            for cn in list(view.connectors.values())
            if cn.status in PROBED and not cn.deleted and self._probeable(cn)
        ]
        for gone in set(self._live) - set(view.connectors):
            self._live.pop(gone, None)
        log.debug("health round %d: probing %d connectors", self.rounds, len(due))
        await asyncio.gather(*(self._guarded(cn) for cn in due))
        self.rounds += 1

    @staticmethod
    def _probeable(cn: Connector) -> bool:
        """A listed server to ask, and for oauth2 a granted authorization (a failed or revoked
        one has no token to probe with until it is authorized again)."""
        listing = load_catalogue().get(cn.listing)
        if listing is None or listing.server is None:
            return False
        return cn.auth.get("type") != "oauth2" or cn.grant == "granted"

    async def _guarded(self, cn: Connector) -> None:
        async with self._sem:
            try:
                await asyncio.wait_for(self.probe(cn), self.timeout_s * 3)
            except asyncio.CancelledError:
                raise
            except FibricError as exc:  # a stale decision (409) or the control plane is slow
                log.info("health probe of %s not recorded: %s", cn.id, exc.code)
            except Exception as exc:  # noqa: BLE001 - logged, probed again next round
                log.warning("health probe of %s failed: %s", cn.id, type(exc).__name__)

    # ---- one connector ---------------------------------------------------------------------
    def _sealed(self, cn: Connector) -> str | None:
        entry = self.state.view.vault.get(cn.id)
        return entry.ciphertext if entry and entry.ciphertext else None

    def _credentials(self, cn: Connector) -> dict[str, Any]:
        sealed = self._sealed(cn)
        return self.state.box.open(sealed) if sealed else {}

    async def _command(self, cn: Connector, type_: Any, args: dict[str, Any]) -> dict[str, Any]:
        return await command_as(
            self.state,
            type_,
            tenant_id=cn.tenant_id,
            livemode=cn.livemode,
            actor=ACTOR,
            request_id=new_id("req"),
            args={"connector_id": cn.id, "expect_version": cn.version, **args},
        )

    async def _refresh(
        self, cn: Connector, creds: dict[str, Any], health: ConnectorHealth, sealed: str | None
    ) -> tuple[Connector, dict[str, Any]] | str:
        """Renew the token; the connector and credentials to go on with, or why not
        (``"revoked"``: the grant is gone; another string: the endpoint failed for now)."""
        listing = load_catalogue()[cn.listing]
        provider = provider_for(listing, self.state.settings)
        if provider is None:
            return "no oauth endpoints"
        try:
            fresh = await refresh(provider, creds, timeout_s=self.state.settings.oauth_timeout_s)
        except TokenEndpointError as exc:
            if exc.kind == "invalid_grant":
                return "revoked"
            return exc.message
        health = health.model_copy(
            update={
                "token_refreshed_at": datetime.now(UTC),
                "token_expires_at": _iso(fresh.get("expires_at")),
            }
        )
        out = await self._command(
            cn,
            "connector.credentials",
            {
                "ciphertext": self.state.box.seal(fresh),
                "health": health.model_dump(mode="json"),
                # guarded on the tokens replaced, not the version (decisions §47)
                "expect_credentials": credentials_fingerprint(sealed),
            },
        )
        updated = cn.model_copy(update={"version": out["version"], "health": health})
        return updated, fresh

    async def _renewed_elsewhere(self, cn: Connector, sealed: str | None) -> bool:
        """After invalid_grant: did a worker renew the tokens meanwhile (a provider that rotates
        refresh tokens refuses the slower refresher)? Checked at once and after a moment."""
        for wait in (0.0, REVOKE_CONFIRM_S):
            if wait:
                await asyncio.sleep(wait)
            await self.state.view.sync()
            now = self._sealed(cn)
            if now is not None and now != sealed:
                return True
        return False

    async def _revoked(self, cn: Connector, health: ConnectorHealth, sealed: str | None) -> None:
        if await self._renewed_elsewhere(cn, sealed):
            log.info("refresh of %s refused: renewed elsewhere meanwhile", cn.id)
            return
        now = datetime.now(UTC)
        health = record(
            health,
            Probe(now, False, 0, "grant_revoked", "the provider refused the refresh token"),
        )
        self._live[cn.id] = health
        await self._command(
            cn,
            "connector.set_status",
            {
                "status": "error",
                "grant": "revoked",
                "detail": "authorization revoked: the provider refused the refresh token "
                "(invalid_grant); authorize the connector again",
                "reason": "authorization revoked",
                "health": health.model_dump(mode="json"),
                # not when a worker renewed the tokens meanwhile (decisions §47)
                "expect_credentials": credentials_fingerprint(sealed),
            },
        )

    async def _check(self, cn: Connector, creds: dict[str, Any]) -> Probe:
        from connectors.pool import ConnectorSpec

        runtime = self.state.runtime
        assert runtime is not None
        listing = load_catalogue()[cn.listing]
        spec = ConnectorSpec.of(cn, listing, creds)
        started = time.perf_counter()
        try:
            await runtime.ensure(spec)
            res = await runtime.call(cn.id, CHECK_TOOL, {}, timeout_s=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - the server did not start: a failed probe
            ms = round((time.perf_counter() - started) * 1000)
            return Probe(datetime.now(UTC), False, ms, "connector_crashed", f"{type(exc).__name__}")
        ms = round(res.latency_ms or (time.perf_counter() - started) * 1000)
        if res.ok:
            return Probe(datetime.now(UTC), True, ms)
        return Probe(datetime.now(UTC), False, ms, res.error_code, res.error_message)

    async def probe(self, cn: Connector) -> None:
        health = _with_token_of(self._live.get(cn.id), cn.health) or cn.health or ConnectorHealth()
        sealed = self._sealed(cn)
        creds = self.state.box.open(sealed) if sealed else {}
        oauth = cn.auth.get("type") == "oauth2"
        refreshed = False
        if oauth and refresh_due(creds, time.time()):
            got = await self._refresh(cn, creds, health, sealed)
            if got == "revoked":
                return await self._revoked(cn, health, sealed)
            if isinstance(got, tuple):
                (cn, creds), refreshed = got, True
                health = cn.health or health
        probe = await self._check(cn, creds)
        if oauth and not probe.ok and probe.error_code == "auth_failed" and not refreshed:
            got = await self._refresh(cn, creds, health, sealed)  # the provider's 401: once
            if got == "revoked":
                return await self._revoked(cn, health, sealed)
            if isinstance(got, tuple):
                cn, creds = got
                health = cn.health or health
                probe = await self._check(cn, creds)
        health = record(health, probe)
        self._live[cn.id] = health
        status, detail = next_status(cn.status, health)
        body = health.model_dump(mode="json")
        if status != cn.status:
            await self._command(
                cn,
                "connector.set_status",
                {
                    "status": status,
                    "detail": detail,
                    "synced": probe.ok,
                    "health": body,
                    "reason": "health probe",
                },
            )
            return
        resolution = max(self.interval_s, MIN_SYNC_RESOLUTION_S)
        stale = cn.last_synced_at is None or probe.at - cn.last_synced_at > timedelta(
            seconds=resolution
        )
        if probe.ok and stale:
            await self._command(cn, "connector.touch", {"synced": True, "health": body})
