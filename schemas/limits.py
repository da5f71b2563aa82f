"""Every input limit of an event envelope, and the one check both edges run.

``POST /v1/events`` (api) and ``ingest_events`` (Kafka, through :func:`agents.ingest.admit`)
enforce the same limits with the same function, :func:`check_payload`, so an event the api
accepts is one the worker admits, and an admitted event is one every later step can serialise
(``orjson.dumps``, ``model_dump_json``, the ClickHouse insert of the payload as JSON text).
README.md's "Limits" table documents these values; a unit test keeps it equal to this module.

Pure: no I/O, no framework import. The walk is iterative (never recursive), so no input can
exhaust the Python stack, and it stops after :data:`MAX_REPORTED_PROBLEMS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

# Event payloads are business documents; 512 KiB serialized is generous and keeps every Kafka
# record (envelope + metadata) under the default 1 MiB message size of Apache Kafka.
MAX_PAYLOAD_BYTES = 512 * 1024
# Nesting levels of the payload (the payload object itself is level 1). orjson refuses to
# serialise beyond 254 levels and pydantic beyond ~254, and the worker wraps the payload in up to
# three more objects (event, offer, ledger record); 32 leaves that headroom many times over and is
# deeper than any business document we have seen.
MAX_PAYLOAD_DEPTH = 32
# Characters in one string (object key or value) inside the payload: a field, not a file. Larger
# blobs belong in object storage with a link in the event; it also keeps one value from filling a
# model prompt when the payload is offered to a model.
MAX_STRING_CHARS = 64 * 1024
# Elements of one array or keys of one object inside the payload. Playbook conditions and the
# ledger's JSON reads scan containers; 10,000 line items is more than any order we model.
MAX_CONTAINER_ITEMS = 10_000
# Integers are kept exactly only within signed 64 bits: orjson turns a wider literal into a float
# (silently losing digits) and ClickHouse reads JSON integers as Int64. Wider ones are refused;
# send them as strings.
MIN_PAYLOAD_INT = -(2**63)
MAX_PAYLOAD_INT = 2**63 - 1
# Envelope string fields (source, event_type, correlation_id, workspace_id, entity_key, …): ids
# and names, never documents.
MAX_FIELD_CHARS = 200
# tenant_id / reseller_id: ours are 28 characters ("t_" + 26); 64 leaves room for other schemes.
MAX_TENANT_ID_CHARS = 64
# idempotency_key (and the HTTP Idempotency-Key header): the common industry bound.
MAX_IDEMPOTENCY_KEY_CHARS = 255
# received_at: ids embed unsigned milliseconds since the Unix epoch, and ClickHouse's
# DateTime64 columns end at 2299-12-31; outside this range an event could not be stored as sent.
MIN_RECEIVED_AT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_RECEIVED_AT = datetime(2299, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
# A refusal names this many problems at most: enough to fix several at once, and it keeps a
# dead-letter record (and the walk over a hostile document) small.
MAX_REPORTED_PROBLEMS = 16

# orjson decodes an integer literal wider than 64 bits to a float; any such float has a magnitude
# of at least 2**63, which is how the walk notices one may have been an integer literal.
_WIDE = float(2**63)
# A text this short cannot hold a string over MAX_STRING_CHARS (a character takes at least one
# byte) or a container over MAX_CONTAINER_ITEMS (an item takes at least two: value and comma).
_SHORT_TEXT_BYTES = min(MAX_STRING_CHARS, 2 * MAX_CONTAINER_ITEMS)


@dataclass(frozen=True, slots=True)
class LimitProblem:
    """One limit an input breaks. ``reason`` is the dead-letter reason on Kafka."""

    loc: str  # dotted path, e.g. "payload.lines.3.sku"
    limit: str  # the constant's name, e.g. "MAX_PAYLOAD_DEPTH"
    message: str

    @property
    def reason(self) -> Literal["payload_too_large", "invalid_envelope"]:
        return "payload_too_large" if self.limit == "MAX_PAYLOAD_BYTES" else "invalid_envelope"


def _loc(path: tuple[Any, ...] | None, key: object = None) -> str:
    """Render a linked path ``(parent, key)`` built during the walk, keys shortened."""
    parts: list[str] = [] if key is None else [str(key)[:40]]
    while path is not None:
        path, k = path
        parts.append(str(k)[:40])
    return ".".join(reversed(parts))


def check_payload(payload: Any, raw: bytes) -> list[LimitProblem]:
    """The limit problems of ``payload`` (empty when it is fine).

    ``raw`` is the JSON text the payload was decoded from (the whole envelope or request body,
    decoded by orjson); it only bounds work: a short text cannot break most limits, and an
    integer literal is told from a float by reading it again.
    """
    if len(raw) <= _SHORT_TEXT_BYTES and _short_text_is_clean(payload):
        return []
    problems: list[LimitProblem] = []
    maybe_wide_literal = False
    deep = False
    # stack of (container, depth, path) with path a linked (parent_path, key) tuple
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(payload, 1, (None, "payload"))]
    while stack and len(problems) < MAX_REPORTED_PROBLEMS:
        node, depth, path = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            deep = True
            problems.append(
                LimitProblem(
                    _loc(path),
                    "MAX_PAYLOAD_DEPTH",
                    f"payload nests deeper than {MAX_PAYLOAD_DEPTH} levels",
                )
            )
            continue
        if len(node) > MAX_CONTAINER_ITEMS:
            problems.append(
                LimitProblem(
                    _loc(path),
                    "MAX_CONTAINER_ITEMS",
                    f"{len(node)} items; at most {MAX_CONTAINER_ITEMS} per array or object",
                )
            )
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                problems.append(
                    LimitProblem(
                        _loc(path, key),
                        "MAX_STRING_CHARS",
                        f"a key of {len(key)} characters; at most {MAX_STRING_CHARS}",
                    )
                )
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1, (path, key)))
            elif kind is str:
                if len(value) > MAX_STRING_CHARS:
                    problems.append(
                        LimitProblem(
                            _loc(path, key),
                            "MAX_STRING_CHARS",
                            f"a string of {len(value)} characters; at most {MAX_STRING_CHARS}",
                        )
                    )
            elif kind is int:
                if not MIN_PAYLOAD_INT <= value <= MAX_PAYLOAD_INT:
                    problems.append(_int_problem(_loc(path, key)))
            elif kind is float:
                if abs(value) >= _WIDE:
                    maybe_wide_literal = True
    if deep or stack:
        # some of the payload was not walked (or is too deep): it may not serialise, so stop
        return problems[:MAX_REPORTED_PROBLEMS]
    if len(raw) > MAX_PAYLOAD_BYTES:
        # Only a text larger than the limit can hold a payload over it. Serialising is safe now:
        # depth is bounded and orjson decoded every integer within its own 64-bit range. Size
        # comes first: it is the problem to fix before any other.
        size = len(orjson.dumps(payload))
        if size > MAX_PAYLOAD_BYTES:
            return [
                LimitProblem(
                    "payload",
                    "MAX_PAYLOAD_BYTES",
                    f"payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                )
            ]
    if not problems and maybe_wide_literal and _has_wide_int_literal(raw):
        problems.append(_int_problem("payload"))
    return problems[:MAX_REPORTED_PROBLEMS]


def _short_text_is_clean(payload: dict[str, Any]) -> bool:
    """The fast path for typical envelopes (~1.5 µs for a 360-byte one): in a short text only
    depth and numbers can break a limit, so walk values alone, without building paths. False
    means "maybe not": the full walk then finds and names the problems."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return False
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is dict or kind is list:
                push((value, depth + 1))
            elif kind is int:
                if not MIN_PAYLOAD_INT <= value <= MAX_PAYLOAD_INT:
                    return False
            elif kind is float and not -_WIDE < value < _WIDE:
                return False
    return True


def _int_problem(loc: str) -> LimitProblem:
    return LimitProblem(
        loc,
        "MAX_PAYLOAD_INT",
        f"an integer outside the signed 64-bit range ({MIN_PAYLOAD_INT} to {MAX_PAYLOAD_INT}); "
        "send it as a string",
    )


def _has_wide_int_literal(raw: bytes) -> bool:
    """Whether ``raw`` holds an integer literal outside the signed 64-bit range.

    Called only when the walk met a float of magnitude ≥ 2**63 in a payload of bounded depth
    (so the stdlib decoder's recursion is bounded too); it keeps integer literals exact.
    """
    found = False

    def parse_int(text: str) -> int:
        nonlocal found
        digits = text.lstrip("-")
        # more than 19 digits is out of range whatever they are (and int() of thousands of
        # digits is slow or refused by Python's int_max_str_digits)
        if len(digits) > 19 or not MIN_PAYLOAD_INT <= int(text) <= MAX_PAYLOAD_INT:
            found = True
        return 0

    json.loads(raw, parse_int=parse_int)
    return found
