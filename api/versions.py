"""Version history of versioned config (operators, tenant guardrail policies; decisions §38).

The config view keeps every version it has applied (``operator_versions``,
``guardrail_versions``), so history reads its own writes without ClickHouse. A view that did not
see an object's first version (a compacted config topic keeps only each object's latest record)
completes the history from ``config_log``, which keeps every change.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from litestar import Request
from litestar.params import Parameter

from agents.governance import diff
from api.auth import AuthContext
from api.pagination import parse_count
from api.state import ApiState
from ledger.governance import config_versions
from schemas.errors import ErrorCode, FibricError

M = TypeVar("M")
# A version in a path: an integer >= 1 (a version that does not exist is 404).
Version = Annotated[int, Parameter(ge=1, le=2**31 - 1, description="A version number (>= 1).")]


async def history(
    state: ApiState,
    auth: AuthContext,
    kind: str,
    object_id: str,
    known: dict[int, M],
    model: Any,
) -> dict[int, M]:
    """Every version of one object: the view's, completed from ClickHouse when the view lacks
    version 1. The view's copy of a version wins; from ClickHouse, a version's first record."""
    versions = dict(known)
    if 1 not in versions:
        for rec in await config_versions(state.store, auth.tenant.id, kind, object_id):
            obj = model.model_validate(rec.data)
            versions.setdefault(obj.version, obj)
    return versions


def parse_version(raw: str, param: str = "version") -> int:
    v = parse_count(raw)
    if v is None or v < 1:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER, f"{param} must be an integer >= 1.", param=param
        )
    return v


def pick(versions: dict[int, M], version: int, what: str) -> M:
    obj = versions.get(version)
    if obj is None or getattr(obj, "deleted", False):
        raise FibricError(ErrorCode.NOT_FOUND, f"{what} has no version {version}.")
    return obj


def version_diff(
    request: Request[Any, Any, Any],
    auth: AuthContext,
    object_type: str,
    object_id: str,
    versions: dict[int, Any],
    version: int,
    fields: tuple[str, ...],
    what: str,
) -> dict[str, Any]:
    """``version`` against ``?against=`` (default: the version before it; none for version 1)."""
    unknown = sorted(set(request.query_params) - {"against"})
    if unknown:
        raise FibricError(
            ErrorCode.INVALID_PARAMETER,
            f"{unknown[0][:60]} is not a recognised parameter.",
            param=unknown[0][:60],
        )
    new = pick(versions, version, what)
    raw = request.query_params.get("against")
    if raw is not None:
        against: int | None = parse_version(raw, "against")
        old = pick(versions, against, what)  # type: ignore[arg-type]
    else:
        earlier = [v for v, o in versions.items() if v < version and not getattr(o, "deleted", 0)]
        against = max(earlier) if earlier else None
        old = versions[against] if against is not None else None
    before = old.public() if old is not None else {}
    return {
        "object": "version_diff",
        "livemode": auth.key.livemode,
        "object_type": object_type,
        "id": object_id,
        "version": version,
        "against": against,
        "changes": diff(before, new.public(), fields),
    }
