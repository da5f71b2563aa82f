"""The README's signature-verification example runs as written, against what Fibric sends."""

from __future__ import annotations

import re
import time
from pathlib import Path

from schemas.webhook import signature_header

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_verify():
    text = README.read_text()
    block = re.search(r"<!-- webhook-verify -->\n```python\n(.*?)```", text, flags=re.S)
    assert block, "the README's webhook verification example is missing"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 10
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README, on purpose
    return ns["verify"]


def test_the_readme_example_verifies_fibric_signatures():
    verify = readme_verify()
    body = b'{"id":"whd_01J","object":"webhook_delivery","type":"receipt.written","data":{}}'
    now = int(time.time())
    header = signature_header(["whsec_new", "whsec_old"], body, now)
    assert verify("whsec_new", body, header)
    assert verify("whsec_old", body, header)  # a rotation's overlap
    assert not verify("whsec_other", body, header)
    assert not verify("whsec_new", body.replace(b"{}", b"[]"), header)  # tampered body
    stale = signature_header(["whsec_new"], body, now - 301)
    assert not verify("whsec_new", body, stale)  # replayed later than the tolerance
