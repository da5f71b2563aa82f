import pytest

from agents.secrets import SecretBox, credential_hint


def test_seal_round_trips_and_hides_the_plaintext():
    box = SecretBox("k1")
    sealed = box.seal({"type": "api_key", "key": "mg_live_9f4c2e8b1a41"})
    assert "9f4c2e8b1a41" not in sealed
    assert box.open(sealed)["key"] == "mg_live_9f4c2e8b1a41"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        SecretBox("other").open(sealed)


def test_hints_match_the_seed():
    assert credential_hint({"type": "api_key", "key": "mg_live_9f4c2e8b1a41"}) == "mg_****41"
    assert credential_hint({"type": "basic", "username": "ops", "password": "pw"}) == "ops:****"
    assert credential_hint({"type": "oauth2"}) is None
    assert credential_hint({"type": "api_key", "key": "short"}) == "****"
