"""``/v1/api_keys`` (spec §2.12, §3.8): list, create, retrieve, revoke.

Reads come from this process's config view; writes are ``key.create`` / ``key.revoke`` commands
to the control agent, which decides them (uniqueness of active names, no scope escalation, the
audit note) exactly as it does for ``fibric admin key``. The secret is generated here and leaves
this process once, in the create response: only its hash travels to the control agent, and the
response kept for Idempotency-Key replays carries ``secret: null``. Never log a request body here.
"""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Controller, Request, Response, get, post

from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.pagination import status_list
from api.respond import documented, respond
from api.state import ApiState
from schemas.config import (
    ApiKey,
    ApiKeyCreate,
    expand_scopes,
    hash_secret,
    missing_scopes,
    new_secret,
    secret_hint,
)
from schemas.errors import ErrorCode, FibricError
from schemas.objects import ApiKeyCreated, ApiKeyObject, ListOf

STATUSES = ("active", "revoked")


def find_key(state: ApiState, auth: AuthContext, key_id: str) -> ApiKey:
    """Another tenant's key, or a key of the other mode, reads as not found."""
    key = state.view.keys.get(key_id)
    if key is None or key.tenant_id != auth.tenant.id or key.mode != auth.key.mode:
        raise FibricError(ErrorCode.NOT_FOUND, f"No API key {key_id[:60]!r}.")
    return key


def _refuse_escalation(auth: AuthContext, scopes: list[str], what: str) -> None:
    """Early answer for the control agent's own rule (it decides again, authoritatively)."""
    missing = missing_scopes(auth.key.scopes, scopes)
    if missing:
        raise FibricError(
            ErrorCode.INSUFFICIENT_SCOPE,
            f"A key can only {what} keys within its own scopes; this key lacks "
            f"{', '.join(missing)}.",
            details={"missing_scopes": missing},
        )


class ApiKeysController(Controller):
    path = "/api_keys"
    tags = ["api_keys"]

    @get(
        "/",
        opt={"scope": "keys:read", "route_class": "config_read"},
        operation_id="listApiKeys",
        **documented(),
    )
    async def list_api_keys(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[ApiKeyObject]]:
        """List this tenant's keys of the calling key's mode, newest first, with
        ``last_used_at``; filter ``status`` (``active`` | ``revoked``). Never a secret or hash."""
        state, auth = api_state(request), auth_of(request)
        keys = [
            k
            for k in state.view.keys.values()
            if k.tenant_id == auth.tenant.id and k.mode == auth.key.mode
        ]
        # bound to this list: another list's cursor is invalid here
        data = status_list(request.query_params, keys, STATUSES, "api_keys", ApiKey.public)
        return respond(ListOf[ApiKeyObject], data)

    @post(
        "/",
        opt={"scope": "keys:write", "route_class": "config_write"},
        operation_id="createApiKey",
        status_code=201,
        **documented(409, 503, body=ApiKeyCreate),
    )
    async def create_api_key(
        self, request: Request[Any, Any, Any], data: ApiKeyCreate | None = None
    ) -> Response[ApiKeyCreated]:
        """Create a key from a ``role`` preset or explicit ``scopes`` (expanded now; later preset
        changes never alter it), in the calling key's mode. The response carries the ``secret``,
        the only time it is shown; a key can never grant scopes it does not hold (403
        ``insufficient_scope``)."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)
        fresh: dict[str, str] = {}

        async def handle() -> Response[ApiKeyCreated]:
            data = validate(ApiKeyCreate, body)
            if data.role is not None and data.scopes is not None:
                raise FibricError(
                    ErrorCode.INVALID_PARAMETER, "Send a role or scopes, not both.", param="scopes"
                )
            if data.role is None and data.scopes is None:
                raise FibricError(
                    ErrorCode.MISSING_PARAMETER, "Send a role or scopes.", param="role"
                )
            if data.mode is not None and data.mode != auth.key.mode:
                raise FibricError(
                    ErrorCode.INVALID_PARAMETER,
                    f"A {auth.key.mode} key creates {auth.key.mode} keys only; "
                    f"use a {data.mode} key.",
                    param="mode",
                )
            if data.workspace_id is not None:
                raise FibricError(
                    ErrorCode.INVALID_PARAMETER,
                    "Workspace-pinned keys are not supported yet; omit workspace_id "
                    "(the key covers the whole tenant).",
                    param="workspace_id",
                )
            try:
                scopes = expand_scopes(data.role, data.scopes)
            except ValueError as exc:
                raise FibricError(ErrorCode.INVALID_PARAMETER, str(exc), param="scopes") from None
            _refuse_escalation(auth, scopes, "create")
            secret = new_secret(auth.key.mode)
            draft = {
                "name": data.name,
                "mode": auth.key.mode,
                "role": data.role,
                "scopes": None if data.role else scopes,
                "hint": secret_hint(secret),
                "secret_hash": hash_secret(secret),
            }
            created = await run_command(state, request, auth, "key.create", {"key": draft})
            fresh["secret"] = secret
            # what Idempotency-Key keeps (in ClickHouse) and replays: the key, never its secret
            return respond(ApiKeyCreated, {**created, "secret": None}, 201)

        response = await state.idempotency.run(request, auth.scope, body, handle)
        if "secret" not in fresh:
            return response  # a replay: the secret was shown once, to the first request
        created = orjson.loads(response.content)
        return respond(ApiKeyCreated, {**created, "secret": fresh["secret"]}, 201)

    @get(
        "/{key_id:str}",
        opt={"scope": "keys:read", "route_class": "config_read"},
        operation_id="retrieveApiKey",
        **documented(404),
    )
    async def retrieve_api_key(
        self, request: Request[Any, Any, Any], key_id: str
    ) -> Response[ApiKeyObject]:
        """Retrieve one key's metadata (``hint``, ``scopes``, ``last_used_at``…); never its
        secret."""
        return respond(
            ApiKeyObject, find_key(api_state(request), auth_of(request), key_id).public()
        )

    @post(
        "/{key_id:str}/revoke",
        opt={"scope": "keys:write", "route_class": "config_write"},
        operation_id="revokeApiKey",
        status_code=200,
        **documented(404, 409, 413, 415, 503),
    )
    async def revoke_api_key(
        self, request: Request[Any, Any, Any], key_id: str
    ) -> Response[ApiKeyObject]:
        """Revoke a key, permanently: it answers 401 ``key_revoked`` from then on. Repeating it
        returns the revoked key. A key cannot revoke a key with scopes it does not hold."""
        state, auth = api_state(request), auth_of(request)
        key = find_key(state, auth, key_id)
        body = await read_body(request)

        async def handle() -> Response[ApiKeyObject]:
            if key.status == "active":
                _refuse_escalation(auth, key.scopes, "revoke")
            result = await run_command(state, request, auth, "key.revoke", {"key_id": key_id})
            return respond(ApiKeyObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)
