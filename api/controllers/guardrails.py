"""``/v1/guardrails`` (spec §2.10, §3.8): tenant guardrail policies and the dry-run evaluator.

Reads come from this process's config view (which keeps every version of every policy); writes
are ``guardrail.*`` commands to the control agent. ``POST /v1/guardrails/evaluate`` judges
proposed actions with the executor's own pure function (``agents.executor.vet``, the one the
plan builder and approval call) against the guardrails in force now: nothing runs, nothing is
written, no receipt (``api/services/evaluation.py``).
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Controller, Request, Response, delete, get, patch, post

from agents.governance import GUARDRAIL_DIFF_FIELDS
from api.auth import AuthContext, api_state, auth_of
from api.body import read_body, validate
from api.commands import run_command
from api.pagination import decode_cursor, list_body, paginate, parse_limit, status_list
from api.query import only_params
from api.respond import documented, respond
from api.services import evaluation
from api.state import ApiState
from api.versions import Version, history, pick, version_diff
from schemas.errors import ErrorCode, FibricError
from schemas.governance import VersionDiff
from schemas.guardrail import (
    DeletedGuardrail,
    EvaluateRequest,
    Evaluation,
    GuardrailCreate,
    GuardrailPolicy,
    GuardrailPolicyObject,
    GuardrailUpdate,
)
from schemas.objects import ListOf

STATUSES = ("active", "disabled")
_GRD = re.compile(r"^grd_[0-9A-Z]{26}$")


def find_policy(state: ApiState, auth: AuthContext, guardrail_id: str) -> GuardrailPolicy:
    """Another tenant's policy, or one of the other mode, reads as not found."""
    gp = state.view.guardrails.get(guardrail_id) if _GRD.match(guardrail_id) else None
    if gp is None or gp.tenant_id != auth.tenant.id or gp.livemode != auth.key.livemode:
        raise FibricError(ErrorCode.NOT_FOUND, f"No guardrail policy {guardrail_id[:60]!r}.")
    return gp


