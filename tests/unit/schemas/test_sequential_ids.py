"""``sequential_id``: the hot paths' ids (per-process random prefix + counter, decisions §46)."""

import multiprocessing
import re
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import ids
from schemas.ids import _Sequence, id_time, sequential_id

ID_RE = re.compile(r"^ev_[0-9A-HJKMNP-TV-Z]{26}$")  # Crockford base32, as new_id's


@settings(max_examples=50, deadline=None)
@given(ms=st.integers(0, 253_402_300_799_999), n=st.integers(1, 3000))  # to 9999-12-31
def test_ids_are_unique_well_formed_and_increasing_within_a_millisecond(ms, n):
    made = [sequential_id("ev", ms) for _ in range(n)]
    assert len(set(made)) == n
    assert made == sorted(made)
    assert all(ID_RE.match(i) for i in made)
    assert {id_time(i) for i in made} == {datetime.fromtimestamp(ms / 1000, tz=UTC)}


def test_the_counter_carries_into_the_cached_high_characters():
    seq = _Sequence()
    made = [seq.next() for _ in range(5000)]  # crosses the 1,024-id boundary several times
    assert len(set(made)) == 5000 and made == sorted(made)
    assert {m[:8] for m in made} == {seq.prefix}


def test_a_new_process_or_an_exhausted_counter_draws_a_new_prefix():
    seq = _Sequence()
    first = seq.prefix
    seq.counter = iter([1 << 40, 0, 1])  # type: ignore[assignment]  # the 2^40th id
    nxt = seq.next()
    assert seq.prefix != first and nxt[:8] == seq.prefix


def _child_id(queue: "multiprocessing.Queue[str]") -> None:
    queue.put(sequential_id("ev", 1))


def test_a_forked_child_does_not_repeat_its_parents_ids():
    parent = [sequential_id("ev", 1) for _ in range(3)]
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    proc = ctx.Process(target=_child_id, args=(queue,))
    proc.start()
    child = queue.get(timeout=30)
    proc.join(30)
    # same time part, same position in the counter would collide without the reseed at fork
    assert child not in parent
    assert child[13:21] != ids._SEQUENCE.prefix
