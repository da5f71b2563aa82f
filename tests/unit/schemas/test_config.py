import pytest

from schemas.config import (
    ROLES,
    SCOPES,
    SLUG_RE,
    expand_scopes,
    hash_secret,
    new_secret,
    secret_hint,
)


def test_roles_expand_to_known_scopes():
    for scopes in ROLES.values():
        assert set(scopes) <= set(SCOPES)
    assert expand_scopes(None, None) == list(ROLES["admin"])  # default role is admin
    # admin holds every scope but ledger:query, which no preset grants (decisions §42)
    assert set(SCOPES) - set(ROLES["admin"]) == {"ledger:query"}
    assert all("ledger:query" not in scopes for scopes in ROLES.values())
    assert "events:write" not in expand_scopes("read_only", None)
    assert "keys:write" not in expand_scopes("operate", None)
    assert expand_scopes("ingest", None) == ["events:read", "events:write"]


def test_explicit_scopes_override_role_and_are_validated():
    assert expand_scopes("admin", ["events:read"]) == ["events:read"]
    with pytest.raises(ValueError, match="unknown scope"):
        expand_scopes(None, ["events:delete"])
    with pytest.raises(ValueError, match="unknown role"):
        expand_scopes("root", None)


def test_secret_format_hash_and_hint():
    s = new_secret("test")
    assert s.startswith("sk_test_") and len(s) > 30
    assert hash_secret(s) == hash_secret(s) and s not in hash_secret(s)
    hint = secret_hint(s)
    assert hint.startswith("sk_test_") and hint.endswith(s[-4:]) and len(hint) < len(s)


@pytest.mark.parametrize(
    "slug,ok",
    [
        ("acme", True),
        ("a-b-c", True),
        ("ab", False),
        ("Acme", False),
        ("-ab", False),
        ("a" * 41, False),
    ],
)
def test_slug_rule(slug, ok):
    assert bool(SLUG_RE.match(slug)) is ok