class GuardrailsController(Controller):
    path = "/guardrails"
    tags = ["guardrails"]

    @get(
        "/",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="listGuardrailPolicies",
        **documented(),
    )
    async def list_guardrails(
        self, request: Request[Any, Any, Any]
    ) -> Response[ListOf[GuardrailPolicyObject]]:
        """List this tenant's guardrail policies (the calling key's mode), newest first; filter
        ``status`` (``active`` | ``disabled``)."""
        state, auth = api_state(request), auth_of(request)
        items = state.view.guardrails_of(auth.tenant.id, auth.key.livemode)
        data = status_list(request.query_params, items, STATUSES, "guardrails", GuardrailPolicy.public)
        return respond(ListOf[GuardrailPolicyObject], data)

    @post(
        "/",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="createGuardrailPolicy",
        status_code=201,
        **documented(409, 503, body=GuardrailCreate),
    )
    async def create_guardrail(
        self, request: Request[Any, Any, Any], data: GuardrailCreate | None = None
    ) -> Response[GuardrailPolicyObject]:
        """Create a policy that applies to every operator of the tenant: ``rules`` (each with
        optional ``operator``, ``connector`` and ``tool`` globs, an optional ``max_value`` and a
        ``decision`` ``ALLOW`` | ``ALERT`` | ``BLOCK``) and/or ``budgets`` (the same globs,
        ``window_seconds``, ``max_count`` and/or ``max_value`` over the summed action values,
        counted ``per`` operator/connector/tool/entity, ``on_exhausted`` ``BLOCK`` | ``ALERT``).
        A tenant BLOCK always wins."""
        state, auth = api_state(request), auth_of(request)
        body = await read_body(request)

        async def handle() -> Response[GuardrailPolicyObject]:
            draft = validate(GuardrailCreate, body)
            args = {"guardrail": draft.model_dump(mode="json", exclude_none=True)}
            created = await run_command(state, request, auth, "guardrail.create", args)
            return respond(GuardrailPolicyObject, created, 201)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @post(
        "/evaluate",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="evaluateGuardrails",
        status_code=200,
        **documented(404, body=EvaluateRequest),
    )
    async def evaluate(
        self, request: Request[Any, Any, Any], data: EvaluateRequest | None = None
    ) -> Response[Evaluation]:
        """Dry run: what would the guardrails in force now decide for these actions of this
        ``operator`` (id or name)? Send one ``action`` or a ``plan`` (``{"actions": […]}``) and
        optionally the ``envelope``. Each action gets its ``decision``, ``tier``, the ``rule``
        that decided and ``budget``: what is left of each budget that would count it (null when
        none does; an exhausted BLOCK budget makes the decision BLOCK, ``budget_exhausted``).
        Nothing runs, nothing is reserved and no receipt is written."""
        state, auth = api_state(request), auth_of(request)
        req = validate(EvaluateRequest, await read_body(request))
        return respond(Evaluation, await evaluation.evaluate(state, auth, req))

    @get(
        "/{guardrail_id:str}",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="retrieveGuardrailPolicy",
        **documented(404),
    )
    async def retrieve_guardrail(
        self, request: Request[Any, Any, Any], guardrail_id: str
    ) -> Response[GuardrailPolicyObject]:
        """Retrieve one policy at its current version."""
        gp = find_policy(api_state(request), auth_of(request), guardrail_id)
        return respond(GuardrailPolicyObject, gp.public())

    @patch(
        "/{guardrail_id:str}",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="updateGuardrailPolicy",
        **documented(404, 503, body=GuardrailUpdate),
    )
    async def update_guardrail(
        self,
        request: Request[Any, Any, Any],
        guardrail_id: str,
        data: GuardrailUpdate | None = None,
    ) -> Response[GuardrailPolicyObject]:
        """Change ``description``, ``status``, ``rules`` or ``budgets`` (each replaced as a
        whole; a budget keeps its spend while it keeps its position). Every change
        is a new ``version``; the next plan is judged by it, plans already judged keep theirs."""
        state, auth = api_state(request), auth_of(request)
        find_policy(state, auth, guardrail_id)
        body = await read_body(request)

        async def handle() -> Response[GuardrailPolicyObject]:
            upd = validate(GuardrailUpdate, body)
            changes = upd.model_dump(mode="json", exclude_unset=True, exclude_none=True)
            args = {"guardrail_id": guardrail_id, "changes": changes}
            result = await run_command(state, request, auth, "guardrail.update", args)
            return respond(GuardrailPolicyObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)

    @delete(
        "/{guardrail_id:str}",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="deleteGuardrailPolicy",
        status_code=200,
        **documented(404, 503),
    )
    async def delete_guardrail(
        self, request: Request[Any, Any, Any], guardrail_id: str
    ) -> Response[DeletedGuardrail]:
        """Delete a policy: it judges nothing from now on (its versions stay in the audit
        trail, ``config_log``)."""
        state, auth = api_state(request), auth_of(request)
        find_policy(state, auth, guardrail_id)
        args = {"guardrail_id": guardrail_id}
        result = await run_command(state, request, auth, "guardrail.delete", args)
        return respond(DeletedGuardrail, result)

    @get(
        "/{guardrail_id:str}/versions",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="listGuardrailPolicyVersions",
        **documented(404),
    )
    async def list_versions(
        self, request: Request[Any, Any, Any], guardrail_id: str
    ) -> Response[ListOf[GuardrailPolicyObject]]:
        """Every version of a policy, newest first (receipts cite ``guardrail_version``)."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        only_params(request.query_params, frozenset({"limit", "cursor"}))
        limit = parse_limit(request.query_params.get("limit"))
        raw: dict[str, Any] = {"guardrail_id": gp.id}
        after = decode_cursor(request.query_params.get("cursor"), raw, "guardrail_versions")
        versions = [v for v in (await _versions(state, auth, gp)).values() if not v.deleted]
        page, more, last = paginate(
            versions, lambda v: (v.updated_at, f"{v.version:010d}"), limit, after
        )
        data = list_body([v.public() for v in page], more, last, raw, "guardrail_versions")
        return respond(ListOf[GuardrailPolicyObject], data)

    @get(
        "/{guardrail_id:str}/versions/{version:int}",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="retrieveGuardrailPolicyVersion",
        **documented(404),
    )
    async def retrieve_version(
        self, request: Request[Any, Any, Any], guardrail_id: str, version: Version
    ) -> Response[GuardrailPolicyObject]:
        """The policy as it was at one version (receipts cite it in ``rule``)."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        v = version
        found = pick(await _versions(state, auth, gp), v, f"Guardrail policy {gp.id}")
        return respond(GuardrailPolicyObject, found.public())

    @get(
        "/{guardrail_id:str}/versions/{version:int}/diff",
        opt={"scope": "guardrails:read", "route_class": "config_read"},
        operation_id="diffGuardrailPolicyVersion",
        **documented(404),
    )
    async def diff_version(
        self, request: Request[Any, Any, Any], guardrail_id: str, version: Version
    ) -> Response[VersionDiff]:
        """Field-level changes of ``version`` against ``against`` (default: the version before
        it), e.g. ``rules[0].decision`` changed from ``BLOCK`` to ``ALERT``."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        v = version
        versions = await _versions(state, auth, gp)
        what = f"Guardrail policy {gp.id}"
        body = version_diff(
            request, auth, "guardrail_policy", gp.id, versions, v, GUARDRAIL_DIFF_FIELDS, what
        )
        return respond(VersionDiff, body)

    @post(
        "/{guardrail_id:str}/versions/{version:int}/rollback",
        opt={"scope": "guardrails:write", "route_class": "config_write"},
        operation_id="rollbackGuardrailPolicy",
        status_code=200,
        **documented(404, 503),
    )
    async def rollback(
        self, request: Request[Any, Any, Any], guardrail_id: str, version: Version
    ) -> Response[GuardrailPolicyObject]:
        """Roll back: a NEW version with the ``description``, ``status`` and ``rules`` of
        ``version``; the next plan is judged by it."""
        state, auth = api_state(request), auth_of(request)
        gp = find_policy(state, auth, guardrail_id)
        v = version
        body = await read_body(request)

        async def handle() -> Response[GuardrailPolicyObject]:
            target = pick(await _versions(state, auth, gp), v, f"Guardrail policy {gp.id}")
            args = {"guardrail_id": gp.id, "version": v, "target": target.model_dump(mode="json")}
            result = await run_command(state, request, auth, "guardrail.rollback", args)
            return respond(GuardrailPolicyObject, result)

        return await state.idempotency.run(request, auth.scope, body, handle)


async def _versions(
    state: ApiState, auth: AuthContext, gp: GuardrailPolicy
) -> dict[int, GuardrailPolicy]:
    known = state.view.guardrail_versions.get(gp.id, {})
    return await history(state, auth, "guardrail_policy", gp.id, known, GuardrailPolicy)
