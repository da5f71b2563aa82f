"""A fake OpenAI-compatible chat-completions server (real HTTP on 127.0.0.1) for the model router.

``POST /v1/chat/completions`` records the request and answers with a plan built from the prompt:
it reads the event payload the prompt carries and proposes ``order.hold`` for its ``order_id``.
``POST /__fake__/mode`` ``{"reply": "plan" | "invalid" | "error", "errors_before_success": N}``
changes behaviour; ``GET /__fake__/requests`` returns what was received.
Run: ``python -m tests.fakes.openai_server --port N``. Tests and benchmarks only.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.reply = "plan"
        self.errors_left = 0


def plan_from_prompt(body: dict[str, Any]) -> dict[str, Any]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    payload = json.loads(re.search(r"Payload:\n(.*?)\n\n", user, flags=re.S).group(1))
    order = str(payload.get("order_id", "unknown"))
    return {
        "reasoning": f"Order {order} looks risky; holding it for review.",
        "actions": [
            {
                "tool": "order.hold",
                "args": {"order_id": order},
                "value": payload.get("total"),
                "entity_key": f"order:{order}",
                "idempotency_key": f"llm-hold:{order}",
            }
        ],
    }


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/__fake__/requests":
                with state.lock:
                    return self._send(200, state.requests)
            self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/__fake__/mode":
                with state.lock:
                    state.reply = body.get("reply", "plan")
                    state.errors_left = int(body.get("errors_before_success", 0))
                return self._send(200, {"ok": True})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            with state.lock:
                state.requests.append(
                    {"body": body, "authorization": self.headers.get("Authorization")}
                )
                if state.errors_left > 0:
                    state.errors_left -= 1
                    return self._send(503, {"error": {"message": "overloaded"}})
                reply = state.reply
            if reply == "error":
                return self._send(500, {"error": {"message": "boom"}})
            content = (
                json.dumps(plan_from_prompt(body))
                if reply == "plan"
                else '{"plan": "hold everything"}'
            )
            self._send(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content},
                        }
                    ],
                },
            )

    return Handler


class FakeOpenAI:
    def __init__(self, port: int = 0) -> None:
        self.state = State()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self.state))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    fake = FakeOpenAI(parser.parse_args().port).start()
    print(f"fake openai ready at {fake.url}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
