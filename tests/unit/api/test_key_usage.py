"""last_used_at's request-side bound (api/key_usage.py): a fresh key costs no send, a stale one
one fire-and-forget ``key.touch`` per window per process, a failed send is retried later, and
nothing but the key id is sent."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import orjson

from api.key_usage import KeyUsage
from schemas.config import LAST_USED_RESOLUTION_S, ApiKey, hash_secret
from streams.topics import COMMANDS

SECRET = "sk_test_unit-secret-never-sent-abcd"


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    async def send(self, topic: str, value: bytes, key: bytes):
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((topic, value, key))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def state(producer: Producer) -> SimpleNamespace:
    return SimpleNamespace(producer=producer, commands=SimpleNamespace(instance="api-1"))


def key(last_used_at: datetime | None = None) -> ApiKey:
    return ApiKey(
        id="key_1",
        tenant_id="t_1",
        mode="live",
        scopes=["events:read"],
        hint="sk_test_…abcd",
        secret_hash=hash_secret(SECRET),
        last_used_at=last_used_at,
        created_at=datetime(2026, 7, 1, tzinfo=UTC),
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_never_used_key_sends_one_touch_per_window():
    p, usage = Producer(), KeyUsage()
    for _ in range(100):
        usage.note(state(p), key())  # type: ignore[arg-type]
    await settle()
    assert len(p.sent) == 1
    topic, value, partition_key = p.sent[0]
    cmd = orjson.loads(value)
    assert topic == COMMANDS and partition_key == b"t_1"
    assert cmd["type"] == "key.touch" and cmd["actor"] == "key_1" and cmd["livemode"] is True
    assert cmd["args"]["key_id"] == "key_1" and cmd["reply_to"] == "api-1"
    assert SECRET.encode() not in value and hash_secret(SECRET).encode() not in value


async def test_a_recently_used_key_costs_nothing():
    p, usage = Producer(), KeyUsage()
    recent = datetime.now(UTC) - timedelta(seconds=LAST_USED_RESOLUTION_S / 2)
    usage.note(state(p), key(recent))  # type: ignore[arg-type]
    await settle()
    assert p.sent == []
    stale = datetime.now(UTC) - timedelta(seconds=LAST_USED_RESOLUTION_S + 1)
    usage.note(state(p), key(stale))  # type: ignore[arg-type]
    await settle()
    assert len(p.sent) == 1


async def test_a_failed_touch_is_retried_by_a_later_request():
    usage = KeyUsage()
    usage.note(state(Producer(fail=True)), key())  # type: ignore[arg-type]
    await settle()
    p = Producer()
    usage.note(state(p), key())  # type: ignore[arg-type]
    await settle()
    assert len(p.sent) == 1
