"""An in-memory materialisation of the config log (tenants, API keys) and worker heartbeats.

Every API process and the admin CLI run one. It reads ``fibric.config.v1`` from the beginning
with manual assignment (no consumer group: every instance sees every record) and can
:meth:`sync` — wait until it has applied everything the broker held at the time of the call —
which is how a process reads its own (or anyone's) completed writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.config import ApiKey, ConfigRecord, Tenant
from schemas.connector import Connector, VaultEntry
from schemas.guardrail import GuardrailPolicy
from schemas.operator import Operator
from schemas.plan import Plan
from schemas.webhook import WebhookEndpoint
from streams.kafka import stop_consuming
from streams.topics import CONFIG, HEARTBEATS

log = logging.getLogger(__name__)

# How long sync() may wait for the view to catch up before giving up.
SYNC_TIMEOUT_S = 10.0


class ConfigView:
    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.tenants: dict[str, Tenant] = {}
        self.tenant_by_slug: dict[str, Tenant] = {}
        self.keys_by_hash: dict[str, ApiKey] = {}
        self.keys: dict[str, ApiKey] = {}
        self.operators: dict[str, Operator] = {}
        # op_ id -> every version it had, each as first written (a run's counters rewrite the
        # current operator, not its version), for GET /v1/operators/{id}/versions (§38)
        self.operator_versions: dict[str, dict[int, Operator]] = {}
        self._operators_index: dict[tuple[str, bool], list[Operator]] | None = None
        self.connectors: dict[str, Connector] = {}
        self.vault: dict[str, VaultEntry] = {}
        self.pending_plans: dict[str, Plan] = {}  # plans awaiting approval
        self.webhooks: dict[str, WebhookEndpoint] = {}  # whk_ id -> endpoint (not deleted)
        # grd_ id -> the policy's current version (not deleted), and every version it had (the
        # config log is read from its start, and restored from ClickHouse, so history is whole)
        self.guardrails: dict[str, GuardrailPolicy] = {}
        self.guardrail_versions: dict[str, dict[int, GuardrailPolicy]] = {}
        self._guardrails_index: dict[tuple[str, bool], list[GuardrailPolicy]] | None = None
        self.plan_versions: dict[str, int] = {}
        self.record_ids: set[str] = set()
        self.command_results: dict[str, tuple[list[str], dict[str, Any] | None]] = {}
        self.heartbeats: dict[str, dict] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self._positions: dict[TopicPartition, int] = {}
        self._config_parts: list[TopicPartition] = []

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        parts = consumer.partitions_for_topic(CONFIG)
        hb_parts = consumer.partitions_for_topic(HEARTBEATS)
        if not parts or not hb_parts:
            await consumer.stop()
            raise RuntimeError(
                f"topics {CONFIG}/{HEARTBEATS} do not exist; run ensure_topics first"
            )
        self._config_parts = [TopicPartition(CONFIG, p) for p in sorted(parts)]
        hb = [TopicPartition(HEARTBEATS, p) for p in sorted(hb_parts)]
        consumer.assign(self._config_parts + hb)
        await consumer.seek_to_beginning(*self._config_parts)
        # Only recent heartbeats matter: start near the end of the heartbeat log.
        ends = await consumer.end_offsets(hb)
        for tp in hb:
            consumer.seek(tp, max(0, ends[tp] - 100))
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="config-view")

    async def stop(self) -> None:
        await stop_consuming(self._task, self._consumer)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broker hiccup must not kill the view; retry
                log.exception("config view fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for tp, messages in batch.items():
                for msg in messages:
                    if tp.topic == CONFIG:
                        self._apply(msg.value)
                    else:
                        self._heartbeat(msg.value)
            for tp in self._config_parts:
                # position(), not last offset + 1: a compacted tail still advances it.
                self._positions[tp] = await self._consumer.position(tp)
            async with self._progress:
                self._progress.notify_all()

    # ---- applying records ------------------------------------------------------------------
    def _apply(self, raw: bytes | None) -> None:
        try:
            rec = ConfigRecord.model_validate_json(raw or b"")
        except ValidationError:
            log.error("ignoring malformed config record")
            return
        self.apply_record(rec)

    def apply_record(self, rec: ConfigRecord) -> None:
        """Apply one change. Idempotent: the control agent applies its own writes at once and
        sees them again when the log delivers them."""
        if rec.id in self.record_ids:
            return
        self.record_ids.add(rec.id)
        if rec.command_id:
            ids, result = self.command_results.get(rec.command_id, ([], None))
            self.command_results[rec.command_id] = ([*ids, rec.id], result or rec.result)
        if rec.kind == "operator":
            op = Operator.model_validate(rec.data)
            op_history = self.operator_versions.setdefault(op.id, {})
            newest = max(op_history, default=0)
            op_history.setdefault(op.version, op)
            if newest > op.version:
                return  # an older version delivered late never replaces a newer one
            self._operators_index = None
            if op.deleted:
                self.operators.pop(op.id, None)
            else:
                self.operators[op.id] = op
        elif rec.kind == "connector":
            cn = Connector.model_validate(rec.data)
            if cn.deleted:
                self.connectors.pop(cn.id, None)
            else:
                self.connectors[cn.id] = cn
        elif rec.kind == "pending_plan":
            plan = Plan.model_validate(rec.data)
            # a replayed "proposed" record must never reopen a plan already closed
            if self.plan_versions.get(plan.id, 0) >= plan.version:
                return
            self.plan_versions[plan.id] = plan.version
            if plan.status == "proposed":
                self.pending_plans[plan.id] = plan
            else:
                self.pending_plans.pop(plan.id, None)
        elif rec.kind == "webhook_endpoint":
            ep = WebhookEndpoint.model_validate(rec.data)
            if ep.deleted:
                self.webhooks.pop(ep.id, None)
            else:
                self.webhooks[ep.id] = ep
        elif rec.kind == "guardrail_policy":
            gp = GuardrailPolicy.model_validate(rec.data)
            history = self.guardrail_versions.setdefault(gp.id, {})
            newest = max(history, default=0)
            history[gp.version] = gp
            if newest > gp.version:
                return  # an older version delivered late never replaces a newer one
            self._guardrails_index = None
            if gp.deleted:
                self.guardrails.pop(gp.id, None)
            else:
                self.guardrails[gp.id] = gp
        elif rec.kind == "vault":
            entry = VaultEntry.model_validate(rec.data)
            if entry.ciphertext is None:
                self.vault.pop(entry.connector_id, None)
            else:
                self.vault[entry.connector_id] = entry
        elif rec.kind == "tenant":
            tenant = Tenant.model_validate(rec.data)
            old = self.tenants.get(tenant.id)
            if old and old.slug != tenant.slug:
                self.tenant_by_slug.pop(old.slug, None)
            self.tenants[tenant.id] = tenant
            self.tenant_by_slug[tenant.slug] = tenant
        elif rec.kind == "api_key":
            key = ApiKey.model_validate(rec.data)
            self.keys[key.id] = key
            self.keys_by_hash[key.secret_hash] = key

    def _heartbeat(self, raw: bytes | None) -> None:
        try:
            hb = orjson.loads(raw or b"")
            self.heartbeats[str(hb["worker_id"])] = hb
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("ignoring malformed heartbeat")

    # ---- queries ---------------------------------------------------------------------------
    def resolve_tenant(self, slug_or_id: str) -> Tenant | None:
        return self.tenants.get(slug_or_id) or self.tenant_by_slug.get(slug_or_id)

    def tenant_exists(self, tenant_id: str) -> bool:
        return tenant_id in self.tenants

    def operators_of(self, tenant_id: str, livemode: bool) -> list[Operator]:
        """One tenant's operators in one mode; indexed, because routing asks per event."""
        if self._operators_index is None:
            index: dict[tuple[str, bool], list[Operator]] = {}
            for o in self.operators.values():
                index.setdefault((o.tenant_id, o.livemode), []).append(o)
            self._operators_index = index
        return self._operators_index.get((tenant_id, livemode), [])

    def guardrails_of(self, tenant_id: str, livemode: bool) -> list[GuardrailPolicy]:
        """One tenant's guardrail policies in one mode (active and disabled; the judge skips
        disabled ones), in creation order; indexed, because every plan asks."""
        if self._guardrails_index is None:
            index: dict[tuple[str, bool], list[GuardrailPolicy]] = {}
            for g in sorted(self.guardrails.values(), key=lambda g: (g.created_at, g.id)):
                index.setdefault((g.tenant_id, g.livemode), []).append(g)
            self._guardrails_index = index
        return self._guardrails_index.get((tenant_id, livemode), [])

    def connectors_of(self, tenant_id: str, livemode: bool) -> list[Connector]:
        return [
            c
            for c in self.connectors.values()
            if c.tenant_id == tenant_id and c.livemode == livemode
        ]

    async def wait_for_records(self, ids: list[str], timeout: float = SYNC_TIMEOUT_S) -> None:
        """Return once every record in ``ids`` has been applied (read-your-writes)."""
        if all(i in self.record_ids for i in ids):
            return
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: all(i in self.record_ids for i in ids)), timeout
            )

    def live_workers(self, stale_after_s: float) -> list[dict]:
        now = time.time()
        out = []
        for hb in self.heartbeats.values():
            try:
                at = datetime.fromisoformat(hb["at"]).timestamp()
            except (KeyError, ValueError, TypeError):
                continue
            if now - at <= stale_after_s and not hb.get("stopping"):
                out.append(hb)
        return out

    async def sync(self, timeout: float = SYNC_TIMEOUT_S) -> None:
        """Return once every config record the broker held when called has been applied."""
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self._config_parts)

        def caught_up() -> bool:
            return all(self._positions.get(tp, 0) >= end for tp, end in ends.items())

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(caught_up), timeout)
