"""FIBRIC_PUBLIC_URL: the base of absolute links, from configuration only."""

import pytest
from pydantic import ValidationError

from schemas.settings import Settings


def test_default_is_the_bound_address(monkeypatch):
    monkeypatch.delenv("FIBRIC_PUBLIC_URL", raising=False)
    s = Settings(api_host="127.0.0.1", api_port=8123)
    assert s.public_base_url == "http://127.0.0.1:8123"
    # a wildcard bind is no address a client can use
    assert Settings(api_host="0.0.0.0", api_port=80).public_base_url == "http://127.0.0.1:80"
    assert Settings(api_host="::", api_port=80).public_base_url == "http://[::1]:80"


def test_set_from_the_environment_without_trailing_slash(monkeypatch):
    monkeypatch.setenv("FIBRIC_PUBLIC_URL", "https://api.example.com/fibric/")
    assert Settings().public_base_url == "https://api.example.com/fibric"


@pytest.mark.parametrize(
    "bad",
    ["api.example.com", "ftp://x", "https://", "https://u:p@x", "https://x/?a=1", "http://x/#f"],
)
def test_not_an_http_base_url_is_refused(bad):
    with pytest.raises(ValidationError):
        Settings(public_url=bad)
