"""schemas/limits.py: the one payload check both edges run, and the README table documenting it."""

import re
from datetime import datetime
from pathlib import Path

import orjson

from api.idempotency import MAX_KEY_LEN
from schemas import limits
from schemas.limits import (
    MAX_CONTAINER_ITEMS,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    MAX_PAYLOAD_INT,
    MAX_REPORTED_PROBLEMS,
    MAX_STRING_CHARS,
    MIN_PAYLOAD_INT,
    check_payload,
)
from schemas.settings import DEFAULT_MAX_BODY_BYTES

README = Path(__file__).resolve().parents[3] / "README.md"


def check(payload_json: str):
    """check_payload as an edge calls it: the payload decoded by orjson from the whole text."""
    raw = b'{"source":"s","event_type":"a.b","payload":' + payload_json.encode() + b"}"
    return check_payload(orjson.loads(raw)["payload"], raw)


def nested(levels: int, inner: str = "1") -> str:
    """A payload of ``levels`` nested objects (the payload object is level 1)."""
    return '{"a":' * levels + inner + "}" * levels


def test_typical_payload_has_no_problems():
    assert check('{"order_id":"SO-1","total":"129.90","lines":[{"sku":"A","qty":2}]}') == []


def test_depth_at_the_limit_passes_and_one_more_level_is_refused():
    # nested(n) with "{}" inside is n + 1 levels
    assert check(nested(MAX_PAYLOAD_DEPTH - 1, "{}")) == []
    (problem,) = check(nested(MAX_PAYLOAD_DEPTH, "{}"))
    assert problem.limit == "MAX_PAYLOAD_DEPTH" and problem.reason == "invalid_envelope"
    assert problem.loc == "payload" + ".a" * MAX_PAYLOAD_DEPTH


def test_the_issue_repro_300_levels_is_one_problem_not_a_crash():
    (problem,) = check(nested(300))
    assert problem.limit == "MAX_PAYLOAD_DEPTH"


def test_nesting_past_any_recursion_limit_is_walked_iteratively():
    # orjson decodes up to ~1024 levels; the walk must not recurse on any of them
    (problem,) = check("[" * 1000 + "]" * 1000)
    assert problem.limit == "MAX_PAYLOAD_DEPTH"


def test_integers_are_kept_only_within_signed_64_bits():
    assert check(f'{{"x":{MAX_PAYLOAD_INT},"y":{MIN_PAYLOAD_INT}}}') == []
    # orjson keeps these as ints; ClickHouse's Int64 does not
    (problem,) = check(f'{{"x":{MAX_PAYLOAD_INT + 1}}}')
    assert problem.limit == "MAX_PAYLOAD_INT" and problem.loc == "payload.x"
    # orjson would silently turn these into floats
    for wide in (str(2**64), str(MIN_PAYLOAD_INT - 1), str(10**30), "9" * 300):
        (problem,) = check(f'{{"x":[{wide}]}}')
        assert problem.limit == "MAX_PAYLOAD_INT", wide


def test_large_float_literals_and_numeric_strings_are_not_integers():
    assert check('{"x":1e19,"y":-3.5e300,"z":"123456789012345678901234567890"}') == []


def test_long_strings_and_keys_are_refused_with_their_path():
    ok = "x" * MAX_STRING_CHARS
    assert check(orjson.dumps({"a": ok}).decode()) == []
    (problem,) = check(orjson.dumps({"a": [ok + "x"]}).decode())
    assert (problem.limit, problem.loc) == ("MAX_STRING_CHARS", "payload.a.0")
    (problem,) = check(orjson.dumps({"k" * (MAX_STRING_CHARS + 1): 1}).decode())
    assert problem.limit == "MAX_STRING_CHARS"


def test_containers_over_the_item_limit_are_refused():
    assert check(orjson.dumps({"a": [0] * MAX_CONTAINER_ITEMS}).decode()) == []
    (problem,) = check(orjson.dumps({"a": [0] * (MAX_CONTAINER_ITEMS + 1)}).decode())
    assert (problem.limit, problem.loc) == ("MAX_CONTAINER_ITEMS", "payload.a")
    wide = {f"k{i}": i for i in range(MAX_CONTAINER_ITEMS + 1)}
    (problem,) = check(orjson.dumps(wide).decode())
    assert (problem.limit, problem.loc) == ("MAX_CONTAINER_ITEMS", "payload")


def test_payload_size_is_measured_as_json_and_named_first():
    field = "x" * 60_000  # under the string limit
    assert check(orjson.dumps({f"k{i}": field for i in range(8)}).decode()) == []  # ~480 KB
    (problem,) = check(orjson.dumps({f"k{i}": field for i in range(9)}).decode())  # ~540 KB
    assert problem.limit == "MAX_PAYLOAD_BYTES" and problem.reason == "payload_too_large"
    # over the size limit and (as a consequence) over the string limit: size is the one to fix
    (problem,) = check(orjson.dumps({"a": "x" * (MAX_PAYLOAD_BYTES + 1)}).decode())
    assert problem.limit == "MAX_PAYLOAD_BYTES"


def test_many_problems_are_capped():
    many = orjson.dumps({f"k{i}": 2**63 for i in range(100)}).decode()
    assert len(check(many)) == MAX_REPORTED_PROBLEMS


def test_check_is_deterministic():
    doc = orjson.dumps({"a": [2**63] * 3, "b": "x" * (MAX_STRING_CHARS + 1)}).decode()
    assert check(doc) == check(doc)


# --- docs that run: README's "Limits" table -------------------------------------------------


def _limits_table() -> list[list[str]]:
    text = README.read_text()
    section = text.split("### Limits (the same at both edges)", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def _documented(value: object) -> str:
    return value.date().isoformat() if isinstance(value, datetime) else str(value)


def test_readme_limits_table_matches_the_constants():
    constants = {
        name: value
        for name, value in vars(limits).items()
        if re.fullmatch(r"(MAX|MIN)_[A-Z_]+", name) and name != "MAX_REPORTED_PROBLEMS"
    }
    constants["FIBRIC_MAX_BODY_BYTES"] = DEFAULT_MAX_BODY_BYTES
    seen: set[str] = set()
    for limit, value, http, kafka in _limits_table():
        names = [n for n in re.findall(r"`([A-Z_]+)`", limit) if n in constants]
        values = re.findall(r"`([^`]+)`", value)
        assert len(names) == len(values), (limit, value)
        for name, documented in zip(names, values, strict=True):
            assert documented == _documented(constants[name]), name
            seen.add(name)
        assert http and kafka
    assert seen == set(constants), f"undocumented limits: {set(constants) - seen}"
    assert f"up to {MAX_REPORTED_PROBLEMS} problems (`MAX_REPORTED_PROBLEMS`)" in README.read_text()


def test_idempotency_header_limit_is_the_envelope_limit():
    assert MAX_KEY_LEN == limits.MAX_IDEMPOTENCY_KEY_CHARS
