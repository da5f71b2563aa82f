"""Webhook endpoints and deliveries (spec §2.13, §6): the stored endpoint, the API objects, the
request bodies, the signature scheme and the retry schedule.

Pure: no I/O here. The secret never appears in an endpoint record: it is sealed (SecretBox) into a
vault record, exactly like connector credentials, so a delete purges it. The delivering code lives
in ``api/deliveries.py``; the control-agent side in ``agents/webhook_control.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# The v1.0 delivery types (spec §6.1) plus the v0.9 alias `plan.awaiting_approval`, which fires
# for the same plans `plan.proposed` does when the plan is held for a person.
DELIVERY_TYPES: tuple[str, ...] = (
    "plan.proposed",
    "plan.awaiting_approval",
    "plan.disposed",
    "action.disposed",
    "action.needs_approval",
    "connector.status_changed",
    "receipt.written",
)
DeliveryType = Literal[
    "plan.proposed",
    "plan.awaiting_approval",
    "plan.disposed",
    "action.disposed",
    "action.needs_approval",
    "connector.status_changed",
    "receipt.written",
]
# Deliveries of one lane (endpoint + entity) go out in this order when they occurred at the same
# instant: a plan is announced before its actions, and those before their receipts.
# `plan.disposed` shares its instant with the receipt that closed the plan, and comes after it.
TYPE_RANK = {
    t: i
    for i, t in enumerate(
        (
            "plan.proposed",
            "plan.awaiting_approval",
            "action.needs_approval",
            "action.disposed",
            "receipt.written",
            "connector.status_changed",
            "plan.disposed",
        )
    )
}

EndpointStatus = Literal["active", "disabled", "suspended"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]

SECRET_PREFIX = "whsec_"
# Longest URL an endpoint may have (a receiver's address, not a document).
MAX_URL_CHARS = 2048
# The shape a URL must have; whether it may be reached (HTTPS, a public address, or loopback for
# test-mode keys) is the egress policy's decision, made at creation (api/controllers/webhooks.py).
URL_PATTERN = r"^https?://"
MAX_DESCRIPTION_CHARS = 500
# Signatures older (or newer) than this are refused by a verifier: Stripe's default tolerance,
# spec §6.3 (|now - t| > 300 s).
SIGNATURE_TOLERANCE_S = 300
# How much of a receiver's answer is kept with an attempt: enough to read an error message.
RESPONSE_EXCERPT_BYTES = 512
# After a rotation the previous secret still signs deliveries this long (both v1= values are
# sent), so a receiver can roll its configuration without dropping anything.
DEFAULT_ROTATION_OVERLAP_S = 24 * 3600
MAX_ROTATION_OVERLAP_S = 7 * 24 * 3600


class WebhookEndpoint(BaseModel):
    """The endpoint as the config log stores it. No secret: see the module docstring."""

    id: str  # whk_…
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    tenant_id: str
    livemode: bool
    url: str
    types: list[str]
    description: str | None = None
    status: EndpointStatus = "active"
    # why the endpoint is not active (set by Fibric for `suspended`, by the owner for `disabled`)
    status_reason: str | None = None
    secret_hint: str
    secret_rotated_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    version: int = 1
    deleted: bool = False

    def public(self) -> dict[str, Any]:
        d = self.model_dump(mode="json", exclude={"tenant_id", "deleted"})
        d["secret"] = None  # shown once, in the create (and rotate) response only
        return d


class WebhookEndpointObject(BaseModel):
    """``object: "webhook_endpoint"`` (spec §2.13)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    livemode: bool
    url: str
    types: list[DeliveryType]
    description: str | None
    status: EndpointStatus
    status_reason: str | None
    secret: str | None  # the signing secret: in the create and rotate responses, else null
    secret_hint: str
    secret_rotated_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


class WebhookCreate(BaseModel):
    """Body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1, max_length=MAX_URL_CHARS, pattern=URL_PATTERN)
    types: list[DeliveryType] = Field(min_length=1, max_length=len(DELIVERY_TYPES))
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)


class WebhookUpdate(BaseModel):
    """Body of ``PATCH /v1/webhooks/{id}``: any subset; a field sent as null is left as it is.
    ``status`` only active or disabled (a suspension is Fibric's; re-activating clears it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str | None = Field(
        default=None, min_length=1, max_length=MAX_URL_CHARS, pattern=URL_PATTERN
    )
    types: list[DeliveryType] | None = Field(
        default=None, min_length=1, max_length=len(DELIVERY_TYPES)
    )
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    status: Literal["active", "disabled"] | None = None


