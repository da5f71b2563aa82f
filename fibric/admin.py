"""``fibric admin``: tenants and API keys. Changes go as commands to the control agent (the single
writer of configuration) over Kafka, the same path the API uses, so this works against
``fibric up`` and a production deployment alike (FIBRIC_KAFKA_BOOTSTRAP)."""

from __future__ import annotations

from typing import Any

from fibric.errors import CliError
from schemas.commands import CommandType
from schemas.config import ApiKey, Tenant, expand_scopes, hash_secret, new_secret, secret_hint
from schemas.settings import Settings
from streams.commands import CommandClient, CommandTimeout
from streams.config_view import ConfigView
from streams.kafka import ensure_topics, make_producer, probe


class Admin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.view = ConfigView(settings.kafka_bootstrap)
        self.producer: Any = None
        self.commands: CommandClient | None = None

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
        self.commands = CommandClient(self.settings.kafka_bootstrap, self.producer)
        await self.commands.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.commands:
            await self.commands.stop()
        await self.view.stop()
        if self.producer:
            await self.producer.stop()

    async def _call(
        self, type_: CommandType, tenant_id: str | None, args: dict[str, Any]
    ) -> dict[str, Any]:
        assert self.commands is not None
        try:
            reply = await self.commands.call(type_, tenant_id=tenant_id, args=args)
        except CommandTimeout as exc:
            raise CliError(
                f"{exc} (is a worker running: `fibric up` or `fibric worker`?)"
            ) from None
        if not reply.ok:
            assert reply.error is not None
            raise CliError(reply.error.message)
        await self.view.wait_for_records(reply.record_ids)
        return reply.result or {}

    async def create_tenant(self, slug: str, name: str | None) -> Tenant:
        result = await self._call("tenant.create", None, {"slug": slug, "name": name})
        return Tenant.model_validate(result)

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
            expanded = expand_scopes(role, scopes)  # an early, local error; the agent re-expands
        except ValueError as exc:
            raise CliError(str(exc)) from None
        # The secret is made here and never leaves this process: only its hash is sent.
        secret = new_secret(mode)
        key = {
            "name": name,
            "mode": mode,
            "role": None if scopes else (role or "admin"),
            "scopes": expanded,
            "hint": secret_hint(secret),
            "secret_hash": hash_secret(secret),
        }
        await self._call("key.create", tenant.id, {"key": key})
        created = next(k for k in self.view.keys.values() if k.secret_hash == key["secret_hash"])
        return created, secret

    async def revoke_key(self, key_id: str) -> ApiKey:
        key = self.view.keys.get(key_id)
        if key is None:
            raise CliError(f"no key {key_id!r}")
        await self._call("key.revoke", key.tenant_id, {"key_id": key_id})
        return self.view.keys[key_id]

    @staticmethod
    def key_object(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
        """What the CLI prints for a key: the API's ``api_key`` object (``ApiKey.public``), plus
        the secret right after creation (the only time it exists outside the caller)."""
        out = key.public()
        if secret is not None:
            out["secret"] = secret
        return out

    def tenants(self) -> list[Tenant]:
        return sorted(self.view.tenants.values(), key=lambda t: t.created_at)

    def keys(self, tenant_ref: str) -> list[ApiKey]:
        tenant = self._tenant(tenant_ref)
        return sorted(
            (k for k in self.view.keys.values() if k.tenant_id == tenant.id),
            key=lambda k: k.created_at,
        )
