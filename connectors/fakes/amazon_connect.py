"""A stand-in Amazon Connect API: a real HTTP server speaking the three operations cn-amazon-connect
uses, with the request and response shapes and error codes of the Amazon Connect API Reference
(restJson1: errors carry ``x-amzn-ErrorType`` and a ``{"Message": …}`` body, every response an
``x-amzn-RequestId``).

- ``GET /instance/{InstanceId}`` — DescribeInstance: ``{"Instance": {"Id", "Arn",
  "IdentityManagementType", "InstanceAlias", "CreatedTime", "ServiceRole", "InstanceStatus",
  "InboundCallsEnabled", "OutboundCallsEnabled"}}``; unknown instance: 404
  ``ResourceNotFoundException``.
- ``GET /contacts/{InstanceId}/{ContactId}`` — DescribeContact: ``{"Contact": {"Arn", "Id",
  "InitialContactId", "PreviousContactId", "InitiationMethod", "Name", "Description",
  "Channel", "QueueInfo", "AgentInfo", "InitiationTimestamp", "DisconnectTimestamp",
  "LastUpdateTimestamp", "ScheduledTimestamp", "RelatedContactId"}}`` (timestamps in epoch
  seconds, as the JSON protocol sends them); ids longer than 256 (contact) / 100 (instance):
  400 ``InvalidParameterException``; unknown: 404 ``ResourceNotFoundException``.
- ``PUT /contact/task`` — StartTaskContact: body ``{"InstanceId", "ContactFlowId" |
  "TaskTemplateId" | "QuickConnectId", "Name" (1..512, required), "Description" (..4096),
  "ClientToken" (..500), "PreviousContactId", "RelatedContactId", "Attributes", "References",
  "ScheduledTime"}`` -> ``{"ContactId"}``. The same ClientToken answers the same ContactId
  (the idempotency Amazon documents for ClientToken) and creates nothing new; an unknown flow:
  404 ``ResourceNotFoundException``; a missing Name or no flow/template/quick connect: 400
  ``InvalidRequestException``; malformed values: 400 ``InvalidParameterException``.
- Throttling: 429 ``ThrottlingException``; server faults: 500 ``InternalServiceException``;
  over the active-task quota: 402 ``ServiceQuotaExceededException``.

Authentication: real Amazon Connect signs with SigV4; cn-amazon-connect sends an OAuth bearer
token to a gateway in front of it (the connector's documented limit). This stand-in plays that
gateway: a missing, unknown, expired or revoked token is RFC 6750's 401 ``invalid_token``
(``WWW-Authenticate: Bearer error="invalid_token"``). Tokens are checked by ``token_check``
(in process: ``FakeOAuthServer.active``) or RFC 7662 introspection at ``introspect_url``. The
token is checked before anything else, so a 401 has applied nothing (what makes the worker's
one retry after renewing a token safe, decisions §47).

Test controls: ``fail_status`` (answer every API request with that status and its AWS error),
``apply_then_fail`` (StartTaskContact creates the task, then answers 500: an unknown outcome),
``hang_s``, counters, ``tasks()``, ``log()`` (each request's method, path, status and
ClientToken); over HTTP ``GET /__fake__/state``, ``POST /__fake__/mode``.
Run by hand: ``python -m connectors.fakes.amazon_connect --port N --introspect-url URL``.
Never use this outside tests and demos.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit
from urllib.request import Request, urlopen

DEFAULT_INSTANCE = "8c5f1b7e-2f4a-4c1e-9b0a-0d6f3a1e5c21"
DEFAULT_FLOW = "5b7e1d2c-3a4f-4e6b-8c9d-1f2e3a4b5c6d"
REGION = "us-east-1"
ACCOUNT = "123456789012"
MAX_HANG_S = 60.0
MAX_ACTIVE_TASKS = 10_000
STATUS_ERRORS = {
    400: "InvalidRequestException",
    402: "ServiceQuotaExceededException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    500: "InternalServiceException",
    503: "InternalServiceException",
}
_ID = re.compile(r"^[A-Za-z0-9-]+$")


class AwsError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _arn(instance_id: str, *rest: str) -> str:
    return "/".join([f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/{instance_id}", *rest])


class FakeAmazonConnect:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_check: Callable[[str], bool] | None = None,
        introspect_url: str | None = None,
        tokens: set[str] | None = None,
    ) -> None:
        self.host, self.requested_port = host, port
        self.token_check = token_check
        self.introspect_url = introspect_url
        self.tokens = set(tokens or ())
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.fail_status: int | None = None
        self.apply_then_fail = False
        self.hang_s: float | None = None
        self._release = threading.Event()
        self.reset()
        self._httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> FakeAmazonConnect:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer((self.host, self.requested_port), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="fake-connect", daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- test controls -------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            now = time.time()
            self.instances = {
                DEFAULT_INSTANCE: {
                    "Id": DEFAULT_INSTANCE,
                    "Arn": _arn(DEFAULT_INSTANCE),
                    "IdentityManagementType": "CONNECT_MANAGED",
                    "InstanceAlias": "acme-support",
                    "CreatedTime": round(now - 86400 * 90, 3),
                    "ServiceRole": f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/connect",
                    "InstanceStatus": "ACTIVE",
                    "InboundCallsEnabled": True,
                    "OutboundCallsEnabled": True,
                }
            }
            self.flows = {DEFAULT_INSTANCE: {DEFAULT_FLOW}}
            self.contacts: dict[str, dict[str, Any]] = {}
            self.client_tokens: dict[tuple[str, str], str] = {}
            self.counters.clear()
            self.calls: list[dict[str, Any]] = []
            self.fail_status, self.apply_then_fail, self.hang_s = None, False, None
            self._release.set()
            self._release = threading.Event()
            self.add_contact("c0ffee00-0000-4000-8000-000000000001", channel="VOICE")

    def add_contact(self, contact_id: str, *, channel: str = "VOICE", **kw: Any) -> dict:
        now = round(time.time(), 3)
        contact = {
            "Arn": _arn(DEFAULT_INSTANCE, "contact", contact_id),
            "Id": contact_id,
            "InitialContactId": kw.get("InitialContactId"),
            "PreviousContactId": kw.get("PreviousContactId"),
            "InitiationMethod": kw.get("InitiationMethod", "INBOUND" if channel != "TASK" else "API"),
            "Name": kw.get("Name"),
            "Description": kw.get("Description"),
            "Channel": channel,
            "QueueInfo": {"Id": "queue-basic", "EnqueueTimestamp": now},
            "AgentInfo": None,
            "InitiationTimestamp": now,
            "DisconnectTimestamp": None,
            "LastUpdateTimestamp": now,
            "ScheduledTimestamp": kw.get("ScheduledTimestamp"),
            "RelatedContactId": kw.get("RelatedContactId"),
        }
        self.contacts[contact_id] = {k: v for k, v in contact.items() if v is not None}
        return contact

    def set_mode(self, **kw: Any) -> None:
        with self.lock:
            for k in ("fail_status", "apply_then_fail", "hang_s"):
                if k in kw:
                    setattr(self, k, kw[k])
            if not self.hang_s:
                self._release.set()
                self._release = threading.Event()

    def count(self, name: str) -> int:
        with self.lock:
            return self.counters[name]

    def log(self) -> list[dict[str, Any]]:
        """Every API request answered: method, path, status and StartTaskContact's ClientToken
        (never the bearer token), oldest first."""
        with self.lock:
            return [dict(c) for c in self.calls]

    def tasks(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(c) for c in self.contacts.values() if c["Channel"] == "TASK"]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"counters": dict(self.counters), "tasks": len(self.tasks_unlocked())}

    def tasks_unlocked(self) -> list[dict[str, Any]]:
        return [c for c in self.contacts.values() if c["Channel"] == "TASK"]

    # ---- auth ------------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if token in self.tokens:
            return True
        if self.token_check is not None:
            return self.token_check(token)
        if self.introspect_url:
            req = Request(
                self.introspect_url,
                data=urlencode({"token": token}).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            with urlopen(req, timeout=5) as resp:  # noqa: S310 - a configured test URL
                return bool(json.loads(resp.read()).get("active"))
        return False

    # ---- operations ------------------------------------------------------------------------
    def _instance(self, instance_id: str) -> dict[str, Any]:
        if not 1 <= len(instance_id) <= 100 or not _ID.match(instance_id):
            raise AwsError(400, "InvalidParameterException", "InstanceId is not valid")
        inst = self.instances.get(instance_id)
        if inst is None:
            raise AwsError(404, "ResourceNotFoundException", f"Instance not found: {instance_id}")
        return inst

    def describe_instance(self, instance_id: str) -> dict[str, Any]:
        with self.lock:
            self.counters["DescribeInstance"] += 1
            return {"Instance": dict(self._instance(instance_id))}

    def describe_contact(self, instance_id: str, contact_id: str) -> dict[str, Any]:
        with self.lock:
            self.counters["DescribeContact"] += 1
            self._instance(instance_id)
            if not 1 <= len(contact_id) <= 256:
                raise AwsError(400, "InvalidParameterException", "ContactId is not valid")
            contact = self.contacts.get(contact_id)
            if contact is None:
                raise AwsError(404, "ResourceNotFoundException", f"Contact not found: {contact_id}")
            return {"Contact": dict(contact)}

    def start_task_contact(self, body: Any) -> dict[str, Any]:
        with self.lock:
            self.counters["StartTaskContact"] += 1
            if not isinstance(body, dict):
                raise AwsError(400, "InvalidRequestException", "The request body is not JSON")
            instance_id = body.get("InstanceId")
            if not isinstance(instance_id, str):
                raise AwsError(400, "InvalidRequestException", "InstanceId is required")
            self._instance(instance_id)
            name = body.get("Name")
            if not isinstance(name, str) or not 1 <= len(name) <= 512:
                raise AwsError(400, "InvalidRequestException", "Name is required (1-512 characters)")
            desc = body.get("Description")
            if desc is not None and (not isinstance(desc, str) or len(desc) > 4096):
                raise AwsError(400, "InvalidParameterException", "Description is too long")
            flow = body.get("ContactFlowId")
            if not flow and not body.get("TaskTemplateId") and not body.get("QuickConnectId"):
                raise AwsError(
                    400,
                    "InvalidRequestException",
                    "One of ContactFlowId, TaskTemplateId or QuickConnectId is required",
                )
            if flow and flow not in self.flows.get(instance_id, set()):
                raise AwsError(404, "ResourceNotFoundException", f"Contact flow not found: {flow}")
            token = body.get("ClientToken")
            if token is not None and (not isinstance(token, str) or len(token) > 500):
                raise AwsError(400, "InvalidParameterException", "ClientToken is not valid")
            if token and (instance_id, token) in self.client_tokens:
                self.counters["StartTaskContact.deduplicated"] += 1
                return {"ContactId": self.client_tokens[(instance_id, token)]}
            if len(self.tasks_unlocked()) >= MAX_ACTIVE_TASKS:
                raise AwsError(
                    402, "ServiceQuotaExceededException", "The active task quota is exceeded"
                )
            contact_id = str(uuid.uuid4())
            self.add_contact(
                contact_id,
                channel="TASK",
                Name=name,
                Description=desc,
                PreviousContactId=body.get("PreviousContactId"),
                RelatedContactId=body.get("RelatedContactId"),
                ScheduledTimestamp=body.get("ScheduledTime"),
            )
            self.contacts[contact_id]["Attributes"] = body.get("Attributes") or {}
            if token:
                self.client_tokens[(instance_id, token)] = contact_id
            if self.apply_then_fail:
                raise AwsError(500, "InternalServiceException", "Request processing failed")
            return {"ContactId": contact_id}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAmazonConnect
    protocol_version = "HTTP/1.1"
    server_version = "Server"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # this server sees bearer tokens

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        path = urlsplit(self.path).path
        if not path.startswith("/__fake__/"):
            sent = getattr(self, "_request_body", None)
            token = sent.get("ClientToken") if isinstance(sent, dict) else None
            with self.fake.lock:
                self.fake.calls.append(
                    {"method": self.command, "path": path, "status": status, "client_token": token}
                )
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: AwsError) -> None:
        self._send(err.status, {"Message": err.message}, {"x-amzn-ErrorType": err.kind})

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        fake = self.fake
        path = urlsplit(self.path).path
        body = self._request_body = self._body()
        if path.startswith("/__fake__/"):
            if method == "GET" and path == "/__fake__/state":
                return self._send(200, fake.snapshot())
            if method == "POST" and path == "/__fake__/mode":
                fake.set_mode(**(body or {}))
                return self._send(200, {})
            return self._send(404, {"Message": "unknown fake control route"})
        if not fake.authorized(self.headers.get("Authorization")):
            with fake.lock:
                fake.counters["unauthorized"] += 1
            return self._send(
                401,
                {"message": "The access token is invalid or has expired"},
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if fake.hang_s:
            fake._release.wait(min(fake.hang_s, MAX_HANG_S))
        if fake.fail_status:
            kind = STATUS_ERRORS.get(fake.fail_status, "InternalServiceException")
            return self._error(AwsError(fake.fail_status, kind, f"{kind} (simulated)"))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            if method == "GET" and len(parts) == 2 and parts[0] == "instance":
                return self._send(200, fake.describe_instance(parts[1]))
            if method == "GET" and len(parts) == 3 and parts[0] == "contacts":
                return self._send(200, fake.describe_contact(parts[1], parts[2]))
            if method == "PUT" and parts == ["contact", "task"]:
                return self._send(200, fake.start_task_contact(body))
        except AwsError as err:
            return self._error(err)
        return self._error(AwsError(404, "UnknownOperationException", "Unknown operation"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in Amazon Connect API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--introspect-url", help="RFC 7662 endpoint that validates tokens")
    parser.add_argument("--token", action="append", help="a bearer token always accepted")
    args = parser.parse_args(argv)
    fake = FakeAmazonConnect(
        host=args.host,
        port=args.port,
        introspect_url=args.introspect_url,
        tokens=set(args.token or ()),
    ).start()
    print(f"fake amazon connect ready at {fake.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