def _whole(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


class WebhookRotate(BaseModel):
    """Body of ``POST /v1/webhooks/{id}/rotate_secret``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # how long the previous secret keeps signing deliveries (0 = retire it now); a JSON number
    # with no fraction (651.0) is an integer, as JSON Schema says
    overlap_s: Annotated[int, BeforeValidator(_whole)] = Field(
        default=DEFAULT_ROTATION_OVERLAP_S, ge=0, le=MAX_ROTATION_OVERLAP_S
    )


class EmptyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Delivery(BaseModel):
    """One delivery as stored (``webhook_deliveries``, one row per version). ``body`` is the
    exact JSON sent, fixed at creation: every attempt and every resend sends the same bytes
    under the same ``id``; only the signature's timestamp changes."""

    id: str  # whd_…, derived from (endpoint, type, object): a replayed ledger row makes the same
    tenant_id: str
    livemode: bool
    endpoint_id: str
    type: str
    lane: str  # deliveries of one lane (endpoint + entity) go out one at a time, in order
    object_id: str
    occurred_at: datetime
    created_at: datetime
    version: int = 1
    status: DeliveryStatus = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    # retries stop this long after `window_start` (creation, or a manual retry)
    window_start: datetime
    last_status_code: int | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    body: str

    def order_key(self) -> tuple[datetime, int, str]:
        return (self.occurred_at, TYPE_RANK.get(self.type, 99), self.id)


class Attempt(BaseModel):
    """One HTTP attempt of a delivery (``webhook_attempts``, append-only)."""

    tenant_id: str
    livemode: bool
    endpoint_id: str
    delivery_id: str
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str


class AttemptObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None
    response_excerpt: str


class DeliveryObject(BaseModel):
    """``object: "webhook_delivery"``: the envelope that was sent plus its delivery state."""

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    livemode: bool
    type: str
    status: DeliveryStatus
    created_at: datetime
    attempt_count: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_retry_at: datetime | None
    attempts: list[AttemptObject]
    payload: dict[str, Any]  # the delivery envelope, as sent


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_hint(secret: str) -> str:
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def envelope(
    delivery_id: str,
    type_: str,
    occurred_at: datetime,
    livemode: bool,
    webhook_id: str,
    data: dict[str, Any] | Any,
) -> dict[str, Any]:
    """The delivery envelope (spec §2.13): exactly one current API object in ``data`` (a dict,
    or the object already serialised as an ``orjson.Fragment``)."""
    return {
        "id": delivery_id,
        "object": "webhook_delivery",
        "type": type_,
        "created_at": occurred_at.isoformat().replace("+00:00", "Z"),
        "livemode": livemode,
        "webhook_id": webhook_id,
        "data": data,
    }


def signature_header(secrets_: list[str], body: bytes, t: int) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``, one ``v1`` per valid secret
    (two during a rotation's overlap), as Stripe does."""
    signed = str(t).encode() + b"." + body
    parts = [f"t={t}"]
    for s in secrets_:
        parts.append("v1=" + hmac.new(s.encode(), signed, hashlib.sha256).hexdigest())
    return ",".join(parts)


def verify_signature(
    secret: str, body: bytes, header: str, now: float, tolerance_s: int = SIGNATURE_TOLERANCE_S
) -> bool:
    """What a receiver does (timing-safe; any ``v1`` may match; clock skew within tolerance)."""
    t, sigs = None, []
    for part in header.split(","):
        k, _, v = part.strip().partition("=")
        if k == "t" and v.isdigit():
            t = int(v)
        elif k == "v1":
            sigs.append(v)
    if t is None or abs(now - t) > tolerance_s:
        return False
    want = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(want, s) for s in sigs)


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1 = after the first failure): exponential, capped,
    with "equal jitter" (half fixed, half random) so a receiver coming back is not hit by every
    delivery at the same instant."""
    delay = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    r = (rng or random).random()
    return delay / 2 + r * delay / 2


def retry_deadline(window_start: datetime, window_s: float) -> datetime:
    return window_start + timedelta(seconds=window_s)
