"""What the live streams send (``/v1/events/stream``, ``/v1/events/ws``, ``/v1/receipts/stream``,
``/v1/plans/{id}/stream``; api/controllers/streams.py, decisions §33), as pydantic models: the
OpenAPI document describes the frames' ``data`` with them and the e2e tests validate frames
against them. The objects inside are the documented ones (Event, and PlanObject, ActionObject,
ReceiptObject from ``schemas/plan.py``) plus the frame's ``cursor``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import Event
from schemas.plan import ActionObject, PlanObject, ReceiptObject

# SSE ``event:`` names. ``envelope`` is the spec's (§3.3); the loop stream names a frame by the
# ``object`` it carries.
ENVELOPE = "envelope"
ERROR = "error"
LOOP_FRAME_TYPES = ("execution_plan", "action", "receipt")


class StreamedEvent(Event):
    """An ``event`` object as a stream frame carries it: the event plus the frame's ``cursor``
    (``cur_…``), from which the stream resumes exactly after this frame (spec §2.2, §3.3). The
    same cursor pages ``GET /v1/events`` from this event on (older ones)."""

    model_config = ConfigDict(extra="forbid")

    cursor: str = Field(pattern=r"^cur_[A-Za-z0-9_-]+$")


class StreamedPlan(PlanObject):
    """An ``execution_plan`` frame: the plan as of this change, plus the frame's ``cursor``."""

    cursor: str


class StreamedAction(ActionObject):
    """An ``action`` frame: the planned action (its dispositions arrive as ``receipt`` frames)."""

    cursor: str


class StreamedReceipt(ReceiptObject):
    """A ``receipt`` frame: a disposition, the moment it is in the ledger."""

    cursor: str


class WsFrame(BaseModel):
    """One WebSocket text message on ``/v1/events/ws``: the SSE frame's three parts as JSON
    (``type`` is the SSE ``event:``; ``keep-alive`` messages carry neither id nor data)."""

    type: Literal["envelope", "keep-alive", "error"]
    id: str | None = None
    data: StreamedEvent | None = None
    error: dict | None = None
