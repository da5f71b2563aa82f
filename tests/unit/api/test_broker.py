"""Broker waits a request depends on are bounded and reported as 503 with Retry-After."""

import asyncio

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from api.broker import BoundedProducer, BrokerUnavailable, bounded
from api.errors import RETRY_AFTER_S, error_response, to_error

# Stand-in bound: the stalled fakes never answer, so any finite value shows the bound holds.
SHORT_S = 0.05


class StalledProducer:
    """An AIOKafkaProducer whose broker accepted the connection and then went silent."""

    def __init__(self) -> None:
        self.client = "passed through"

    async def send_and_wait(self, *args, **kwargs):
        await asyncio.Event().wait()

    async def send(self, *args, **kwargs):
        return asyncio.get_running_loop().create_future()  # never acknowledged


class FailingProducer:
    async def send_and_wait(self, *args, **kwargs):
        raise KafkaConnectionError("connection refused")


async def test_a_stalled_send_and_wait_gives_up():
    with pytest.raises(BrokerUnavailable):
        await BoundedProducer(StalledProducer(), SHORT_S).send_and_wait("t", b"v")


async def test_an_unacknowledged_send_gives_up_on_its_delivery():
    delivery = await BoundedProducer(StalledProducer(), SHORT_S).send("t", b"v")
    with pytest.raises(BrokerUnavailable):
        await delivery


async def test_kafka_errors_are_broker_unavailable_and_other_attributes_pass_through():
    with pytest.raises(BrokerUnavailable):
        await BoundedProducer(FailingProducer(), SHORT_S).send_and_wait("t", b"v")
    assert BoundedProducer(StalledProducer()).client == "passed through"
    with pytest.raises(BrokerUnavailable):
        await bounded(asyncio.sleep(3600), SHORT_S)
    assert await bounded(asyncio.sleep(0, "ok"), SHORT_S) == "ok"


@pytest.mark.parametrize(
    "exc", [BrokerUnavailable("stalled"), KafkaTimeoutError(), KafkaConnectionError("down")]
)
def test_broker_failures_map_to_503_with_retry_after(exc):
    resp = error_response(to_error(exc), "req_1")
    body = orjson.loads(resp.content)["error"]
    assert resp.status_code == 503 and resp.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert (body["code"], body["type"]) == ("service_unavailable", "api_error")
