"""A worker restarted after ``kill -9`` evicts the group member its predecessor left behind, so
the group does not wait out the dead member's session (streams/membership.py). Checked against a
real broker: the dead member is listed by the group until the eviction, and gone after it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.kafka import Broker, create_topics
from streams.membership import evict_predecessor, member_file

pytestmark = [pytest.mark.integration]

GROUP = "g-evict"

MEMBER = """
import asyncio, sys
from pathlib import Path
from aiokafka import AIOKafkaConsumer
from streams.membership import record_member_id

async def main():
    c = AIOKafkaConsumer("t-evict", bootstrap_servers=sys.argv[1], group_id=sys.argv[2],
                         session_timeout_ms=30000, heartbeat_interval_ms=2000)
    await c.start()
    while not c.assignment():
        await asyncio.sleep(0.05)
    record_member_id(Path(sys.argv[3]), c._coordinator.member_id)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _members(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_consumer_groups([GROUP])
        group = resp.to_object()["groups"][0]
        return [m["member_id"] for m in group["members"]]
    finally:
        await admin.close()


@pytest.mark.timeout(120)
def test_a_restarted_worker_evicts_its_dead_predecessor(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    home = tmp_path / "worker-home"
    try:
        asyncio.run(create_topics(broker.bootstrap, ["t-evict"], 2))
        proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER, broker.bootstrap, GROUP, str(home)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not member_file(home).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the member never joined"
            time.sleep(0.1)
        dead = member_file(home).read_text()
        proc.kill()  # no LeaveGroup: its 30 s session keeps it in the group
        proc.wait()
        assert asyncio.run(_members(broker.bootstrap)) == [dead]

        assert asyncio.run(evict_predecessor(broker.bootstrap, GROUP, home)) == dead
        assert asyncio.run(_members(broker.bootstrap)) == []
        assert not member_file(home).exists()
        # nothing recorded: nothing to do
        assert asyncio.run(evict_predecessor(broker.bootstrap, GROUP, home)) is None
    finally:
        broker.stop()
