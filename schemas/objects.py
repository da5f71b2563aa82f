"""The documented API objects (fibric-spec §2) that no other module already defines as their
public shape, as pydantic response models: handlers declare them (``api/respond.py``) so Litestar
generates the OpenAPI document from them, and the test stack validates every response body
against them (``FIBRIC_VALIDATE_RESPONSES=1``).

Where a stored model already is the public shape less a few internal fields (Event, Operator,
Connector, ApiKey), the response model is *derived* from it (:func:`derive`): the field list is
written once, and a field added to the stored model appears in the API object and its schema.
Plans, actions and receipts are ``schemas/plan.py`` (PlanObject, ActionObject, ReceiptObject);
dead letters ``schemas/envelope.py`` (DeadLetter); marketplace listings
``connectors/marketplace.py`` (Listing)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from schemas.config import ApiKey
from schemas.connector import CONNECTOR_PRIVATE, Connector
from schemas.envelope import Event
from schemas.operator import Guardrail, LastRun, Operator

T = TypeVar("T")

_PUBLIC = ConfigDict(extra="forbid")


def derive(
    name: str,
    base: type[BaseModel],
    *,
    exclude: tuple[str, ...] = (),
    include: tuple[str, ...] | None = None,
    fields: dict[str, Any] | None = None,
    doc: str | None = None,
) -> type[BaseModel]:
    """A response model with ``base``'s fields (same types, defaults, constraints) minus
    ``exclude`` (or only ``include``), with ``fields`` (``name: (annotation, default)``) replacing or added after them;
    unknown fields are refused (so drift between a builder and its model fails validation)."""
    spec: dict[str, Any] = {}
    for field, info in base.model_fields.items():
        if field not in exclude and (include is None or field in include):
            spec[field] = (info.annotation, copy.copy(info))
    spec.update(fields or {})
    model = create_model(name, __config__=_PUBLIC, __doc__=doc or base.__doc__, **spec)
    model.__module__ = __name__
    return model


# ---- list envelope (§2.15) and error envelope (§2.16) -------------------------------------------
class ListOf(BaseModel, Generic[T]):
    """``{object: "list", data, has_more, next_cursor}``: ``data`` is never null;
    ``next_cursor`` is null exactly when ``has_more`` is false."""

    model_config = _PUBLIC

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None = Field(pattern=r"^cur_")


class ErrorBody(BaseModel):
    """The ``error`` of the envelope. ``param`` names the offending parameter when there is one;
    some codes add documented detail fields (``errors``, ``required_scope``, ``missing_scopes``,
    ``operators``, ``capabilities``, ``upstream_status``…), hence extra keys are allowed."""

    model_config = ConfigDict(extra="allow")

    type: Literal[
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "conflict_error",
        "validation_error",
        "rate_limit_error",
        "api_error",
    ]
    code: str  # schemas/errors.py ErrorCode: branch on this
    message: str
    doc_url: str
    request_id: str = Field(pattern=r"^req_")
    param: str | None = None


class ErrorEnvelope(BaseModel):
    """``{error: {type, code, message, doc_url, request_id}}`` (§2.16, §5.4)."""

    model_config = _PUBLIC

    error: ErrorBody


# ---- event (§2.2) -------------------------------------------------------------------------------
if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    EventObject = BaseModel
else:
    EventObject = derive(
        "EventObject",
        Event,
        fields={"plan_ids": (list[str], ...)},
        doc='``object: "event"`` (spec §2.2): the envelope fields, ingest metadata, and the ids of '
        "the plans it caused so far.",
    )


# ---- operator (§2.3) ----------------------------------------------------------------------------
if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    LastRunObject = BaseModel
else:
    LastRunObject = derive(
        "LastRunObject",
        LastRun,
        fields={
            # the spec's (inferred) names for the counts; ``sensed``/``proposed``/``applied`` kept
            "events_sensed": (int, ...),
            "actions_proposed": (int, ...),
            "actions_applied": (int, ...),
        },
        doc="``last_run`` of an operator: the latest run's counts and time.",
    )
OPERATOR_INTERNAL = ("tenant_id", "deleted", "pause_reason")
if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    OperatorObject = BaseModel
else:
    OperatorObject = derive(
        "OperatorObject",
        Operator,
        exclude=OPERATOR_INTERNAL,
        fields={"guardrails": (list[Guardrail], ...), "last_run": (LastRunObject | None, None)},
        doc='``object: "operator"`` (spec §2.3, seed 002).',
    )


class OperatorPaused(BaseModel):
    """What ``POST /v1/operators/{id}/pause`` returns (seed 002)."""

    model_config = _PUBLIC

    id: str
    object: Literal["operator"] = "operator"
    name: str
    status: Literal["paused"]
    paused_at: datetime | None


class CatchUpWindow(BaseModel):
    model_config = _PUBLIC

    from_: datetime = Field(alias="from")
    to: datetime


class OperatorResumed(BaseModel):
    """What ``POST /v1/operators/{id}/resume`` returns (seed 002); ``catch_up_window`` only when
    missed events were replayed."""

    model_config = _PUBLIC

    id: str
    object: Literal["operator"] = "operator"
    name: str
    status: Literal["active"]
    resumed_at: datetime | None
    catch_up_events: int = Field(ge=0)
    catch_up_window: CatchUpWindow | None = None


# ---- connector (§2.4, seed 001) -----------------------------------------------------------------
class ToolObject(BaseModel):
    """``tools[]`` of a connector: ``{name, side_effect}`` as exposed over MCP."""

    model_config = _PUBLIC

    name: str
    side_effect: bool


class ConnectorAuth(BaseModel):
    """``auth`` of a connector, masked: the type and a hint; secrets are write-only."""

    model_config = _PUBLIC

    type: Literal["api_key", "oauth2", "basic", "aws_iam", "mtls", "none"]
    hint: str | None


CONNECTOR_INTERNAL = CONNECTOR_PRIVATE
if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    ConnectorObject = BaseModel
else:
    ConnectorObject = derive(
        "ConnectorObject",
        Connector,
        exclude=CONNECTOR_INTERNAL,
        fields={
            "tools": (list[ToolObject], ...),
            "auth": (ConnectorAuth, ...),
            # degraded/error are set by the health probe (decisions §43)
            "status": (Literal["connected", "degraded", "pending_auth", "error"], ...),
            "installed_at": (datetime, ...),
        },
        doc='``object: "connector"``, an installed instance (spec §2.4, seed 001). '
        "``status_detail``, ``authorize_url`` and ``health`` (the last health probe) are "
        "present only when set.",
    )


if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    ConnectorSummary = BaseModel
else:
    ConnectorSummary = derive(
        "ConnectorSummary",
        ConnectorObject,
        include=("id", "object", "listing", "name", "kind", "capabilities", "status"),
        doc="A connector as ``GET /v1/connectors`` lists it (seed 001); retrieve it for the rest.",
    )


class ConnectorDeleted(BaseModel):
    """What ``DELETE /v1/connectors/{id}`` returns."""

    model_config = _PUBLIC

    id: str
    object: Literal["connector"] = "connector"
    deleted: Literal[True]


class ConnectorTestError(BaseModel):
    model_config = _PUBLIC

    code: str | None
    message: str | None
    upstream_status: int | None


class ConnectorTestResult(BaseModel):
    model_config = _PUBLIC

    tool: str
    mode: Literal["live", "dry_run"]
    ok: bool
    latency_ms: int = Field(ge=0)
    error: ConnectorTestError | None = None


class ConnectorTestObject(BaseModel):
    """``object: "connector_test"``: one result per tool tested (reads live, writes dry-run)."""

    model_config = _PUBLIC

    object: Literal["connector_test"] = "connector_test"
    connector_id: str
    status: Literal["passed", "failed"]
    results: list[ConnectorTestResult]
    tested_at: datetime


# ---- receipt export job (§2.14) -----------------------------------------------------------------
class ExportObject(BaseModel):
    """``object: "receipt_export"`` (spec §2.14, an inferred design): every documented field
    (``pending`` is documented but never reported: a job is ``running`` from creation), plus
    ``row_count``, ``size_bytes``, ``completed_at`` and ``failure``. ``url`` is set once
    ``complete``; the file is served until ``expires_at``."""

    model_config = _PUBLIC

    id: str = Field(pattern=r"^exp_")
    object: Literal["receipt_export"] = "receipt_export"
    status: Literal["pending", "running", "complete", "failed"]
    format: Literal["jsonl", "csv", "parquet"]
    filters: dict[str, Any]
    url: str | None
    expires_at: datetime
    created_at: datetime
    row_count: int | None = None
    size_bytes: int | None = None
    completed_at: datetime | None = None
    failure: str | None = None


# ---- api key (§2.12) ----------------------------------------------------------------------------
if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    ApiKeyObject = BaseModel
else:
    ApiKeyObject = derive(
        "ApiKeyObject",
        ApiKey,
        exclude=("secret_hash",),
        fields={
            "livemode": (bool, ...),
            # null when created from explicit scopes (spec §2.12)
            "role": (Literal["read_only", "ingest", "operate", "admin"] | None, None),
        },
        doc='``object: "api_key"`` (spec §2.12): never the secret or its hash.',
    )
if TYPE_CHECKING:  # derived at import time; mypy sees the base model
    ApiKeyCreated = BaseModel
else:
    ApiKeyCreated = derive(
        "ApiKeyCreated",
        ApiKeyObject,
        fields={"secret": (str | None, ...)},
        doc="The created ``api_key`` with its ``secret``, shown this once (null in an "
        "Idempotency-Key replay).",
    )


# ---- health -------------------------------------------------------------------------------------
class Health(BaseModel):
    model_config = _PUBLIC

    status: Literal["ok"]


class WorkerHealth(BaseModel):
    model_config = _PUBLIC

    worker_id: str
    partitions: list[int]
    stalled: dict[str, Any]


class VaultHealth(BaseModel):
    """The secrets backend in ``/readyz`` (decisions §43; the peer's ``/health/secrets``)."""

    model_config = _PUBLIC

    status: Literal["healthy", "unhealthy"]
    backend: Literal["fernet"]
    checks: dict[str, Literal["ok", "failed"]]
    entries: int
    sampled: int
    undecryptable: int


class Readiness(BaseModel):
    """``/readyz``: ``ready`` only when every check passes (503 ``not_ready`` otherwise)."""

    model_config = _PUBLIC

    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]
    workers: list[WorkerHealth]
    vault: VaultHealth | None = None
