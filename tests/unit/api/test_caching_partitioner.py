"""The api producer's partitioner answers exactly as aiokafka's default (murmur2), cached or not."""

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from api.broker import CachingPartitioner
from streams.kafka import partition_for


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=40),
    n=st.integers(1, 64),
    size=st.integers(1, 8),
)
def test_same_partition_as_the_default_partitioner_across_cache_evictions(keys, n, size):
    cached, default = CachingPartitioner(size=size), DefaultPartitioner()
    partitions = list(range(n))
    for key in keys + keys:  # the second pass answers from the cache (or after a clear)
        assert cached(key, partitions, partitions) == default(key, partitions, partitions)


def test_agrees_with_the_explicit_partition_of_a_text_key():
    cached = CachingPartitioner()
    partitions = list(range(8))
    assert cached(b"t_1|order-7", partitions, partitions) == partition_for("t_1|order-7", 8)


def test_a_keyless_record_goes_to_an_available_partition():
    assert CachingPartitioner()(None, [0, 1, 2], [2]) == 2
