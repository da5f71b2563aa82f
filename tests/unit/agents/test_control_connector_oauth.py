"""The control agent's oauth2 connector commands: a state's nonce completes once, the tokens
are sealed in a vault record (never in the connector), a re-authorization supersedes the old
link, refreshes move the version, stale background decisions are refused, and a revoked grant
refuses dispatches."""

from __future__ import annotations

from tests.unit.agents.test_control import Harness, new_id


def oauth_install(h: Harness, nonce: str = "nonce-aaaaaaaaaaaaaaaa") -> dict:
    return h.ok(
        "connector.install",
        connector={
            "id": new_id("cn"),
            "listing": "cn-amazon-connect",
            "name": "connect",
            "kind": "saas",
            "capabilities": ["contact.read", "task.create"],
            "tools": [
                {"name": "contact.read", "side_effect": False},
                {"name": "task.create", "side_effect": True},
            ],
            "auth": {"type": "oauth2", "hint": None},
            "config": {"instance_id": "i-1"},
            "status": "pending_auth",
            "authorize_url": "https://as.example/authorize?state=x",
            "oauth_nonce": nonce,
            "grant": "pending",
        },
        ciphertext="sealed-empty",
    )


def test_the_nonce_completes_once_and_seals_the_tokens():
    h = Harness()
    cn = oauth_install(h)
    assert "oauth_nonce" not in cn and "grant" not in cn
    assert h.view.connectors[cn["id"]].refused_because() is not None  # pending_auth
    d = h.run(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="granted",
        ciphertext="sealed-tokens",
    )
    assert d.reply.ok
    out = d.reply.result
    assert out["status"] == "connected" and "authorize_url" not in out
    assert [r.kind for r in d.records] == ["connector", "vault"]
    assert d.records[0].note.startswith("connector.set_status: connected")
    assert "sealed-tokens" not in str(d.records[0].data)
    assert h.view.vault[cn["id"]].ciphertext == "sealed-tokens"
    stored = h.view.connectors[cn["id"]]
    assert stored.grant == "granted" and stored.oauth_nonce is None
    assert stored.refused_because() is None
    replay = h.err(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="granted",
        ciphertext="other",
    )
    assert (replay.status, replay.code) == (409, "state_conflict")
    assert h.view.vault[cn["id"]].ciphertext == "sealed-tokens"


def test_a_failed_exchange_is_error_with_the_reason_and_reauthorize_supersedes():
    h = Harness()
    cn = oauth_install(h)
    out = h.ok(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="failed",
        detail="token exchange failed: HTML page",
    )
    assert out["status"] == "error" and out["status_detail"].endswith("HTML page")
    assert h.view.vault[cn["id"]].ciphertext == "sealed-empty"  # nothing sealed
    again = h.ok(
        "connector.reauthorize",
        connector_id=cn["id"],
        nonce="nonce-bbbbbbbbbbbbbbbb",
        authorize_url="https://as.example/authorize?state=y",
    )
    assert again["status"] == "pending_auth" and again["authorize_url"].endswith("state=y")
    old = h.err(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="granted",
    )
    assert old.code == "state_conflict"


def test_refresh_moves_the_version_and_a_stale_decision_is_refused():
    h = Harness()
    cn = oauth_install(h)
    h.ok(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="granted",
        ciphertext="t1",
    )
    v = h.view.connectors[cn["id"]].version
    d = h.run("connector.credentials", connector_id=cn["id"], ciphertext="t2", expect_version=v)
    assert d.reply.ok and d.records[0].note == "connector.credentials: oauth2 token refreshed"
    assert h.view.vault[cn["id"]].ciphertext == "t2"
    assert h.view.connectors[cn["id"]].version == v + 1
    stale = h.err("connector.credentials", connector_id=cn["id"], ciphertext="t3", expect_version=v)
    assert stale.code == "state_conflict" and h.view.vault[cn["id"]].ciphertext == "t2"


def test_a_revoked_grant_is_error_and_refuses_dispatches_until_reauthorized():
    h = Harness()
    cn = oauth_install(h)
    h.ok(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="granted",
        ciphertext="t1",
    )
    d = h.run(
        "connector.set_status",
        connector_id=cn["id"],
        status="error",
        grant="revoked",
        detail="authorization revoked",
        reason="authorization revoked",
    )
    assert d.records[0].note == "connector.set_status: error (authorization revoked)"
    stored = h.view.connectors[cn["id"]]
    assert "revoked" in stored.refused_because()
    refused = h.err("connector.credentials", connector_id=cn["id"], ciphertext="t9")
    assert refused.code == "state_conflict"
    h.ok(
        "connector.reauthorize",
        connector_id=cn["id"],
        nonce="nonce-cccccccccccccccc",
        authorize_url="https://as.example/a",
    )
    h.ok(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-cccccccccccccccc",
        outcome="granted",
        ciphertext="t10",
    )
    assert h.view.connectors[cn["id"]].refused_because() is None


def test_touch_records_health_without_a_status_change_or_version():
    h = Harness()
    cn = h.install()
    v = h.view.connectors[cn["id"]].version
    health = {"last_probe_at": "2026-07-02T15:00:00Z", "ok": True, "latency_ms": 5}
    d = h.run("connector.touch", connector_id=cn["id"], synced=True, health=health)
    assert d.reply.ok and d.records[0].note == "connector.touch: health probe"
    stored = h.view.connectors[cn["id"]]
    assert stored.version == v and stored.last_synced_at is not None and stored.health.ok
    assert d.reply.result["health"]["latency_ms"] == 5


def test_oauth_commands_refuse_api_key_connectors():
    h = Harness()
    cn = h.install()
    err = h.err("connector.reauthorize", connector_id=cn["id"], nonce="n" * 20, authorize_url="u")
    assert err.code == "state_conflict"


def test_refreshes_race_on_the_tokens_they_replaced_not_on_the_version():
    """Decisions §47: of two refreshers of one grant the first renewal stays, a second one built
    on the replaced tokens is refused, a version bump meanwhile (a health touch) voids nothing,
    and a revocation concluded from replaced tokens is refused."""
    from agents.oauth import credentials_fingerprint as fp

    h = Harness()
    cn = oauth_install(h)
    h.ok(
        "connector.authorize",
        connector_id=cn["id"],
        nonce="nonce-aaaaaaaaaaaaaaaa",
        outcome="granted",
        ciphertext="t1",
    )
    v = h.view.connectors[cn["id"]].version
    h.ok("connector.set_status", connector_id=cn["id"], status="degraded", expect_version=v)
    # the first refresher's write lands although the version moved since it read t1
    h.ok(
        "connector.credentials", connector_id=cn["id"], ciphertext="t2", expect_credentials=fp("t1")
    )
    assert h.view.vault[cn["id"]].ciphertext == "t2"
    late = h.err(
        "connector.credentials", connector_id=cn["id"], ciphertext="t3", expect_credentials=fp("t1")
    )
    assert late.code == "state_conflict" and h.view.vault[cn["id"]].ciphertext == "t2"
    wrong = h.err(
        "connector.set_status",
        connector_id=cn["id"],
        status="error",
        grant="revoked",
        expect_credentials=fp("t1"),
    )
    assert wrong.code == "state_conflict" and h.view.connectors[cn["id"]].grant == "granted"
    h.ok(
        "connector.set_status",
        connector_id=cn["id"],
        status="error",
        grant="revoked",
        expect_credentials=fp("t2"),
    )
    assert h.view.connectors[cn["id"]].refused_because()
