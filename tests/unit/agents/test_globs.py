import re

import pytest

from agents.globs import glob_to_regex, matches


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
        ("order.created", "order.created", True),
        ("order.created", "order.createdx", False),
        ("a+b.*", "a+b.c", True),  # regex metacharacters are literal
        ("a+b.*", "aab.c", False),
    ],
)
def test_matches(pattern, event_type, expected):
    assert matches(pattern, event_type) is expected
    # the regex handed to ClickHouse means the same thing
    assert (re.match(glob_to_regex(pattern), event_type) is not None) is expected
