"""``fibric up --demo``'s webhook receiver: prints each delivery it gets, after checking its
``Fibric-Signature`` with the endpoint's secret (read from ``--secret-file``, which the demo
writes once it has created the endpoint). A stand-in for your own receiver; loopback only."""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from schemas.webhook import verify_signature


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret-file", type=Path, required=True)
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            secret = args.secret_file.read_text().strip() if args.secret_file.exists() else ""
            header = self.headers.get("Fibric-Signature", "")
            ok = bool(secret) and verify_signature(secret, body, header, now=time.time())
            self.send_response(200 if ok else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            try:
                doc = json.loads(body)
                what = f"{doc['type']} {doc['data'].get('id')} ({doc['id']})"
            except (ValueError, KeyError, TypeError, AttributeError):
                what = "an unreadable body"
            verdict = "signature ok" if ok else "BAD SIGNATURE, refused"
            print(f"fibric: webhook {what}: {verdict}", flush=True)

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
