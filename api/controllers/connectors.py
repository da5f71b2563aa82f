"""``/v1/connectors`` (seed 001) and ``/v1/marketplace/listings``.

Install validates the request, checks the credentials against the real source through the
connector's own MCP server (``connector.check``) and only then asks the control agent to record
the instance; credentials are sealed before they leave this process and never appear in a
response. Test runs read tools live and side-effecting tools as dry runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from agents.secrets import credential_hint
from api import oauth_flow
from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.controllers import caller
from api.pagination import decode_cursor, list_body, paginate, parse_limit
from api.respond import documented, respond
from api.services import connectors as connector_service
from api.state import ApiState
from connectors.egress import EgressRefused, check_target_async
from connectors.marketplace import Listing, load_catalogue
from schemas.connector import (
    CONNECTOR_NAME_RE,
    Connector,
    ConnectorInstall,
    ConnectorTest,
    ConnectorTool,
)
from schemas.errors import ErrorCode, FibricError
from schemas.ids import new_id
from schemas.objects import (
    ConnectorDeleted,
    ConnectorObject,
    ConnectorSummary,
    ConnectorTestObject,
    ListOf,
)
from schemas.operator import CAPABILITY_RE

KINDS = ("saas", "hardware")
STATUSES = ("connected", "degraded", "pending_auth", "error")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def find_connector(state: ApiState, auth: AuthContext, connector_id: str) -> Connector:
    cn = state.view.connectors.get(connector_id)
    if cn is None or cn.tenant_id != auth.tenant.id or cn.livemode != auth.key.livemode:
        raise FibricError(ErrorCode.NOT_FOUND, f"No connector {connector_id[:60]!r}.")
    return cn


def with_live_health(state: ApiState, cn: Connector) -> dict[str, Any]:
    """The public connector with this process's latest health probe when it is newer than the
    stored one (probes that changed nothing are not all written; decisions §43)."""
    out = cn.public()
    monitor = state.extra.get("connector_health")
    live = monitor.latest(cn.id) if monitor is not None else None
    stored = cn.health.last_probe_at if cn.health else None
    if live is not None and live.last_probe_at and (stored is None or live.last_probe_at > stored):
        out["health"] = live.model_dump(mode="json")
    return out


def _check_auth_shape(listing: Listing, auth: dict[str, Any]) -> None:
    kind = auth.get("type")
    if kind not in ("api_key", "oauth2", "basic"):
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            "auth.type must be api_key, oauth2 or basic.",
            param="auth.type",
        )
    if kind != listing.auth_type:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"{listing.id} uses {listing.auth_type} auth, not {kind}.",
            param="auth.type",
        )
    need = {"api_key": ("key",), "basic": ("username", "password"), "oauth2": ()}[kind]
    for field in need:
        value = auth.get(field)
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"auth.{field} is required for {kind} auth.",
                param=f"auth.{field}",
            )
    extra = set(auth) - {"type", *need}
    if extra:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"auth.{sorted(extra)[0]} is not a recognised field.",
            param=f"auth.{sorted(extra)[0]}",
        )


def _check_config(listing: Listing, config: dict[str, Any]) -> dict[str, Any]:
    known = {k.name for k in listing.config_keys}
    for key in listing.config_keys:
        if key.required and not config.get(key.name):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"config.{key.name} is required by {listing.id}.",
                param=f"config.{key.name}",
            )
    unknown = sorted(set(config) - known)
    if unknown:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"config.{unknown[0]} is not a setting of {listing.id}.",
            param=f"config.{unknown[0]}",
        )
    for k, v in config.items():
        if not isinstance(v, str | int | float | bool) or (isinstance(v, str) and len(v) > 2000):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"config.{k} must be a short scalar.",
                param=f"config.{k}",
            )
    return config


def _egress_targets(
    listing: Listing, config: dict[str, Any], remote_url: str | None
) -> list[tuple[str, str]]:
    """(param, url) of every address the connector will send the credentials to."""
    out = [
        (f"config.{k.name}", config[k.name])
        for k in listing.config_keys
        if k.format == "url" and k.name in config
    ]
    if remote_url is not None:
        out.append(("remote_url", remote_url))
    return out


async def _check_egress(
    listing: Listing, config: dict[str, Any], remote_url: str | None, *, livemode: bool
) -> None:
    """Refuse a URL the egress policy forbids before anything connects to it: the answer is the
    same whether or not something listens there (no port scanning through installs)."""
    for param, url in _egress_targets(listing, config, remote_url):
        if not isinstance(url, str):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, f"{param} must be a URL string.", param=param
            )
        try:
            await check_target_async(url, livemode=livemode)
        except EgressRefused as exc:
            mode = "live" if livemode else "test"
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                f"{param} {exc.reason}; {mode}-mode connectors may only call public http(s) "
                "addresses" + ("." if livemode else " (and loopback)."),
                param=param,
            ) from None


class MarketplaceController(Controller):
    path = "/marketplace/listings"
    tags = ["connectors"]

    @get(
        "/",
        opt={"scope": "connectors:read", "route_class": "config_read"},
        operation_id="listListings",
        **documented(),
    )
    async def list_listings(self, request: Request[Any, Any, Any]) -> Response[ListOf[Listing]]:
        """Browse the marketplace catalogue; filters ``kind``, ``status``, ``capability``."""
        q = request.query_params
        limit = parse_limit(q.get("limit"))
        raw = {"kind": q.get("kind"), "status": q.get("status"), "capability": q.get("capability")}
        after = decode_cursor(q.get("cursor"), raw)
        items = [
            lst
            for lst in load_catalogue().values()
            if (raw["kind"] is None or lst.kind == raw["kind"])
            and (raw["status"] is None or lst.status == raw["status"])
            and (raw["capability"] is None or raw["capability"] in lst.capabilities)
        ]
        page, more, last = paginate(items, lambda lst: (_EPOCH, lst.id), limit, after)
        data = [lst.model_dump(mode="json") for lst in page]
        return respond(ListOf[Listing], list_body(data, more, last, raw))

    @get(
        "/{listing_id:str}",
        opt={"scope": "connectors:read", "route_class": "config_read"},
        operation_id="retrieveListing",
        **documented(404),
    )
    async def retrieve_listing(self, listing_id: str) -> Response[Listing]:
        """One marketplace listing: tools, capabilities, auth type, config keys, price."""
        listing = load_catalogue().get(listing_id)
        if listing is None:
            raise FibricError(ErrorCode.NOT_FOUND, f"No marketplace listing {listing_id[:60]!r}.")
        return respond(Listing, listing.model_dump(mode="json"))


class ConnectorsController(Controller):
    path = "/connectors"
    tags = ["connectors"]

    @get(
        "/",
        opt={"scope": "connectors:read", "route_class": "config_read"},
        operation_id="listConnectors",
        **documented(),
    )
    async def list_connectors(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[ConnectorSummary]]:
        """The tenant's installed connectors, newest first; filters ``capability``, ``kind``, ``status``."""
        state, auth = api_state(request), auth_of(request)
        q = request.query_params
        limit = parse_limit(q.get("limit"))
        raw = {"capability": q.get("capability"), "kind": q.get("kind"), "status": q.get("status")}
        if raw["kind"] is not None and raw["kind"] not in KINDS:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, "kind must be saas or hardware.", param="kind"
            )
        if raw["status"] is not None and raw["status"] not in STATUSES:
            raise FibricError(
                ErrorCode.INVALID_PARAMETER,
                "status must be connected, degraded, pending_auth or error.",
                param="status",
            )
        if raw["capability"] is not None and not CAPABILITY_RE.match(raw["capability"]):
            raise FibricError(
                ErrorCode.INVALID_PARAMETER, "capability must be noun.verb.", param="capability"
            )
        after = decode_cursor(q.get("cursor"), raw)
        items = [
            c
            for c in state.view.connectors_of(auth.tenant.id, auth.key.livemode)
            if (raw["capability"] is None or raw["capability"] in c.capabilities)
            and (raw["kind"] is None or c.kind == raw["kind"])
            and (raw["status"] is None or c.status == raw["status"])
        ]
        page, more, last = paginate(items, lambda c: (c.created_at, c.id), limit, after)
        return respond(
            ListOf[ConnectorSummary], list_body([c.summary() for c in page], more, last, raw)
        )

    @post(
        "/",
        opt={"scope": "connectors:write", "route_class": "config_write"},
        operation_id="installConnector",
        status_code=201,
        **documented(404, 409, 422, 502, 503, body=ConnectorInstall),
    )
    async def install_connector(
        self, request: Request[Any, Any, Any], data: ConnectorInstall | None = None
    ) -> Response[ConnectorObject]:
        """Install a marketplace listing with its credentials (write-only) and settings."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[ConnectorObject]:
            data = validate(ConnectorInstall, body)
            listing = load_catalogue().get(data.listing)
            if listing is None:
                raise FibricError(
                    ErrorCode.NOT_FOUND,
                    f"No marketplace listing {data.listing[:60]!r}.",
                    param="listing",
                )
            _check_auth_shape(listing, data.auth)
            config = _check_config(listing, data.config)
            name = data.name or listing.id
            if not CONNECTOR_NAME_RE.match(name):
                raise FibricError(
                    ErrorCode.INVALID_PARAMETER,
                    "name must be 1–64 lowercase letters, digits, '.', '-', '_'.",
                    param="name",
                )
            if listing.status == "early_access":
                raise FibricError(
                    ErrorCode.LISTING_EARLY_ACCESS,
                    f"{listing.id} is early access and not yet self-serve; request access and it is "
                    "provisioned during onboarding.",
                )
            if any(
                c.name == name for c in state.view.connectors_of(auth.tenant.id, auth.key.livemode)
            ):
                raise FibricError(
                    ErrorCode.STATE_CONFLICT,
                    f"A connector named {name!r} already exists in this tenant.",
                    param="name",
                )
            await _check_egress(listing, config, data.remote_url, livemode=auth.key.livemode)
            now = datetime.now(UTC)
            draft = Connector(
                id=new_id("cn"),
                tenant_id=auth.tenant.id,
                livemode=auth.key.livemode,
                listing=listing.id,
                name=name,
                kind=listing.kind,
                capabilities=list(listing.capabilities),
                tools=[
                    ConnectorTool(
                        name=t.name,
                        side_effect=t.side_effect,
                        capability=t.capability,
                        compensating_tool=t.compensating_tool,
                    )
                    for t in listing.tools
                ],
                auth={"type": listing.auth_type, "hint": credential_hint(data.auth)},
                config=config,
                status="connected",
                price=listing.price.model_dump() if listing.price else None,
                remote_url=data.remote_url,
                created_at=now,
                updated_at=now,
            )
            if listing.auth_type == "oauth2":
                # the dance (decisions §43): a signed single-use state, PKCE, the callback below
                draft.status = "pending_auth"
                draft.grant = "pending"
                draft.oauth_nonce, draft.authorize_url = oauth_flow.start(
                    state,
                    listing=listing,
                    connector_id=draft.id,
                    tenant_id=auth.tenant.id,
                    livemode=auth.key.livemode,
                )
            else:
                draft.tools = await connector_service.verify(state, draft, listing, data.auth)
                draft.last_synced_at = datetime.now(UTC)
            args = {
                "connector": draft.model_dump(
                    mode="json", exclude={"tenant_id", "livemode", "created_at", "updated_at"}
                ),
                "ciphertext": state.box.seal(data.auth),
            }
            installed = await run_command(state, request, auth, "connector.install", args)
            return respond(ConnectorObject, installed, 201)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @get(
        "/{connector_id:str}",
        opt={"scope": "connectors:read", "route_class": "config_read"},
        operation_id="retrieveConnector",
        **documented(404),
    )
    async def retrieve_connector(
        self, request: Request[Any, Any, Any], connector_id: str
    ) -> Response[ConnectorObject]:
        """The full connector object with tools and health; secrets are never included."""
        state = api_state(request)
        cn = find_connector(state, auth_of(request), connector_id)
        return respond(ConnectorObject, with_live_health(state, cn))

    @get(
        "/oauth/callback",
        opt={"auth": "none", "route_class": "config_write"},
        operation_id="completeConnectorAuthorization",
        security=[{}],
        **documented(404, 409, 422, 502, 503),
    )
    async def oauth_callback(
        self,
        request: Request[Any, Any, Any],
        state_: str | None = Parameter(query="state", default=None, max_length=300),
        code: str | None = Parameter(default=None, max_length=2048),
        error: str | None = Parameter(default=None, max_length=200),
        error_description: str | None = Parameter(default=None, max_length=1000),
    ) -> Response[ConnectorObject]:
        """OAuth 2.0 redirect target (RFC 6749 §4.1.2; no API key: the signed, single-use
        ``state`` names and authenticates the connector). Exchanges the code at the provider's
        token endpoint (PKCE), seals the tokens in the vault and answers the connector,
        ``connected``. A declined or failed exchange moves it to ``error`` (422 ``auth_failed``,
        502 ``connector_upstream_error``); a rate-limited one keeps it ``pending_auth`` (503 with
        ``Retry-After``: retry the same callback)."""
        state = api_state(request)
        result = await oauth_flow.complete(
            state,
            request.scope["state"]["request_id"],
            raw_state=state_,
            code=code,
            error=error,
            error_description=error_description,
        )
        return respond(ConnectorObject, result)

    @post(
        "/{connector_id:str}/authorize",
        opt={"scope": "connectors:write", "route_class": "config_write"},
        operation_id="authorizeConnector",
        status_code=200,
        **documented(404, 409, 503),
    )
    async def authorize_connector(
        self, request: Request[Any, Any, Any], connector_id: str
    ) -> Response[ConnectorObject]:
        """(Re)start the OAuth 2.0 authorization of an oauth2 connector: a fresh
        ``authorize_url`` (the previous one stops working) and status ``pending_auth``. For an
        expired link, a failed exchange or a revoked grant."""
        state, auth = api_state(request), auth_of(request)
        cn = find_connector(state, auth, connector_id)
        if cn.auth.get("type") != "oauth2":
            raise FibricError(
                ErrorCode.STATE_CONFLICT, f"{cn.id} does not authorize through OAuth 2.0."
            )
        nonce, url = oauth_flow.start(
            state,
            listing=load_catalogue()[cn.listing],
            connector_id=cn.id,
            tenant_id=auth.tenant.id,
            livemode=auth.key.livemode,
        )
        result = await run_command(
            state,
            request,
            auth,
            "connector.reauthorize",
            {"connector_id": cn.id, "nonce": nonce, "authorize_url": url},
        )
        return respond(ConnectorObject, result)

    @post(
        "/{connector_id:str}/test",
        opt={"scope": "connectors:write", "route_class": "config_write"},
        operation_id="testConnector",
        status_code=200,
        **documented(404, 409, 502, 503, body=ConnectorTest, optional_body=True),
    )
    async def test_connector(
        self,
        request: Request[Any, Any, Any],
        connector_id: str,
        data: ConnectorTest | None = None,
    ) -> Response[ConnectorTestObject]:
        """Connection test: read tools run live, side-effecting tools dry-run (nothing written).
        A failure moves the connector to ``error``; an unreachable source is a 502."""
        state, auth = api_state(request), auth_of(request)
        cn = find_connector(state, auth, connector_id)
        body = await read_body(request)
        data = validate(ConnectorTest, body, allow_empty=True)
        return respond(ConnectorTestObject, await connector_service.run_test(caller(request), cn, data.tools))

    @delete(
        "/{connector_id:str}",
        opt={"scope": "connectors:write", "route_class": "config_write"},
        operation_id="uninstallConnector",
        status_code=200,
        **documented(404, 409, 503),
    )
    async def uninstall_connector(
        self, request: Request[Any, Any, Any], connector_id: str
    ) -> Response[ConnectorDeleted]:
        """Remove the instance and purge its credentials; events and receipts are kept.
        409 ``connector_in_use`` when an active operator depends on a capability only it fulfils."""
        state, auth = api_state(request), auth_of(request)
        cn = find_connector(state, auth, connector_id)
        result = await run_command(
            state, request, auth, "connector.uninstall", {"connector_id": cn.id}
        )
        if state.runtime is not None:
            await state.runtime.remove(cn.id)
        return respond(ConnectorDeleted, result)
