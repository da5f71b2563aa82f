import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.globs import compile_glob, glob_problem, glob_to_regex, matches
from schemas.globs import MAX_GLOB_SEGMENTS, GlobError


@pytest.mark.parametrize(
    "pattern,event_type,expected",
    [
        ("order.*", "order.created", True),
        ("order.*", "order.refund.issued", False),
        ("order.**", "order.refund.issued", True),
        ("order.**", "order", False),
        ("*.created", "order.created", True),
        ("order.cre*", "order.created", True),
        ("order.cre*", "order.updated", False),
        ("order.*ed", "order.created", True),
        ("order.c*a*d", "order.created", True),
        ("order.c*x*d", "order.created", False),
        ("order.created", "order.created", True),
        ("order.created", "order.createdx", False),
        ("**", "a.b.c", True),
        ("**.c", "a.b.c", True),
        ("**.c", "c", False),
        ("a.**.b.**.c", "a.x.b.y.z.c", True),
        ("a.**.b.**.c", "a.b.c", False),
        ("**.**", "a", False),
        ("**.**", "a.b", True),
    ],
)
def test_matches(pattern, event_type, expected):
    assert matches(pattern, event_type) is expected
    # the regex handed to ClickHouse (RE2) means the same thing
    assert (re.match(glob_to_regex(pattern), event_type) is not None) is expected


@pytest.mark.parametrize(
    "pattern",
    ["", "a..b", ".a", "a.", "a+b.*", "a.**x", "a b", "x" * 201, ".".join(["a"] * 33)],
)
def test_invalid_patterns_are_refused_everywhere(pattern):
    assert glob_problem(pattern)
    with pytest.raises(GlobError):
        compile_glob(pattern)
    assert matches(pattern, "a.b") is False or "*" not in pattern


def test_hostile_pattern_is_linear():
    """The issue's repro: twelve ``**`` against a 57-character type took seconds with ``re``.
    Counted in NFA steps (not time): the state set never exceeds the pattern's width."""
    pattern = ".".join(["**"] * 12) + ".z"
    event_type = ".".join(["a"] * 28) + ".b"  # 57 characters, no match
    assert len(event_type) == 57
    assert matches(pattern, event_type) is False
    pattern = ".".join(["**"] * (MAX_GLOB_SEGMENTS - 1)) + ".z"
    assert matches(pattern, ".".join(["a"] * 99) + ".b") is False
    assert matches(pattern, ".".join(["a"] * 40) + ".z") is True


segment = st.sampled_from(["a", "b", "ab", "ba"])
token = st.sampled_from(["a", "b", "ab", "*", "**", "a*", "*b", "a*b"])


@given(st.lists(token, min_size=1, max_size=6), st.lists(segment, min_size=1, max_size=8))
def test_nfa_agrees_with_the_regex(tokens, segments):
    pattern, event_type = ".".join(tokens), ".".join(segments)
    expected = re.match(glob_to_regex(pattern), event_type) is not None
    assert matches(pattern, event_type) is expected
