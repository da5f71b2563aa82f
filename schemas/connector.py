"""The installed-connector object (seed 001), its install body, and the vault record."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CONNECTOR_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}[a-z0-9]$|^[a-z0-9]$")


# Stored fields no response shows.
CONNECTOR_PRIVATE = ("tenant_id", "deleted", "remote_url", "oauth_nonce", "grant")


class ConnectorTool(BaseModel):
    name: str
    side_effect: bool
    capability: str | None = None
    compensating_tool: str | None = None


class ProbeError(BaseModel):
    code: str  # a connector error code: auth_failed, upstream_error, timeout, ...
    message: str
    at: datetime


class ConnectorHealth(BaseModel):
    """The last health probe (``connector.check``) of a connector (decisions §43)."""

    last_probe_at: datetime | None = None
    ok: bool | None = None
    latency_ms: int | None = None
    consecutive_failures: int = 0
    last_error: ProbeError | None = None
    # oauth2: when the access token was last renewed, and when the current one expires
    token_refreshed_at: datetime | None = None
    token_expires_at: datetime | None = None


# Statuses (spec §2.4 and the connector.status_changed webhook): degraded = reachable with
# failures the health probe expects to pass; error = needs a person (credentials, revoked grant).
ConnectorStatus = Literal["connected", "degraded", "pending_auth", "error"]


class Connector(BaseModel):
    """The stored connector instance. Credentials are NOT here: they live, encrypted, in the
    vault records (kind ``vault``) so an uninstall can purge them."""

    id: str
    object: Literal["connector"] = "connector"
    tenant_id: str
    livemode: bool
    listing: str
    name: str
    kind: Literal["saas", "hardware"]
    transport: Literal["mcp"] = "mcp"
    capabilities: list[str]
    tools: list[ConnectorTool]
    auth: dict[str, Any]  # {"type": …, "hint": …}
    config: dict[str, Any]
    status: ConnectorStatus
    status_detail: str | None = None
    authorize_url: str | None = None
    health: ConnectorHealth | None = None
    price: dict[str, Any] | None = None
    remote_url: str | None = None
    created_at: datetime
    updated_at: datetime
    last_synced_at: datetime | None = None
    version: int = 1
    deleted: bool = False
    # oauth2 (decisions §43, internal): the nonce of the one state the callback accepts now
    # (None once used), and the grant's standing; a revoked grant refuses dispatches.
    oauth_nonce: str | None = None
    grant: Literal["pending", "granted", "revoked"] | None = None

    def public(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude=set(CONNECTOR_PRIVATE))
        d["tools"] = [{"name": t.name, "side_effect": t.side_effect} for t in self.tools]
        d["installed_at"] = d["created_at"]  # the spec's name (§2.4)
        if d.get("authorize_url") is None:
            d.pop("authorize_url")
        if d.get("status_detail") is None:
            d.pop("status_detail")
        if d.get("health") is None:
            d.pop("health")
        return d

    def refused_because(self) -> str | None:
        """Why a dispatch to this connector is refused (``connector_unavailable``), or None."""
        if self.status == "pending_auth":
            return "the connector is pending authorization"
        if self.grant == "revoked":
            return "the connector's authorization was revoked; authorize it again"
        return None

    def summary(self) -> dict[str, Any]:
        d = self.public()
        keep = ("id", "object", "listing", "name", "kind", "capabilities", "status")
        return {k: d[k] for k in keep}


class ConnectorInstall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    listing: str = Field(min_length=1, max_length=100)
    auth: dict[str, Any]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    # A remote MCP server (streamable HTTP) instead of the listing's bundled stdio server.
    remote_url: str | None = Field(default=None, max_length=500)


class ConnectorTest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tools: list[str] | None = Field(default=None, min_length=1, max_length=100)


class VaultEntry(BaseModel):
    """Encrypted credentials of one connector; ``ciphertext`` None means purged."""

    connector_id: str
    tenant_id: str
    ciphertext: str | None
