"""Webhook deliveries: derived from stored ledger rows, signed, sent, retried and recorded
(spec §6, decisions §32). Runs in the api role, beside the ledger sink that feeds it.

Order, written down because "no delivery lost" depends on it:

1. the sink stores a batch of ledger rows (plans, actions, receipts, config records);
2. before it commits the batch's offsets, :meth:`WebhookDispatcher.on_batch` derives the
   deliveries those rows make for the tenants' active endpoints and inserts the ones not stored
   yet into ``webhook_deliveries`` (ids are derived from endpoint, type and object, so a batch
   replayed after a crash finds its own deliveries and adds none);
3. the new deliveries join their endpoint's in-memory queue (bounded: past the bound they stay
   in ClickHouse and are read back when the queue drains);
4. per endpoint, at most ``webhook_concurrency`` attempts run at once, one per lane (endpoint +
   entity), in order within a lane; each attempt's outcome (a new version of the delivery and an
   attempt row) is buffered and written to ClickHouse within ``FLUSH_S``;
5. on start, every pending delivery is read back from ClickHouse: a kill -9 loses none, and a
   delivery whose outcome was not yet written is sent again under the same id.

Never: block the sink on a receiver (the sink only inserts rows and puts them in memory), follow a
redirect, reach an address the egress policy refuses, or log a secret or a body.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agents.secrets import SecretBox
from api.objects import TERMINAL, Publisher, action_public, plan_public, receipt_public
from api.webhook_sender import SenderProcess, attempt_inline
from connectors.egress import EgressRefused
from connectors.lean_http import LeanClient
from ledger.store import LedgerStore, Scope
from schemas.config import ConfigRecord
from schemas.connector import Connector
from schemas.ids import derived_id
from schemas.plan import ActionRecord, Plan, Receipt
from schemas.settings import Settings
from schemas.webhook import (
    RESPONSE_EXCERPT_BYTES,
    Attempt,
    Delivery,
    WebhookEndpoint,
    backoff_s,
    envelope,
    retry_deadline,
    signature_header,
)

log = logging.getLogger(__name__)

# Deliveries held in memory per endpoint; beyond this they wait in ClickHouse (a dead receiver
# with a day of high-volume receipt.written must not grow the api's memory without bound).
MAX_QUEUED = 10_000
# Attempt outcomes are written in batches this often: a crash loses at most this much of the
# record, and what it loses is sent again under the same delivery id.
FLUSH_S = 0.1
# How often an idle endpoint queue re-reads its endpoint (status changes, deletion).
IDLE_RECHECK_S = 1.0
# Inserting a batch's deliveries is retried this often (ClickHouse answered the ledger insert a
# moment ago, so a failure here is brief) before the batch is left undelivered and logged.
INSERT_ATTEMPTS = 5
USER_AGENT = "Fibric-Webhooks/1.0"
# Outcomes that close a plan's action (plan.disposed fires when every action has one); vetoed and
# expired plans are announced from their own plan version instead.
_CLOSING = TERMINAL - {"vetoed", "expired"}


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


class _EndpointQueue:
    """One endpoint's pending deliveries, by lane, each lane in delivery order."""

    def __init__(self, endpoint_id: str) -> None:
        self.endpoint_id = endpoint_id
        self.lanes: dict[str, list[Delivery]] = {}
        self.busy: set[str] = set()
        self.ids: set[str] = set()
        self.overflow = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failing_since: datetime | None = None
        self.suspending = False
        self.client: Any = None
        self.client_url: str | None = None

    def add(self, d: Delivery, refill: bool = False) -> bool:
        """Queue ``d`` (stored already). While older deliveries wait in ClickHouse (overflow),
        a new one waits there too, behind them: only a refill reads them back, in order."""
        if self.overflow and not refill and d.id not in self.ids:
            return False
        lane = self.lanes.setdefault(d.lane, [])
        if d.id in self.ids:
            for i, old in enumerate(lane):
                if old.id == d.id and not (i == 0 and d.lane in self.busy):
                    lane[i] = d  # a manual retry of a queued delivery: due now
            self.wake.set()
            return True
        if len(self.ids) >= MAX_QUEUED:
            self.overflow = True
            return False
        if not lane or lane[-1].order_key() <= d.order_key():
            at = len(lane)  # the usual case: deliveries arrive in order
        else:
            at = bisect.bisect_right([x.order_key() for x in lane], d.order_key())
        if at == 0 and lane and d.lane in self.busy:
            at = 1  # never ahead of the attempt in flight
        lane.insert(at, d)
        self.ids.add(d.id)
        self.wake.set()
        return True

    def finish(self, lane_key: str, d: Delivery) -> None:
        lane = self.lanes.get(lane_key, [])
        if lane and lane[0].id == d.id:
            if d.status == "pending":
                lane[0] = d
            else:
                lane.pop(0)
                self.ids.discard(d.id)
        if not lane:
            self.lanes.pop(lane_key, None)


