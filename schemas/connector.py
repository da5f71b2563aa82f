"""The installed-connector object (seed 001), its install body, and the vault record."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CONNECTOR_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}[a-z0-9]$|^[a-z0-9]$")


class ConnectorTool(BaseModel):
    name: str
    side_effect: bool
    capability: str | None = None
    compensating_tool: str | None = None


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
    status: Literal["connected", "pending_auth", "error"]
    status_detail: str | None = None
    authorize_url: str | None = None
    price: dict[str, Any] | None = None
    remote_url: str | None = None
    created_at: datetime
    updated_at: datetime
    last_synced_at: datetime | None = None
    version: int = 1
    deleted: bool = False

    def public(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"tenant_id", "deleted", "remote_url"})
        d["tools"] = [{"name": t.name, "side_effect": t.side_effect} for t in self.tools]
        d["installed_at"] = d["created_at"]  # the spec's name (§2.4)
        if d.get("authorize_url") is None:
            d.pop("authorize_url")
        if d.get("status_detail") is None:
            d.pop("status_detail")
        return d

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
