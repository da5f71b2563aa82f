"""The README's walkthrough (its ```sh blocks) runs as written against a real `fibric up`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_walkthrough_runs(tmp_path):
    blocks = sh_blocks()
    assert len(blocks) >= 4
    stack = make_stack(tmp_path)
    stack.start()
    try:
        script = "set -euo pipefail\n" + "\n".join(blocks).replace(
            "http://127.0.0.1:8080", stack.base_url
        )
        r = subprocess.run(
            ["bash", "-c", script], env=stack.env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert '"slug": "acme"' in out
        assert '"object":"event"' in out and '"event_type":"order.created"' in out
        assert '"object":"list"' in out
        assert re.search(r"[}\n]200\n", out)  # the replayed idempotent POST
        assert '"code":"invalid_parameter"' in out
    finally:
        stack.stop()
