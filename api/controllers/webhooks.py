"""``/v1/webhooks`` (spec §2.13, §3.8, §6): endpoints and their deliveries.

Endpoint reads come from this process's config view; writes are ``webhook.*`` commands to the
control agent. The signing secret is generated here, sealed with ``FIBRIC_SECRET_KEY`` (the
vault connector credentials use) before it leaves this process, and shown once: in the create
and rotate responses. Responses kept for Idempotency-Key replays carry ``"secret": null``.
Deliveries are read from ClickHouse; a retry is handed to this process's dispatcher
(``api/deliveries.py``). Never log a request body or a secret here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from litestar import Controller, Request, Response, delete, get, patch, post
from pydantic import BaseModel, ConfigDict

from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.pagination import decode_cursor, list_body, parse_limit, status_list
from api.query import only_params
from api.respond import documented, respond
from api.state import ApiState
from connectors.egress import EgressRefused, check_target_async, parse_target
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id
from schemas.objects import ListOf
from schemas.webhook import (
    AttemptObject,
    Delivery,
    DeliveryObject,
    EmptyBody,
    WebhookCreate,
    WebhookEndpoint,
    WebhookEndpointObject,
    WebhookRotate,
    WebhookUpdate,
    new_secret,
    secret_hint,
)

STATUSES = ("active", "disabled", "suspended")
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
_WHK = re.compile(r"^whk_[0-9A-Z]{26}$")
_WHD = re.compile(r"^whd_[0-9A-Z]{26}$")


class DeletedWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: bool


def find_endpoint(state: ApiState, auth: AuthContext, webhook_id: str) -> WebhookEndpoint:
    """Another tenant's endpoint, or one of the other mode, reads as not found."""
    ep = state.view.webhooks.get(webhook_id) if _WHK.match(webhook_id) else None
    if ep is None or ep.tenant_id != auth.tenant.id or ep.livemode != auth.key.livemode:
        raise FibricError(ErrorCode.NOT_FOUND, f"No webhook endpoint {webhook_id[:60]!r}.")
    return ep


async def check_url(url: str, *, livemode: bool) -> None:
    """HTTPS only (spec §6.2); test-mode keys may also use http:// to a loopback receiver, for
    tests and the demo. The address must pass the egress policy (decisions §22)."""
    try:
        target = parse_target(url)
        if target.scheme != "https":
            if livemode:
                raise EgressRefused("must be an https URL (plain HTTP is refused)")
            checked = await check_target_async(url, livemode=False)
            if not all(ip.is_loopback for ip in checked.addresses):
                raise EgressRefused("must be an https URL (http only for a loopback receiver)")
        else:
            await check_target_async(url, livemode=livemode)
    except EgressRefused as exc:
        raise FibricError(ErrorCode.INVALID_PARAMETER, f"url {exc.reason}.", param="url") from None


def _sealed(state: ApiState, secrets: list[tuple[str, datetime | None]]) -> str:
    doc = {
        "secrets": [
            {"secret": s, "expires_at": until.isoformat() if until else None}
            for s, until in secrets
        ]
    }
    return state.box.seal(doc)


def _attempt(a: Any) -> AttemptObject:
    return AttemptObject.model_validate(a.model_dump(include=set(AttemptObject.model_fields)))


def delivery_public(d: Delivery, attempts: list[AttemptObject]) -> dict[str, Any]:
    return DeliveryObject(
        id=d.id,
        webhook_id=d.endpoint_id,
        livemode=d.livemode,
        type=d.type,
        status=d.status,
        created_at=d.created_at,
        attempt_count=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        last_attempt_at=d.last_attempt_at,
        next_retry_at=d.next_attempt_at if d.status == "pending" else None,
        attempts=attempts,
        payload=orjson.loads(d.body),
    ).model_dump(mode="json")


