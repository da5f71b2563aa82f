"""Connector health transitions (agents/connector_health.py): connected ⇄ degraded ⇄ error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.connector_health import ERROR_AFTER, Probe, next_status, record

T0 = datetime(2026, 7, 2, 15, 0, tzinfo=UTC)


def probe(ok: bool, code: str | None = None, i: int = 0) -> Probe:
    return Probe(T0 + timedelta(seconds=i), ok, 12, code, None if ok else f"{code} happened")


def test_transient_failures_degrade_then_error_and_a_pass_reconnects():
    health, status = None, "connected"
    seen = []
    for i in range(ERROR_AFTER):
        health = record(health, probe(False, "upstream_error", i))
        status, _ = next_status(status, health)
        seen.append(status)
    assert seen == ["degraded"] * (ERROR_AFTER - 1) + ["error"]
    assert health.consecutive_failures == ERROR_AFTER
    health = record(health, probe(True, i=9))
    assert next_status(status, health) == ("connected", None)
    assert health.consecutive_failures == 0 and health.ok
    # the last error stays visible after the recovery
    assert health.last_error.code == "upstream_error" and health.last_probe_at == T0 + timedelta(
        seconds=9
    )


def test_degraded_recovers_to_connected():
    h = record(None, probe(False, "timeout"))
    assert next_status("connected", h)[0] == "degraded"
    assert next_status("degraded", record(h, probe(True, i=1)))[0] == "connected"


@pytest.mark.parametrize("code", ["auth_failed", "grant_revoked", "invalid_args"])
def test_failures_a_person_must_fix_are_error_at_once(code):
    status, detail = next_status("connected", record(None, probe(False, code)))
    assert status == "error" and code in detail


def test_a_transient_failure_never_lifts_an_error():
    h = record(None, probe(False, "auth_failed"))
    h = record(h, probe(False, "upstream_error", 1))
    assert next_status("error", h)[0] == "error"


def test_pending_auth_is_never_changed_by_a_probe():
    assert next_status("pending_auth", record(None, probe(True))) == ("pending_auth", None)
