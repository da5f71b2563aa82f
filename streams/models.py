"""The model router: resolves an operator's ``model`` to a provider and asks it for a plan.

* ``rules`` — the embedded deterministic playbook model (agents/rules_model.py), run inline.
* ``openai:<name>`` — any OpenAI-compatible chat-completions endpoint
  (``FIBRIC_OPENAI_BASE_URL``, ``FIBRIC_OPENAI_API_KEY``), asked for JSON matching the
  ExecutionPlan schema. The prompt carries the operator's outcome, the event (payload verbatim as
  JSON) and the operator's capabilities with their MCP tool input schemas.
``router:default`` resolves to ``FIBRIC_DEFAULT_MODEL`` (default ``rules``).
Whatever a model returns is only a proposal: it must validate as an ExecutionPlan, and the
executor still judges every action.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from agents.planning import bind_connector
from schemas.connector import Connector
from schemas.envelope import Event
from schemas.operator import Operator
from schemas.plan import ExecutionPlan
from schemas.settings import Settings

log = logging.getLogger(__name__)

# A model call is slow I/O; 30 s covers large local models, 3 attempts ride out a restart.
MODEL_TIMEOUT_S = 30.0
MODEL_ATTEMPTS = 3
MODEL_BACKOFF_S = (0.5, 2.0)
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}

SYSTEM_PROMPT = (
    "You are a Fibric operator. You never act yourself: you propose an execution plan that a "
    "deterministic executor will vet against policy. Reply with ONE JSON object matching the "
    'ExecutionPlan schema: {"reasoning": string, "actions": [{"tool", "args", "value", '
    '"entity_key", "idempotency_key", "connector"?}]}. Use only the tools listed. Give every '
    "action a stable idempotency_key derived from the event (the same situation must produce the "
    "same key) and an entity_key naming the object it changes (e.g. order:SO-10884). Propose no "
    "actions when nothing needs doing."
)


class ModelRouter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    def resolve(self, op: Operator) -> str:
        model = op.model or "router:default"
        return self.settings.default_model if model == "router:default" else model

    def provider_of(self, op: Operator) -> str:
        return self.resolve(op).split(":", 1)[0]

    async def reason(
        self,
        op: Operator,
        event: Event,
        connectors: Sequence[Connector],
        describe_tools: Callable[[str], Awaitable[list[Any]]],
    ) -> tuple[ExecutionPlan | None, str | None]:
        model = self.resolve(op)
        provider, _, name = model.partition(":")
        if provider != "openai" or not name:
            return None, f"model {model!r} is not a known provider (rules, openai:<name>)"
        if not self.settings.openai_base_url:
            return None, "FIBRIC_OPENAI_BASE_URL is not set; the openai provider is unavailable"
        tools = await _tool_catalogue(op, connectors, describe_tools)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(op, event, tools)},
        ]
        body = {
            "model": name,
            "messages": messages,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "ExecutionPlan",
                    "schema": ExecutionPlan.model_json_schema(),
                },
            },
        }
        try:
            reply = await self._post(body)
        except ModelError as exc:
            return None, str(exc)
        try:
            content = reply["choices"][0]["message"]["content"]
            return ExecutionPlan.model_validate_json(content), None
        except (KeyError, IndexError, TypeError):
            return None, "the model reply has no message content"
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return None, f"the model reply is not a valid ExecutionPlan ({where}: {first['msg']})"

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            headers = {"Content-Type": "application/json"}
            if self.settings.openai_api_key:
                headers["Authorization"] = f"Bearer {self.settings.openai_api_key}"
            self._client = httpx.AsyncClient(
                base_url=self.settings.openai_base_url.rstrip("/"),
                headers=headers,
                timeout=MODEL_TIMEOUT_S,
            )
        last = "no attempt"
        for attempt in range(MODEL_ATTEMPTS):
            try:
                r = await self._client.post("/chat/completions", content=orjson.dumps(body))
                if r.status_code == 200:
                    return r.json()
                last = f"model endpoint answered {r.status_code}"
                if r.status_code not in RETRYABLE_STATUS:
                    break
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"model endpoint unreachable: {type(exc).__name__}"
            except ValueError:
                last = "model endpoint answered with invalid JSON"
                break
            if attempt < MODEL_ATTEMPTS - 1:
                await asyncio.sleep(MODEL_BACKOFF_S[min(attempt, len(MODEL_BACKOFF_S) - 1)])
        raise ModelError(last)


class ModelError(Exception):
    pass


async def _tool_catalogue(
    op: Operator,
    connectors: Sequence[Connector],
    describe_tools: Callable[[str], Awaitable[list[Any]]],
) -> list[dict[str, Any]]:
    out = []
    schemas: dict[str, dict[str, Any]] = {}
    for cap in op.capabilities:
        cn = bind_connector(connectors, cap, None)
        if cn is None:
            continue
        if cn.id not in schemas:
            schemas[cn.id] = {t.name: t for t in await describe_tools(cn.id)}
        info = schemas[cn.id].get(cap)
        tool = next(t for t in cn.tools if t.name == cap)
        out.append(
            {
                "tool": cap,
                "connector": cn.name,
                "side_effect": tool.side_effect,
                "input_schema": getattr(info, "input_schema", None) or {},
            }
        )
    return out


def user_prompt(op: Operator, event: Event, tools: list[dict[str, Any]]) -> str:
    return (
        f"Outcome you are accountable for:\n{op.outcome}\n\n"
        f"Event (type {event.event_type}, id {event.id}, source {event.source}, "
        f"correlation {event.correlation_id}, entity {event.entity_key}). Payload:\n"
        f"{orjson.dumps(event.payload).decode()}\n\n"
        f"Tools you may propose (MCP input schemas):\n{orjson.dumps(tools).decode()}\n"
    )
