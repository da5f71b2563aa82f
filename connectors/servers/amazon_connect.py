"""cn-amazon-connect: a minimal MCP server for Amazon Connect
(``python -m connectors.servers.amazon_connect``).

The listing authorises through OAuth 2.0: an install stays ``pending_auth`` until the
authorization dance stores ``credentials.access_token``; until then every tool answers
``auth_failed``. With a token it calls the Amazon Connect REST API at
``https://connect.<region>.amazonaws.com`` (or ``config.api_base_url``) with
``Authorization: Bearer <access_token>``:

- ``contact.read`` — DescribeContact, GET ``/contacts/{InstanceId}/{ContactId}`` (no id:
  DescribeInstance, the connection test's read).
- ``task.create`` — StartTaskContact, PUT ``/contact/task``, with the idempotency key as
  Amazon's own ``ClientToken`` (so a re-issue after an unknown outcome is deduplicated upstream).
- ``connector.check`` — DescribeInstance, GET ``/instance/{InstanceId}``.

Known limit: AWS APIs natively sign requests with SigV4; the bearer form assumes the OAuth
broker in front of them (the authorize_url in the catalogue). Never logs or returns a token.
"""

from __future__ import annotations

import re
from typing import Any

from connectors.errors import ConnectorError, ConnectorErrorCode
from connectors.server import ConnectorEnv, FibricServer, credential_secret, serve
from connectors.upstream import Upstream

LISTING_ID = "cn-amazon-connect"
DEFAULT_REGION = "us-east-1"
ID_RE = re.compile(r"^[A-Za-z0-9-]{1,256}$")  # Connect ids are UUIDs / ARNs' last segment
# AWS region names ("us-east-1", "ap-southeast-2"); the region is spliced into the API host, so
# anything else ("x@127.0.0.1#") would change which host the token is sent to.
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
MAX_TASK_NAME = 512  # StartTaskContact Name limit
MAX_TASK_DESCRIPTION = 4096  # StartTaskContact Description limit
MAX_CLIENT_TOKEN = 500  # StartTaskContact ClientToken limit


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, f"{name} is malformed")
    return value


def build(env: ConnectorEnv) -> FibricServer:
    region = env.config.get("region") or DEFAULT_REGION
    valid_region = isinstance(region, str) and bool(REGION_RE.match(region))
    base = env.config.get("api_base_url") or (
        f"https://connect.{region}.amazonaws.com" if valid_region else "https://invalid.invalid"
    )
    token = env.credentials.get("access_token") or credential_secret(env.credentials)
    http = Upstream(
        base, {"Authorization": f"Bearer {token}"} if token else {}, livemode=env.livemode
    )
    server = FibricServer(LISTING_ID, state_dir=env.state_dir)

    async def request(method: str, path: str, **kw: Any) -> Any:
        if not valid_region:
            raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "config.region is malformed")
        if not token:
            raise ConnectorError(
                ConnectorErrorCode.AUTH_FAILED, "OAuth authorization is not complete"
            )
        return await http.request(method, path, **kw)

    def instance() -> str:
        return _check_id("config.instance_id", env.config.get("instance_id"))

    @server.check
    async def connector_check() -> dict[str, Any]:
        """Validate the access token by describing the configured instance."""
        doc = await request("GET", f"/instance/{instance()}")
        status = ((doc or {}).get("Instance") or {}).get("InstanceStatus")
        return {"ok": True, "listing": LISTING_ID, "instance_status": status}

    @server.tool("contact.read", side_effect=False, capability="contact.read")
    async def contact_read(contact_id: str | None = None) -> dict[str, Any]:
        """Describe a contact. With no id, describe the instance (the connection test's read)."""
        if contact_id is None:
            doc = await request("GET", f"/instance/{instance()}")
            status = ((doc or {}).get("Instance") or {}).get("InstanceStatus")
            return {"contact": None, "instance_status": status}
        cid = _check_id("contact_id", contact_id)
        doc = await request("GET", f"/contacts/{instance()}/{cid}")
        return {"contact": (doc or {}).get("Contact")}

    async def reconcile_task(**_: Any) -> None:
        return None  # re-issuing with the same ClientToken is deduplicated by Amazon

    @server.tool(
        "task.create", side_effect=True, capability="task.create", reconcile=reconcile_task
    )
    async def task_create(
        idempotency_key: str,
        name: str | None = None,
        contact_flow_id: str | None = None,
        description: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Start a task contact in a contact flow."""
        if dry_run:
            await request("GET", f"/instance/{instance()}")
            return {"dry_run": True, "instance_id": instance()}
        flow = _check_id("contact_flow_id", contact_flow_id)
        if not name or not name.strip() or len(name) > MAX_TASK_NAME:
            raise ConnectorError(
                ConnectorErrorCode.INVALID_ARGS, f"name must be 1..{MAX_TASK_NAME}"
            )
        if len(description) > MAX_TASK_DESCRIPTION:
            raise ConnectorError(ConnectorErrorCode.INVALID_ARGS, "description too long")
        body = {
            "InstanceId": instance(),
            "ContactFlowId": flow,
            "Name": name,
            "Description": description,
            "ClientToken": idempotency_key[:MAX_CLIENT_TOKEN],
        }
        doc = await request("PUT", "/contact/task", json=body)
        return {"contact_id": (doc or {}).get("ContactId")}

    return server


def main() -> None:
    serve(build, LISTING_ID)


if __name__ == "__main__":
    main()