class WebhooksController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @get(
        "/",
        opt={"scope": "webhooks:read", "route_class": "config_read"},
        operation_id="listWebhookEndpoints",
        **documented(),
    )
    async def list_webhooks(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[WebhookEndpointObject]]:
        """List this tenant's webhook endpoints (the calling key's mode), newest first; filter
        ``status`` (``active`` | ``disabled`` | ``suspended``). Never a secret."""
        state, auth = api_state(request), auth_of(request)
        items = [
            e
            for e in state.view.webhooks.values()
            if e.tenant_id == auth.tenant.id and e.livemode == auth.key.livemode
        ]
        data = status_list(request.query_params, items, STATUSES, "webhooks", WebhookEndpoint.public)
        return respond(ListOf[WebhookEndpointObject], data)

    @post(
        "/",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="createWebhookEndpoint",
        status_code=201,
        **documented(409, 503, body=WebhookCreate),
    )
    async def create_webhook(
        self, request: Request[Any, Any, Any], data: WebhookCreate | None = None
    ) -> Response[WebhookEndpointObject]:
        """Create an endpoint for ``types`` of deliveries to ``url`` (HTTPS; test-mode keys may
        use ``http://127.0.0.1``). The response carries the signing ``secret``, the only time it
        is shown."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)
        fresh: dict[str, str] = {}

        async def handle() -> Response[WebhookEndpointObject]:
            data = validate(WebhookCreate, body)
            await check_url(data.url, livemode=auth.key.livemode)
            secret = new_secret()
            draft = {
                "id": new_id("whk"),
                "url": data.url,
                "types": list(dict.fromkeys(data.types)),
                "description": data.description,
                "secret_hint": secret_hint(secret),
            }
            args = {"webhook": draft, "ciphertext": _sealed(state, [(secret, None)])}
            created = await run_command(state, request, auth, "webhook.create", args)
            fresh["secret"] = secret
            # what a replay returns
            return respond(WebhookEndpointObject, {**created, "secret": None}, 201)

        response = await state.idempotency.run(request, auth.scope, body, handle)
        if "secret" not in fresh:
            return response
        created = {**orjson.loads(response.content), "secret": fresh["secret"]}
        return respond(WebhookEndpointObject, created, 201)

    @get(
        "/{webhook_id:str}",
        opt={"scope": "webhooks:read", "route_class": "config_read"},
        operation_id="retrieveWebhookEndpoint",
        **documented(404),
    )
    async def retrieve_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str
    ) -> Response[WebhookEndpointObject]:
        """Retrieve one endpoint (``secret`` is null: it was shown once)."""
        ep = find_endpoint(api_state(request), auth_of(request), webhook_id)
        return respond(WebhookEndpointObject, ep.public())

    @patch(
        "/{webhook_id:str}",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="updateWebhookEndpoint",
        **documented(404, 503, body=WebhookUpdate),
    )
    async def update_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str, data: WebhookUpdate | None = None
    ) -> Response[WebhookEndpointObject]:
        """Change ``url``, ``types``, ``description`` or ``status`` (``active`` re-enables a
        disabled or suspended endpoint and resumes its pending deliveries)."""
        state, auth = api_state(request), auth_of(request)
        find_endpoint(state, auth, webhook_id)
        body = await read_body(request)

        async def handle() -> Response[WebhookEndpointObject]:
            data = validate(WebhookUpdate, body)
            if data.url is not None:
                await check_url(data.url, livemode=auth.key.livemode)
            # null means "leave it as it is" (the control agent ignores nulls)
            changes = data.model_dump(exclude_unset=True, exclude_none=True)
            args = {"webhook_id": webhook_id, "changes": changes}
            result = await run_command(state, request, auth, "webhook.update", args)
            return respond(WebhookEndpointObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)

    async def _set(
        self, request: Request[Any, Any, Any], webhook_id: str, status: str
    ) -> Response[WebhookEndpointObject]:
        state, auth = api_state(request), auth_of(request)
        find_endpoint(state, auth, webhook_id)
        body = await read_body(request)

        async def handle() -> Response[WebhookEndpointObject]:
            validate(EmptyBody, body, allow_empty=True)
            args = {"webhook_id": webhook_id, "changes": {"status": status}}
            result = await run_command(state, request, auth, "webhook.update", args)
            return respond(WebhookEndpointObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @post(
        "/{webhook_id:str}/disable",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="disableWebhookEndpoint",
        status_code=200,
        **documented(404, 503, body=EmptyBody, optional_body=True),
    )
    async def disable_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str, data: EmptyBody | None = None
    ) -> Response[WebhookEndpointObject]:
        """Stop deliveries to this endpoint (``status: disabled``); pending ones wait."""
        return await self._set(request, webhook_id, "disabled")

    @post(
        "/{webhook_id:str}/enable",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="enableWebhookEndpoint",
        status_code=200,
        **documented(404, 503, body=EmptyBody, optional_body=True),
    )
    async def enable_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str, data: EmptyBody | None = None
    ) -> Response[WebhookEndpointObject]:
        """Re-activate a disabled or suspended endpoint; its pending deliveries resume."""
        return await self._set(request, webhook_id, "active")

    @post(
        "/{webhook_id:str}/rotate_secret",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="rotateWebhookSecret",
        status_code=200,
        **documented(404, 503, body=WebhookRotate, optional_body=True),
    )
    async def rotate_secret(
        self, request: Request[Any, Any, Any], webhook_id: str, data: WebhookRotate | None = None
    ) -> Response[WebhookEndpointObject]:
        """A new signing secret, shown once in this response. The previous one keeps signing
        (a second ``v1=`` in ``Fibric-Signature``) for ``overlap_s`` seconds (default 24 h)."""
        state, auth = api_state(request), auth_of(request)
        ep = find_endpoint(state, auth, webhook_id)
        body = await read_body(request)
        fresh: dict[str, str] = {}

        async def handle() -> Response[WebhookEndpointObject]:
            data = validate(WebhookRotate, body, allow_empty=True)
            now = datetime.now(UTC)
            keep: list[tuple[str, datetime | None]] = []
            entry = state.view.vault.get(ep.id)
            if data.overlap_s > 0 and entry is not None and entry.ciphertext:
                until = now + timedelta(seconds=data.overlap_s)
                for s in state.box.open(entry.ciphertext).get("secrets", []):
                    old = datetime.fromisoformat(s["expires_at"]) if s.get("expires_at") else None
                    if old is None or old > now:
                        keep.append((s["secret"], min(old, until) if old else until))
            secret = new_secret()
            args = {
                "webhook_id": ep.id,
                "ciphertext": _sealed(state, [(secret, None), *keep]),
                "secret_hint": secret_hint(secret),
            }
            rotated = await run_command(state, request, auth, "webhook.rotate", args)
            fresh["secret"] = secret
            return respond(WebhookEndpointObject, {**rotated, "secret": None})

        response = await state.idempotency.run(request, auth.scope, body, handle)
        if "secret" not in fresh:
            return response
        rotated = {**orjson.loads(response.content), "secret": fresh["secret"]}
        return respond(WebhookEndpointObject, rotated)

    @delete(
        "/{webhook_id:str}",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="deleteWebhookEndpoint",
        status_code=200,
        **documented(404, 503),
    )
    async def delete_webhook(
        self, request: Request[Any, Any, Any], webhook_id: str
    ) -> Response[DeletedWebhook]:
        """Delete an endpoint: nothing more is delivered to it and its secret is purged."""
        state, auth = api_state(request), auth_of(request)
        find_endpoint(state, auth, webhook_id)
        args = {"webhook_id": webhook_id}
        result = await run_command(state, request, auth, "webhook.delete", args)
        return respond(DeletedWebhook, result)

    # ---- deliveries ----------------------------------------------------------------------------
    @get(
        "/{webhook_id:str}/deliveries",
        opt={"scope": "webhooks:read", "route_class": "config_read"},
        operation_id="listWebhookDeliveries",
        **documented(404),
    )
    async def list_deliveries(
        self, request: Request[Any, Any, Any], webhook_id: str
    ) -> Response[ListOf[DeliveryObject]]:
        """This endpoint's deliveries, newest first, each with its attempts (status code,
        latency, response excerpt); filter ``status`` (``pending`` | ``succeeded`` |
        ``failed``)."""
        state, auth = api_state(request), auth_of(request)
        ep = find_endpoint(state, auth, webhook_id)
        only_params(request.query_params, frozenset({"limit", "cursor", "status"}))
        limit = parse_limit(request.query_params.get("limit"))
        status = request.query_params.get("status")
        if status is not None and status not in DELIVERY_STATUSES:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"status must be one of {', '.join(DELIVERY_STATUSES)}.",
                param="status",
            )
        raw = {"status": status, "webhook_id": ep.id}
        after = decode_cursor(request.query_params.get("cursor"), raw, "webhook_deliveries")
        page = await state.store.list_deliveries(auth.scope, ep.id, status, limit, after)
        attempts = await state.store.attempts_for(auth.scope, [d.id for d in page.items])
        by: dict[str, list[AttemptObject]] = {}
        for a in attempts:
            by.setdefault(a.delivery_id, []).append(_attempt(a))
        data = [delivery_public(d, by.get(d.id, [])) for d in page.items]
        body = list_body(data, page.has_more, page.last_key, raw, "webhook_deliveries")
        return respond(ListOf[DeliveryObject], body)

    async def _delivery(
        self, state: ApiState, auth: AuthContext, ep: WebhookEndpoint, delivery_id: str
    ) -> Delivery:
        d = (
            await state.store.get_delivery(auth.scope, ep.id, delivery_id)
            if _WHD.match(delivery_id)
            else None
        )
        if d is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No delivery {delivery_id[:60]!r}.")
        return d

    @get(
        "/{webhook_id:str}/deliveries/{delivery_id:str}",
        opt={"scope": "webhooks:read", "route_class": "config_read"},
        operation_id="retrieveWebhookDelivery",
        **documented(404),
    )
    async def retrieve_delivery(
        self, request: Request[Any, Any, Any], webhook_id: str, delivery_id: str
    ) -> Response[DeliveryObject]:
        """One delivery with its attempts and the envelope that was sent."""
        state, auth = api_state(request), auth_of(request)
        ep = find_endpoint(state, auth, webhook_id)
        d = await self._delivery(state, auth, ep, delivery_id)
        attempts = await state.store.attempts_for(auth.scope, [d.id])
        objs = [_attempt(a) for a in attempts]
        return respond(DeliveryObject, delivery_public(d, objs))

    @post(
        "/{webhook_id:str}/deliveries/{delivery_id:str}/retry",
        opt={"scope": "webhooks:write", "route_class": "config_write"},
        operation_id="retryWebhookDelivery",
        status_code=202,
        **documented(404, 409, 503, body=EmptyBody, optional_body=True),
    )
    async def retry_delivery(
        self,
        request: Request[Any, Any, Any],
        webhook_id: str,
        delivery_id: str,
        data: EmptyBody | None = None,
    ) -> Response[DeliveryObject]:
        """Send a delivery again now, under the same delivery id and with the same body (a
        fresh retry window). The endpoint must be active (409 ``state_conflict`` otherwise)."""
        state, auth = api_state(request), auth_of(request)
        ep = find_endpoint(state, auth, webhook_id)
        body = await read_body(request)

        async def handle() -> Response[DeliveryObject]:
            validate(EmptyBody, body, allow_empty=True)
            d = await self._delivery(state, auth, ep, delivery_id)
            if ep.status != "active":
                raise FibricError(
                    ErrorCode.STATE_CONFLICT,
                    f"Webhook endpoint {ep.id} is {ep.status}; enable it before retrying.",
                )
            dispatcher = state.extra.get("webhooks")
            if dispatcher is None:
                raise FibricError(ErrorCode.SERVICE_UNAVAILABLE, "Deliveries are not running.")
            again = await dispatcher.retry(d)
            attempts = await state.store.attempts_for(auth.scope, [d.id])
            objs = [_attempt(a) for a in attempts]
            return respond(DeliveryObject, delivery_public(again, objs), 202)

        return await state.idempotency.run(request, auth.scope, body, handle)
