"""``fibric admin``: tenants and API keys, written to the config log over Kafka, so it works the
same against ``fibric up`` and against a production deployment (FIBRIC_KAFKA_BOOTSTRAP)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fibric.errors import CliError
from schemas.config import (
    SLUG_RE,
    ApiKey,
    ConfigRecord,
    Tenant,
    expand_scopes,
    hash_secret,
    new_secret,
    secret_hint,
)
from schemas.ids import new_id
from schemas.settings import Settings
from streams.config_log import publish
from streams.config_view import ConfigView
from streams.kafka import ensure_topics, make_producer, probe


class Admin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.view = ConfigView(settings.kafka_bootstrap)
        self.producer: Any = None

    async def __aenter__(self) -> Admin:
        if await probe(self.settings.kafka_bootstrap) is None:
            raise CliError(
                f"no Kafka broker answers at {self.settings.kafka_bootstrap} "
                "(start `fibric up`, or set FIBRIC_KAFKA_BOOTSTRAP)"
            )
        await ensure_topics(self.settings.kafka_bootstrap, self.settings.partitions)
        self.producer = make_producer(self.settings.kafka_bootstrap)
        await self.producer.start()
        await self.view.start()
        await self.view.sync()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.view.stop()
        await self.producer.stop()

    async def _write(self, kind: str, tenant_id: str, data: dict[str, Any], version: int) -> None:
        rec = ConfigRecord(
            id=new_id("cfg"),
            kind=kind,
            tenant_id=tenant_id,
            version=version,
            data=data,  # type: ignore[arg-type]
            at=datetime.now(UTC),
        )
        await publish(self.producer, [rec])
        await self.view.sync()

    async def create_tenant(self, slug: str, name: str | None) -> Tenant:
        if not SLUG_RE.match(slug):
            raise CliError(f"invalid slug {slug!r}: 3–40 lowercase letters, digits and hyphens")
        existing = self.view.tenant_by_slug.get(slug)
        if existing is not None:
            raise CliError(f"tenant slug {slug!r} already exists ({existing.id})")
        tenant = Tenant(id=new_id("t"), slug=slug, name=name or slug, created_at=datetime.now(UTC))
        await self._write("tenant", tenant.id, tenant.model_dump(mode="json"), 1)
        return tenant

    def _tenant(self, slug_or_id: str) -> Tenant:
        tenant = self.view.resolve_tenant(slug_or_id)
        if tenant is None:
            raise CliError(f"no tenant {slug_or_id!r}")
        return tenant

    async def create_key(
        self,
        tenant_ref: str,
        role: str | None,
        scopes: list[str] | None,
        mode: str,
        name: str | None,
    ) -> tuple[ApiKey, str]:
        tenant = self._tenant(tenant_ref)
        try:
            expanded = expand_scopes(role, scopes)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        secret = new_secret(mode)
        key = ApiKey(
            id=new_id("key"),
            tenant_id=tenant.id,
            name=name,
            mode=mode,  # type: ignore[arg-type]
            role=None if scopes else (role or "admin"),
            scopes=expanded,
            hint=secret_hint(secret),
            secret_hash=hash_secret(secret),
            created_at=datetime.now(UTC),
        )
        await self._write("api_key", tenant.id, key.model_dump(mode="json"), 1)
        return key, secret

    async def revoke_key(self, key_id: str) -> ApiKey:
        key = self.view.keys.get(key_id)
        if key is None:
            raise CliError(f"no key {key_id!r}")
        revoked = key.model_copy(update={"status": "revoked"})
        await self._write("api_key", key.tenant_id, revoked.model_dump(mode="json"), 2)
        return revoked

    def tenants(self) -> list[Tenant]:
        return sorted(self.view.tenants.values(), key=lambda t: t.created_at)

    def keys(self, tenant_ref: str) -> list[ApiKey]:
        tenant = self._tenant(tenant_ref)
        return sorted(
            (k for k in self.view.keys.values() if k.tenant_id == tenant.id),
            key=lambda k: k.created_at,
        )