class WebhookDispatcher:
    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        view: Any,
        box: SecretBox,
        commands: Any,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.store = store
        self.view = view
        self.box = box
        self.commands = commands
        self.clock = clock
        self.queues: dict[str, _EndpointQueue] = {}
        self._dirty: list[Delivery] = []
        self._attempts: list[Attempt] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._secrets_cache: dict[str, tuple[str, list[tuple[str, datetime | None]]]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Attempts run in a child process at a lower CPU priority, or inline (decisions §40).
        self.sender: SenderProcess | None = None
        if settings.webhook_sender == "process":
            self.sender = SenderProcess(settings.webhook_sender_nice)
        self.stats = {"created": 0, "attempts": 0, "succeeded": 0, "failed": 0}

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        restored = 0
        for endpoint_id in list(self.view.webhooks):
            # one more than fits: the queue then knows more are waiting (overflow)
            for d in await self.store.pending_deliveries(endpoint_id, MAX_QUEUED + 1):
                self._enqueue(d, refill=True)
                restored += 1
                q = self.queues[d.endpoint_id]
                if d.attempts and (q.failing_since is None or d.window_start < q.failing_since):
                    q.failing_since = d.window_start  # failing since at least then (approximate)
        if restored:
            log.info("webhooks: %d pending deliveries restored", restored)
        self._flusher = asyncio.create_task(self._flush_loop(), name="webhook-flush")

    async def stop(self) -> None:
        tasks = [q.task for q in self.queues.values() if q.task is not None]
        tasks += list(self._background)
        if self._flusher is not None:
            tasks.append(self._flusher)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.flush()
        for q in self.queues.values():
            if q.client is not None:
                await q.client.aclose()
        if self.sender is not None:
            await self.sender.aclose()

    # ---- 2. deriving deliveries from stored rows -------------------------------------------
    def _subscriptions(self) -> dict[tuple[str, bool], list[WebhookEndpoint]]:
        subs: dict[tuple[str, bool], list[WebhookEndpoint]] = defaultdict(list)
        for ep in self.view.webhooks.values():
            if ep.status == "active":
                subs[(ep.tenant_id, ep.livemode)].append(ep)
        return subs

    def _publisher(self, tenant_id: str) -> Publisher:
        tenant = self.view.tenants.get(tenant_id)
        return Publisher(getattr(tenant, "reseller_id", None), self.view.connectors)

    async def on_batch(self, by_kind: dict[str, dict[str, Any]]) -> None:
        """The sink's before-commit hook (step 2): idempotent, and cheap for tenants without
        endpoints (one dictionary walk over the endpoints)."""
        subs = self._subscriptions()
        if not subs:
            return
        for attempt in range(INSERT_ATTEMPTS):
            try:
                # derive reads ClickHouse for some types; both steps are safe to repeat
                deliveries = await self.derive(by_kind, subs)
                new = await self.store.new_deliveries(deliveries)
                break
            except Exception:  # noqa: BLE001 - retried, then logged: the batch's are lost
                if attempt == INSERT_ATTEMPTS - 1:
                    log.exception("webhooks: a batch's deliveries could not be stored")
                    return
                await asyncio.sleep(0.2 * (attempt + 1))
        self.stats["created"] += len(new)
        for d in new:
            self._enqueue(d)

    async def derive(
        self,
        by_kind: dict[str, dict[str, Any]],
        subs: dict[tuple[str, bool], list[WebhookEndpoint]],
    ) -> list[Delivery]:
        out: list[Delivery] = []
        now = self.clock()

        def emit(
            scope: tuple[str, bool],
            type_: str,
            key: str,
            lane: str,
            occurred_at: datetime,
            data: dict[str, Any],
        ) -> None:
            eps = [
                ep
                for ep in subs.get(scope, ())
                # an endpoint hears of what happens after it exists
                if type_ in ep.types and occurred_at >= ep.created_at
            ]
            if not eps:
                return
            # The object is serialised once, however many endpoints carry it (decisions §40).
            frag = orjson.Fragment(orjson.dumps(data))
            at_ms = _ms(occurred_at)
            object_id = str(data.get("id", key))
            window = max(now, occurred_at)
            for ep in eps:
                did = derived_id("whd", at_ms, ep.id, type_, key)
                body = orjson.dumps(envelope(did, type_, occurred_at, ep.livemode, ep.id, frag))
                out.append(
                    Delivery(
                        id=did,
                        tenant_id=ep.tenant_id,
                        livemode=ep.livemode,
                        endpoint_id=ep.id,
                        type=type_,
                        lane=lane,
                        object_id=object_id,
                        occurred_at=occurred_at,
                        created_at=occurred_at,
                        next_attempt_at=now,
                        window_start=window,
                        body=body.decode(),
                    )
                )

        receipts: list[Receipt] = [
            r for r in by_kind.get("receipt", {}).values() if (r.tenant_id, r.livemode) in subs
        ]
        by_plan: dict[str, list[Receipt]] = defaultdict(list)
        for r in receipts:
            by_plan[r.plan_id].append(r)
        for p in by_kind.get("plan", {}).values():
            scope = (p.tenant_id, p.livemode)
            if scope not in subs:
                continue
            pub = self._publisher(p.tenant_id)
            lane = _plan_lane(p)
            if p.version == 1:
                data = plan_public(p, by_plan.get(p.id, []), pub)
                emit(scope, "plan.proposed", p.id, lane, p.created_at, data)
                if p.status == "proposed":
                    emit(scope, "plan.awaiting_approval", p.id, lane, p.created_at, data)
                    for a in p.actions:
                        if a.verdict.decision == "ALERT":
                            act = action_public(a, by_plan.get(p.id, []), pub)
                            emit(scope, "action.needs_approval", a.id, lane, p.created_at, act)
            elif p.status in ("vetoed", "expired"):
                data = plan_public(p, by_plan.get(p.id, []), pub)
                emit(scope, "plan.disposed", p.id, lane, p.updated_at, data)
        for r in receipts:
            scope = (r.tenant_id, r.livemode)
            data = receipt_public(r, self._publisher(r.tenant_id))
            emit(scope, "receipt.written", r.id, _lane(r.entity_key, r.plan_id), r.created_at, data)
        grouped: dict[tuple[str, bool], list[Receipt]] = defaultdict(list)
        for r in receipts:
            grouped[(r.tenant_id, r.livemode)].append(r)
        for scope, rs in grouped.items():
            types = {t for ep in subs[scope] for t in ep.types}
            if "action.disposed" in types:
                await self._action_disposed(scope, rs, emit)
            if "plan.disposed" in types:
                await self._plan_disposed(scope, rs, emit)
        for rec in by_kind.get("config", {}).values():
            self._connector_status(rec, subs, emit)
        return out

    async def _action_disposed(self, scope: tuple[str, bool], rs: list[Receipt], emit) -> None:
        """``action.disposed``: the action as the Actions API returns it, as of this receipt."""
        mine = [r for r in rs if r.action_id]
        if not mine:
            return
        ids = sorted({r.action_id for r in mine if r.action_id})
        s = Scope(*scope)
        actions: dict[str, ActionRecord] = {
            a.id: a for a in await self.store.actions_by_ids(s, ids)
        }
        known = await self.store.receipts_for(s, "action_id", ids)
        pub = self._publisher(scope[0])
        for r in mine:
            a = actions.get(r.action_id or "")
            if a is None:
                continue
            upto = [
                x
                for x in known
                if x.action_id == a.id and (x.created_at, x.id) <= (r.created_at, r.id)
            ]
            data = action_public(a, upto or [r], pub)
            emit(scope, "action.disposed", r.id, _lane(r.entity_key, r.plan_id), r.created_at, data)

    async def _plan_disposed(self, scope: tuple[str, bool], rs: list[Receipt], emit) -> None:
        """``plan.disposed`` for a plan that finished executing: every action has a closing
        receipt. Its id is derived from the plan, so later receipts (an undo) add none."""
        plan_ids = sorted({r.plan_id for r in rs if r.outcome in _CLOSING})
        if not plan_ids:
            return
        s = Scope(*scope)
        plans = await self.store.plans_by_ids(s, plan_ids)
        known = await self.store.receipts_for(s, "plan_id", plan_ids)
        pub = self._publisher(scope[0])
        for p in plans:
            if p.status in ("proposed", "vetoed", "expired"):
                continue
            mine = [r for r in known if r.plan_id == p.id]
            data = plan_public(p, mine, pub)
            if not all(a["outcome"] in TERMINAL for a in data["actions"]):
                continue
            closing = [r.created_at for r in mine if r.outcome in TERMINAL]
            at = max(closing) if closing else p.updated_at
            emit(scope, "plan.disposed", p.id, _plan_lane(p), at, data)

    def _connector_status(self, rec: ConfigRecord, subs, emit) -> None:
        if rec.kind != "connector" or not (rec.note or "").startswith("connector.set_status"):
            return
        try:
            cn = Connector.model_validate(rec.data)
        except ValueError:
            return
        scope = (cn.tenant_id, cn.livemode)
        if scope in subs:
            key = f"{cn.id}#{cn.version}"
            emit(scope, "connector.status_changed", key, cn.id, rec.at, cn.public())

    # ---- 3. queues -------------------------------------------------------------------------
    def _enqueue(self, d: Delivery, refill: bool = False) -> None:
        q = self.queues.get(d.endpoint_id)
        if q is None:
            q = self.queues[d.endpoint_id] = _EndpointQueue(d.endpoint_id)
        q.add(d, refill)
        if q.task is None or q.task.done():
            q.task = asyncio.create_task(self._run_endpoint(q), name=f"webhook-{q.endpoint_id}")

    async def retry(self, d: Delivery) -> Delivery:
        """A manual resend: the same delivery id and body, due now, with a fresh retry window.
        Stored before it is queued, so the answer to the request is what a restart finds."""
        now = self.clock()
        again = d.model_copy(
            update={
                "version": d.version + 1,
                "status": "pending",
                "next_attempt_at": now,
                "window_start": now,
            }
        )
        await self.store.save_delivery_states([again], [])
        self._enqueue(again)
        return again

    async def _refill(self, q: _EndpointQueue) -> None:
        await self.flush()  # what finished must not be read back as pending
        q.overflow = False
        # one more than fits: its add() marks the queue overflowing again if more are waiting
        for d in await self.store.pending_deliveries(q.endpoint_id, MAX_QUEUED + 1):
            q.add(d, refill=True)

    # ---- 4. sending ------------------------------------------------------------------------
    async def _run_endpoint(self, q: _EndpointQueue) -> None:
        while True:
            ep = self.view.webhooks.get(q.endpoint_id)
            if ep is None:  # deleted: its deliveries stay in ClickHouse, never sent
                self.queues.pop(q.endpoint_id, None)
                return
            if not q.ids and q.overflow:
                await self._refill(q)
            if not q.ids and not q.busy and not q.overflow:
                return  # idle: _enqueue starts the task again (no await since the check)
            wait = IDLE_RECHECK_S
            if ep.status == "active":
                now = self.clock()
                for lane_key, items in list(q.lanes.items()):
                    if len(q.busy) >= self.settings.webhook_concurrency:
                        break
                    if lane_key in q.busy or not items:
                        continue
                    head = items[0]
                    due = head.next_attempt_at or head.created_at
                    if due <= now:
                        q.busy.add(lane_key)
                        self._spawn(self._attempt(q, ep, lane_key, head))
                    else:
                        wait = min(wait, (due - now).total_seconds())
            q.wake.clear()
            try:
                await asyncio.wait_for(q.wake.wait(), max(0.005, wait))
            except TimeoutError:
                pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _secrets(self, ep: WebhookEndpoint) -> list[str]:
        entry = self.view.vault.get(ep.id)
        if entry is None or not entry.ciphertext:
            return []
        cached = self._secrets_cache.get(ep.id)
        if cached is None or cached[0] != entry.ciphertext:
            doc = self.box.open(entry.ciphertext)
            parsed = [
                (
                    x["secret"],
                    datetime.fromisoformat(x["expires_at"]) if x.get("expires_at") else None,
                )
                for x in doc.get("secrets", [])
            ]
            cached = (entry.ciphertext, parsed)
            self._secrets_cache[ep.id] = cached
        now = self.clock()
        return [s for s, until in cached[1] if until is None or until > now]

    def _client(self, q: _EndpointQueue, ep: WebhookEndpoint) -> LeanClient:
        if q.client is None or q.client_url != ep.url:
            old, q.client = q.client, None
            if old is not None:
                self._spawn(old.aclose())
            q.client = LeanClient(
                ep.url,
                livemode=ep.livemode,
                max_connections=self.settings.webhook_concurrency,
                excerpt_bytes=RESPONSE_EXCERPT_BYTES,
            )
            q.client_url = ep.url
        return q.client

    async def _post(
        self, q: _EndpointQueue, ep: WebhookEndpoint, d: Delivery
    ) -> tuple[int | None, str | None, str, float]:
        """One attempt: (status code, error, response excerpt, latency in ms). Bounded in time as
        a whole, so a receiver that trickles its answer cannot hold a slot."""
        body = d.body.encode()
        headers = [
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
            ("Fibric-Signature", signature_header(self._secrets(ep), body, int(time.time()))),
            ("Fibric-Delivery-Id", d.id),
            ("Fibric-Delivery-Type", d.type),
            ("Fibric-Webhook-Id", ep.id),
        ]
        timeout = self.settings.webhook_timeout_s
        if self.sender is not None:
            n = self.settings.webhook_concurrency
            return await self.sender.post(ep.url, ep.livemode, n, headers, d.body, timeout)
        try:
            client = self._client(q, ep)
        except EgressRefused as exc:
            return None, f"refused by the egress policy: the URL {exc.reason}", "", 0.0
        return await attempt_inline(client, headers, body, timeout)

    async def _attempt(
        self, q: _EndpointQueue, ep: WebhookEndpoint, lane_key: str, d: Delivery
    ) -> None:
        try:
            code, error, excerpt, latency = await self._post(q, ep, d)
            now = self.clock()
            n = d.attempts + 1
            update: dict[str, Any] = {
                "version": d.version + 1,
                "attempts": n,
                "last_status_code": code,
                "last_error": error,
                "last_attempt_at": now,
            }
            self.stats["attempts"] += 1
            if code is not None and 200 <= code < 300:
                update.update(status="succeeded", next_attempt_at=None)
                q.failing_since = None
                self.stats["succeeded"] += 1
            elif code == 410:
                # The receiver says it is gone for good: this delivery is not retried and the
                # endpoint is suspended (by Fibric; its owner re-enables it) — decisions §32.
                update.update(status="failed", next_attempt_at=None, last_error="410 Gone")
                self._suspend(q, ep, "the receiver answered 410 Gone")
                self.stats["failed"] += 1
            else:
                q.failing_since = q.failing_since or now
                s = self.settings
                nxt = now + timedelta(
                    seconds=backoff_s(n, s.webhook_backoff_base_s, s.webhook_backoff_max_s)
                )
                if nxt > retry_deadline(d.window_start, s.webhook_retry_window_s):
                    update.update(
                        status="failed",
                        next_attempt_at=None,
                        last_error=f"{error or f'HTTP {code}'}; retry window exhausted",
                    )
                    self.stats["failed"] += 1
                else:
                    update.update(next_attempt_at=nxt)
                if (now - q.failing_since).total_seconds() >= s.webhook_suspend_after_s:
                    self._suspend(q, ep, "deliveries failed for too long")
            done = d.model_copy(update=update)
            self._attempts.append(
                Attempt(
                    tenant_id=d.tenant_id,
                    livemode=d.livemode,
                    endpoint_id=d.endpoint_id,
                    delivery_id=d.id,
                    attempt=n,
                    at=now,
                    status_code=code,
                    latency_ms=round(latency, 3),
                    error=error,
                    response_excerpt=excerpt,
                )
            )
            self._dirty.append(done)
            q.finish(lane_key, done)
        except Exception:  # noqa: BLE001 - one bad attempt must not kill the endpoint's queue
            log.exception("webhook attempt of %s failed unexpectedly", d.id)
        finally:
            q.busy.discard(lane_key)
            q.wake.set()

    def _suspend(self, q: _EndpointQueue, ep: WebhookEndpoint, reason: str) -> None:
        if q.suspending or ep.status != "active":
            return
        q.suspending = True

        async def send() -> None:
            try:
                await self.commands.call(
                    "webhook.set_status",
                    tenant_id=ep.tenant_id,
                    livemode=ep.livemode,
                    actor="system:webhooks",
                    args={"webhook_id": ep.id, "status": "suspended", "reason": reason},
                )
                log.warning("webhook endpoint %s suspended: %s", ep.id, reason)
            except Exception:  # noqa: BLE001 - tried again at the next failure
                log.exception("suspending webhook endpoint %s failed", ep.id)
            finally:
                q.suspending = False
                q.failing_since = None

        self._spawn(send())

    # ---- recording -------------------------------------------------------------------------
    async def flush(self) -> None:
        # One flush at a time: a caller that flushes to read ClickHouse next (a refill, which
        # must not read back as pending what has finished; a test) waits for the one under way.
        async with self._flush_lock:
            dirty, attempts = self._dirty, self._attempts
            if not dirty and not attempts:
                return
            self._dirty, self._attempts = [], []
            try:
                await self.store.save_delivery_states(dirty, attempts)
            except Exception:
                self._dirty[:0], self._attempts[:0] = dirty, attempts  # kept for the next round
                raise

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - ClickHouse down: keep the buffer, retry
                log.exception("writing webhook delivery states failed; retrying")


def _lane(entity_key: str | None, fallback: str) -> str:
    return entity_key or fallback


def _plan_lane(p: Plan) -> str:
    """A plan's lane is its (first) action's entity: plan.proposed, its actions and their
    receipts on one entity go out in order."""
    return p.actions[0].entity_key if p.actions else p.id


def pending_total(queues: Iterable[_EndpointQueue]) -> int:
    return sum(len(q.ids) for q in queues)
