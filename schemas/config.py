"""Configuration objects (tenants, API keys) and the config-log record that carries them.

The config log (topic ``fibric.config.v1``) is the source of truth: every change is one
:class:`ConfigRecord`, versioned, and every role materialises the log in memory. API key
secrets never appear here: only their SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

SCOPES: tuple[str, ...] = (
    "events:read",
    "events:write",
    "operators:read",
    "operators:write",
    "connectors:read",
    "connectors:write",
    "plans:read",
    "plans:approve",
    "actions:read",
    "actions:write",
    "receipts:read",
    "keys:read",
    "keys:write",
    "webhooks:read",
    "webhooks:write",
    "guardrails:read",
    "guardrails:write",
    # read-only SQL over the tenant's ledger rows (POST /v1/sql): off by default, in no role
    # preset; grant it to a key with explicit scopes (decisions §42)
    "ledger:query",
    "governance:read",
)

_READ = tuple(s for s in SCOPES if s.endswith(":read") and not s.startswith("keys:"))

# Role presets expand to scope sets at key creation; later changes here never alter existing keys.
ROLES: dict[str, tuple[str, ...]] = {
    "read_only": _READ,
    "ingest": ("events:read", "events:write"),
    "operate": _READ
    + (
        "events:write",
        "operators:write",
        "connectors:write",
        "plans:approve",
        "actions:write",
    ),
    "admin": tuple(s for s in SCOPES if s != "ledger:query"),
}

# A key's last_used_at moves only when the new use is at least this much later: one config record
# per key per window, however many api processes report uses (the spec promises last_used_at
# "accurate to a few minutes"; a record a minute per busy key would bloat the append-only
# config_log that a restore replays).
LAST_USED_RESOLUTION_S = 300

# Longest key name: a label for people, not a document.
MAX_KEY_NAME_CHARS = 100

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,38})[a-z0-9]$")


class Tenant(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    slug: str
    name: str
    reseller_id: str | None = None
    created_at: datetime


class ApiKey(BaseModel):
    """An API key as the config log stores it (spec §2.12). Only the secret's hash is kept; the
    secret itself exists in the create response and nowhere else."""

    id: str
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    name: str | None = None
    mode: Literal["live", "test"] = "test"
    role: str | None = None
    scopes: list[str]
    # pinned workspace; null = the whole tenant
    workspace_id: str | None = None
    hint: str
    secret_hash: str = Field(repr=False)
    status: Literal["active", "revoked"] = "active"
    # when the key last authenticated, to LAST_USED_RESOLUTION_S (api/key_usage.py)
    last_used_at: datetime | None = None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def livemode(self) -> bool:
        return self.mode == "live"

    def public(self) -> dict[str, Any]:
        """The ``api_key`` API object (also what ``fibric admin key`` prints): every field of
        spec §2.12, plus ``livemode``, ``revoked_at`` and ``tenant_id``; never the hash."""
        d = self.model_dump(mode="json", exclude={"secret_hash"})
        return {
            "id": d["id"],
            "object": "api_key",
            "name": d["name"],
            "mode": d["mode"],
            "livemode": self.livemode,
            "role": d["role"],
            "scopes": d["scopes"],
            "workspace_id": d["workspace_id"],
            "hint": d["hint"],
            "status": d["status"],
            "last_used_at": d["last_used_at"],
            "created_at": d["created_at"],
            "revoked_at": d["revoked_at"],
            "tenant_id": d["tenant_id"],
        }


ROLE_NAMES = Literal["read_only", "ingest", "operate", "admin"]


class ApiKeyCreate(BaseModel):
    """Body of ``POST /v1/api_keys``: a ``role`` preset or explicit ``scopes`` (exactly one).
    The mode is the calling key's; ``mode`` may be sent but must equal it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=MAX_KEY_NAME_CHARS)
    role: ROLE_NAMES | None = None
    scopes: list[str] | None = Field(default=None, min_length=1, max_length=len(SCOPES))
    mode: Literal["live", "test"] | None = None
    workspace_id: str | None = Field(default=None, min_length=1, max_length=200)


# what a config record holds (ConfigRecord.kind)
ConfigKind = Literal[
    "tenant",
    "api_key",
    "operator",
    "connector",
    "vault",
    "pending_plan",
    "webhook_endpoint",
    "guardrail_policy",
]


class ConfigRecord(BaseModel):
    """One change in the config log. ``kind`` names the object type, ``data`` its full new state."""

    schema_version: int = SCHEMA_VERSION
    id: str  # cfg_… unique per change; the ledger deduplicates on it
    kind: ConfigKind
    tenant_id: str
    version: int = 1
    data: dict[str, Any]
    actor: str = "admin-cli"
    # what the change was, for the audit trail (e.g. "operator.pause: inventory count")
    note: str | None = None
    request_id: str | None = None
    # the command that wrote this record, and (on its first record) the reply's result, so a
    # command replayed after a crash is answered with its original result, not applied twice
    command_id: str | None = None
    result: dict[str, Any] | None = None
    at: datetime


def hash_secret(secret: str) -> str:
    # Secrets are 32 random bytes, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(mode: str) -> str:
    return f"sk_{mode}_{secrets.token_urlsafe(24)}"


def secret_hint(secret: str) -> str:
    prefix = secret[: len("sk_test_")]
    return f"{prefix}…{secret[-4:]}"


def expand_scopes(role: str | None, scopes: list[str] | None) -> list[str]:
    """The key's scope set: explicit scopes when given, else the role's preset (default admin)."""
    if scopes:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scope(s): {', '.join(unknown)}; valid: {', '.join(SCOPES)}")
        return sorted(set(scopes), key=SCOPES.index)
    role = role or "admin"
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    return list(ROLES[role])


def missing_scopes(held: list[str], wanted: list[str]) -> list[str]:
    """Scopes in ``wanted`` that ``held`` lacks: a key may only grant what it holds itself."""
    have = set(held)
    return [s for s in wanted if s not in have]
