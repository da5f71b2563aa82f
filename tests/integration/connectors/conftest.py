"""Fixtures for connector integration tests: the fake Magento (a real HTTP server on loopback)
and a ConnectorRuntime whose cn-magento servers are real stdio subprocesses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from connectors.marketplace import load_catalogue
from connectors.pool import ConnectorRuntime, ConnectorSpec
from tests.fakes.magento import DEFAULT_TOKEN, FakeMagento

TOKEN = DEFAULT_TOKEN
# Health checks every half second so tests that wait for the background check stay short.
TEST_HEALTH_INTERVAL_S = 0.5


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeMagento]:
    fake = FakeMagento().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(fake_server: FakeMagento) -> Iterator[FakeMagento]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()  # releases anything a test left hanging


def _magento_spec(
    fake: FakeMagento, *, token: str = TOKEN, instance_id: str = "cn_test1"
) -> ConnectorSpec:
    return ConnectorSpec(
        instance_id=instance_id,
        listing=load_catalogue()["cn-magento"],
        config={"base_url": fake.url},
        credentials={"type": "api_key", "key": token},
    )


@pytest.fixture
def magento_spec() -> Callable[..., ConnectorSpec]:
    """``magento_spec(fake, token=..., instance_id=...)`` -> a cn-magento ConnectorSpec."""
    return _magento_spec


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ConnectorRuntime]:
    rt = ConnectorRuntime(
        state_dir=tmp_path / "connectors", health_interval_s=TEST_HEALTH_INTERVAL_S
    )
    yield rt
    await rt.close()


@pytest.fixture
async def magento(runtime: ConnectorRuntime, fake: FakeMagento) -> ConnectorRuntime:
    """A runtime with cn-magento installed as ``cn_test1`` against the fake."""
    await runtime.ensure(_magento_spec(fake))
    return runtime
