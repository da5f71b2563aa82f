"""The README's producer examples (aiokafka and confluent-kafka) run as written against the
embedded broker of a real `fibric up`, and the events they publish are stored and readable
(issue 13 item 5). Both clients put one key on one partition (librdkafka's murmur2_random is the
partitioner aiokafka and Fibric use), so an entity's events keep their order whichever client
sent them."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Producer

from streams.topics import EVENTS
from tests.conftest import client, new_tenant
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example(marker: str):
    block = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", README.read_text(), flags=re.S)
    assert block, f"the README's {marker} example is missing"
    ns: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), ns)  # noqa: S102 - our own README
    return ns["publish"]


def envelopes(tenant_id: str, source: str, n: int) -> list[dict]:
    run = uuid.uuid4().hex[:6]
    return [
        {
            "tenant_id": tenant_id,
            "livemode": False,
            "source": source,
            "event_type": "order.created",
            "entity_key": f"SO-{run}-{i}",
            "idempotency_key": f"{source}:{run}:{i}",
            "payload": {"order_id": f"SO-{run}-{i}", "client": source},
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tenant(stack):
    return new_tenant(stack, f"prod-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize(
    ("marker", "is_async"), [("producer-aiokafka", True), ("producer-confluent", False)]
)
def test_readme_producer_example_publishes_stored_events(stack, tenant, marker, is_async) -> None:
    publish = readme_example(marker)
    source = marker.removeprefix("producer-")
    envs = envelopes(tenant.id, source, 5)
    if is_async:
        asyncio.run(publish(stack.bootstrap, envs))
    else:
        publish(stack.bootstrap, envs)
    c = client(stack, tenant.keys["read_only"])

    def stored() -> list[dict] | None:
        page = c.get("/v1/events", params={"limit": 100}).json()["data"]
        mine = [e for e in page if e["source"] == source]
        return mine if len(mine) == len(envs) else None

    got = wait_for(stored, timeout=60, interval=0.5)
    assert {e["entity_key"] for e in got} == {e["entity_key"] for e in envs}
    assert {e["idempotency_key"] for e in got} == {e["idempotency_key"] for e in envs}


def test_both_clients_put_a_key_on_the_same_partition(stack, tenant) -> None:
    """librdkafka with murmur2_random picks the partition aiokafka's default partitioner (and so
    Fibric's own producer, for HTTP events) picks for the same key."""
    envs = envelopes(tenant.id, "partitions", 24)
    got: dict[str, int] = {}
    p = Producer(
        {"bootstrap.servers": stack.bootstrap, "acks": "all", "partitioner": "murmur2_random"}
    )
    for env in envs:
        p.produce(
            EVENTS,
            json.dumps(env).encode(),
            key=f"{env['tenant_id']}:{env['entity_key']}",
            on_delivery=lambda err, msg: err is None
            and got.__setitem__(msg.key().decode(), msg.partition()),
        )
    assert p.flush(30) == 0
    n = int(stack.env["FIBRIC_PARTITIONS"])
    everything = list(range(n))
    expected = {
        key: DefaultPartitioner()(key.encode(), everything, everything) for key in got
    }
    assert len(got) == len(envs) and got == expected
    assert len(set(got.values())) > 1  # spread over partitions, not all on one
