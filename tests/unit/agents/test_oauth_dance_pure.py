"""The pure half of the OAuth dance (agents/oauth.py): the signed state's binding to tenant,
mode and connector, expiry, PKCE (RFC 7636 appendix B vector), the authorize URL, token
responses and refresh timing."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.oauth import (
    StateError,
    TokenResponseError,
    authorize_url,
    credentials_from_token,
    make_state,
    new_nonce,
    pkce_challenge,
    pkce_verifier,
    provider_error,
    refresh_due,
    verify_state,
)

KEY = "test-secret-key-0123456789"
CN = "cn_01JZ0000000000000000000000"
OTHER_CN = "cn_01JZ0000000000000000000001"


def state(**kw):
    args = {
        "tenant_id": "t_acme",
        "livemode": False,
        "connector_id": CN,
        "nonce": "n" * 32,
        "expires_at": 2_000,
    } | kw
    return make_state(KEY, **args)


def test_a_state_verifies_for_its_own_tenant_mode_and_connector():
    assert verify_state(KEY, state(), tenant_id="t_acme", livemode=False, now=1_000) == (
        CN,
        "n" * 32,
    )


@pytest.mark.parametrize(
    "tenant_id,livemode", [("t_globex", False), ("t_acme", True)], ids=["tenant", "mode"]
)
def test_another_tenant_or_mode_never_verifies(tenant_id, livemode):
    with pytest.raises(StateError) as e:
        verify_state(KEY, state(), tenant_id=tenant_id, livemode=livemode, now=1_000)
    assert e.value.reason == "bad_signature"


def test_moving_a_state_to_another_connector_or_nonce_or_expiry_breaks_its_mac():
    cid, nonce, exp, mac = state().split(".")
    for forged in (
        f"{OTHER_CN}.{nonce}.{exp}.{mac}",
        f"{cid}.{'m' * 32}.{exp}.{mac}",
        f"{cid}.{nonce}.9999999999.{mac}",
    ):
        with pytest.raises(StateError) as e:
            verify_state(KEY, forged, tenant_id="t_acme", livemode=False, now=1_000)
        assert e.value.reason == "bad_signature"


def test_another_deployment_key_never_verifies():
    with pytest.raises(StateError):
        verify_state("another-key", state(), tenant_id="t_acme", livemode=False, now=1_000)


def test_an_expired_state_is_refused():
    with pytest.raises(StateError) as e:
        verify_state(KEY, state(), tenant_id="t_acme", livemode=False, now=2_001)
    assert e.value.reason == "expired"


@given(st.text(max_size=400))
def test_arbitrary_text_is_malformed_or_bad_never_accepted(raw):
    with pytest.raises(StateError):
        verify_state(KEY, raw, tenant_id="t_acme", livemode=False, now=1_000)


def test_pkce_s256_matches_rfc7636_appendix_b():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_verifier_is_43_unreserved_chars_per_nonce_and_key():
    a, b = new_nonce(), new_nonce()
    va = pkce_verifier(KEY, a)
    assert len(va) == 43 and all(c.isalnum() or c in "-_" for c in va)
    assert va == pkce_verifier(KEY, a) and va != pkce_verifier(KEY, b)
    assert va != pkce_verifier("other", a)


def test_authorize_url_carries_the_rfc_parameters():
    url = authorize_url(
        "https://as.example/authorize?tenant=x",
        client_id="fibric",
        redirect_uri="https://api.example/v1/connectors/oauth/callback",
        state="s.t.a.te",
        code_challenge="c" * 43,
        scopes=["a:read", "b:write"],
    )
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert q == {
        "tenant": "x",
        "response_type": "code",
        "client_id": "fibric",
        "redirect_uri": "https://api.example/v1/connectors/oauth/callback",
        "state": "s.t.a.te",
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
        "scope": "a:read b:write",
    }


def test_token_response_to_credentials_and_refresh_keeps_the_refresh_token():
    first = credentials_from_token(
        {"access_token": "at1", "token_type": "bearer", "expires_in": 3600, "refresh_token": "rt1"},
        now=100.0,
    )
    assert first == {
        "type": "oauth2",
        "access_token": "at1",
        "token_type": "Bearer",
        "expires_at": 3700.0,
        "obtained_at": 100.0,
        "refresh_token": "rt1",
    }
    second = credentials_from_token(
        {"access_token": "at2", "token_type": "Bearer", "expires_in": "60"}, 200.0, first
    )
    assert second["refresh_token"] == "rt1" and second["expires_at"] == 260.0


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"token_type": "Bearer"},
        {"access_token": "", "token_type": "Bearer"},
        {"access_token": "x", "token_type": "mac"},
        {"access_token": "x", "token_type": "Bearer", "expires_in": -1},
        {"access_token": "x", "token_type": "Bearer", "expires_in": True},
        {"access_token": "x", "token_type": "Bearer", "refresh_token": 5},
    ],
)
def test_unusable_token_responses_are_refused(doc):
    with pytest.raises(TokenResponseError):
        credentials_from_token(doc, 0.0)


def test_refresh_is_due_near_expiry_and_only_with_a_refresh_token():
    creds = {"access_token": "a", "refresh_token": "r", "expires_at": 3700.0, "obtained_at": 100.0}
    assert not refresh_due(creds, 3500.0)
    assert refresh_due(creds, 3590.0)  # within the 120 s margin
    short = creds | {"expires_at": 110.0}  # a 10 s token: its last 10 %
    assert not refresh_due(short, 108.0) and refresh_due(short, 109.5)
    assert not refresh_due(creds | {"refresh_token": None}, 5000.0)
    assert not refresh_due(creds | {"expires_at": None}, 5000.0)


def test_provider_error_reads_rfc6749_5_2():
    assert provider_error({"error": "invalid_grant", "error_description": "revoked"}) == (
        "invalid_grant",
        "revoked",
    )
    assert provider_error({"message": "x"}) is None and provider_error("<html>") is None
