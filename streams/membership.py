"""A restarted worker evicts the group membership its crashed predecessor left behind.

After ``kill -9`` the broker keeps the dead worker in the consumer group until its session times
out, and a rebalance cannot finish before then. Static membership (KIP-345) avoids the wait
but is unsafe here (decisions §19). Instead each worker writes its member id to its home while it
runs; a worker starting under the same id reads it and sends ``LeaveGroup`` for that member
first, so the broker drops the dead member at once and the rebalance the new worker triggers
completes as soon as the live members rejoin. A stale or unknown id is harmless: the broker
answers ``UNKNOWN_MEMBER_ID`` and nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.protocol.group import LeaveGroupRequest

log = logging.getLogger(__name__)


def member_file(worker_home: Path) -> Path:
    return worker_home / "group-member-id"


def record_member_id(worker_home: Path, member_id: str) -> None:
    """Remember the current member id (the caller writes only when it changed)."""
    path = member_file(worker_home)
    with contextlib.suppress(OSError):
        if member_id:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(member_id)
            tmp.replace(path)


async def evict_predecessor(bootstrap: str, group: str, worker_home: Path) -> str | None:
    """Send LeaveGroup for the member id a previous run of this worker left; returns it when
    the broker removed it (None when there was nothing to evict or it was already gone)."""
    path = member_file(worker_home)
    try:
        old = path.read_text().strip()
    except OSError:
        return None
    if not old:
        return None
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        node = await client.coordinator_lookup(CoordinationType.GROUP, group)
        resp = await client.send(node, LeaveGroupRequest(group, old))
        ok = resp.error_code == 0
        log.info(
            "evicted the previous member %s of group %s" if ok else "no previous member %s of %s",
            old,
            group,
        )
        return old if ok else None
    except Exception:  # noqa: BLE001 - best effort: the session timeout still applies
        log.warning("could not evict the previous member %s of %s", old, group, exc_info=True)
        return None
    finally:
        await client.close()
        with contextlib.suppress(OSError):
            path.unlink()
