"""The marketplace catalogue: listings as data (``catalogue.json``) behind pydantic models.

Pure apart from reading the packaged JSON file once. The catalogue is the single source of a
listing's kind, auth type, config keys, capabilities, tools (with ``side_effect`` and
compensating tools) and price; the MCP servers it names must expose exactly these tool names.
This module must never talk to a connector or hold credentials.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, model_validator

CATALOGUE_FILE = "catalogue.json"
# Capabilities and tool names are singular noun.verb (ARCHITECTURE.md §7): "order.hold".
NOUN_VERB_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
# The connector-level tool every Fibric MCP server exposes besides its listed tools; it is
# not a capability (operators never bind to it), the install flow calls it.
CHECK_TOOL = "connector.check"


class ConfigKey(BaseModel):
    name: str
    required: bool = True
    description: str = ""
    secret: bool = False
    # "url": a URL the connector will call with the tenant's credentials; install checks it
    # against the egress policy (egress.py) before anything connects to it.
    format: Literal["url"] | None = None


class ListingTool(BaseModel):
    name: str
    side_effect: bool
    capability: str
    compensating_tool: str | None = None
    description: str = ""
    # trust tier (spec: 0 read, 1 reversible write, 2 customer-visible, 3 physical); receipts
    # and actions carry it in their verdict
    tier: Literal[0, 1, 2, 3] | None = None


class Price(BaseModel):
    amount: str
    currency: str = "USD"
    interval: Literal["month"] = "month"
    unit: str  # "source" or "operator"


class ServerSpec(BaseModel):
    transport: Literal["stdio", "streamable_http"] = "stdio"
    module: str | None = None  # python -m <module> for stdio


class OAuthEndpoints(BaseModel):
    """Where an oauth2 listing's authorization dance goes (RFC 6749 §3). The catalogue names the
    provider's defaults; a deployment overrides any of them, and sets its registered client,
    through ``FIBRIC_OAUTH_PROVIDERS`` (decisions §43)."""

    authorize_url: str
    token_url: str
    scopes: list[str] = []
    client_id: str = "fibric"


class Listing(BaseModel):
    id: str  # "cn-magento"
    object: Literal["marketplace_listing"] = "marketplace_listing"
    name: str
    description: str
    kind: Literal["saas", "hardware"]
    status: Literal["live", "early_access"]
    auth_type: Literal["api_key", "oauth2", "basic"]
    config_keys: list[ConfigKey]
    capabilities: list[str]  # noun.verb, e.g. "order.hold"
    tools: list[ListingTool]
    price: Price | None = None  # None = free during early access
    server: ServerSpec | None  # None only for early-access listings
    authorize_url: str | None = None  # oauth2 listings: where the authorization dance starts
    # oauth2 listings: the token endpoint and scopes besides the authorize endpoint (§43)
    oauth: OAuthEndpoints | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Listing:
        problems = listing_problems(self)
        if problems:
            raise ValueError(f"listing {self.id}: " + "; ".join(problems))
        return self

    def tool(self, name: str) -> ListingTool | None:
        return next((t for t in self.tools if t.name == name), None)


def listing_problems(listing: Listing) -> list[str]:
    """Every way a listing contradicts itself (empty = consistent)."""
    out: list[str] = []
    names = [t.name for t in listing.tools]
    if len(set(names)) != len(names):
        out.append("duplicate tool names")
    if len(set(listing.capabilities)) != len(listing.capabilities):
        out.append("duplicate capabilities")
    for cap in listing.capabilities:
        if not NOUN_VERB_RE.match(cap):
            out.append(f"capability {cap!r} is not noun.verb")
    for t in listing.tools:
        if not NOUN_VERB_RE.match(t.name):
            out.append(f"tool {t.name!r} is not noun.verb")
        if t.capability not in listing.capabilities:
            out.append(f"tool {t.name} fulfils undeclared capability {t.capability!r}")
        if t.compensating_tool is not None:
            comp = listing.tool(t.compensating_tool)
            if comp is None:
                out.append(f"compensating tool {t.compensating_tool!r} of {t.name} is not listed")
            elif not t.side_effect:
                out.append(f"read tool {t.name} declares a compensating tool")
    fulfilled = {t.capability for t in listing.tools}
    for cap in listing.capabilities:
        if cap not in fulfilled:
            out.append(f"capability {cap!r} has no tool")
    if listing.status == "live" and (listing.server is None or not listing.server.module):
        out.append("a live listing needs a server")
    if listing.status == "early_access" and listing.server is not None:
        out.append("early-access listings are provisioned by hand and ship no server")
    if listing.auth_type == "oauth2" and not listing.authorize_url:
        out.append("oauth2 listings need an authorize_url")
    if listing.auth_type == "oauth2" and listing.status == "live" and listing.oauth is None:
        out.append("live oauth2 listings need their oauth endpoints")
    keys = [k.name for k in listing.config_keys]
    if len(set(keys)) != len(keys):
        out.append("duplicate config keys")
    return out


def parse_catalogue(raw: str | bytes) -> dict[str, Listing]:
    """Parse catalogue JSON into listings keyed by id, in file order (pure)."""
    doc = json.loads(raw)
    out: dict[str, Listing] = {}
    for item in doc["listings"]:
        listing = Listing.model_validate(item)
        if listing.id in out:
            raise ValueError(f"duplicate listing id {listing.id}")
        out[listing.id] = listing
    return out


@cache
def load_catalogue() -> dict[str, Listing]:
    """The packaged catalogue, parsed once per process. Treat the result as read-only."""
    raw = resources.files("connectors").joinpath(CATALOGUE_FILE).read_bytes()
    return parse_catalogue(raw)
