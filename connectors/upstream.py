"""The HTTP client our connector servers use to reach a vendor's REST API.

One ``httpx.AsyncClient`` per server process (keep-alive), bounded timeouts, and one mapping
from HTTP outcomes to connector errors: 401/403 -> auth_failed, 404 -> not_found, 429 ->
upstream_error (not applied; its ``Retry-After`` kept), other 4xx -> invalid_args, 5xx /
unreachable / timeout -> upstream_error. It must never put credentials in
an error message or a log line (they travel only in the Authorization header), and it sends
nothing but through the egress policy (``egress.py``): checked addresses, the configured host
only, redirects never followed (a 3xx is an upstream error).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from connectors.egress import EgressRefused, egress_client
from connectors.errors import ConnectorError, ConnectorErrorCode, code_for_http_status

# Upstream deadline per request. Below the pool's default per-call timeout (10 s) so a slow
# vendor is reported as upstream_error by the server, not as a bare pool timeout.
UPSTREAM_TIMEOUT_S = 8.0
# Connecting should be quick on any healthy API; fail fast so retries happen sooner.
UPSTREAM_CONNECT_TIMEOUT_S = 3.0
# Concurrent upstream connections per server process; the pool's per-connector in-flight
# bound (16 by default) is the real limiter, this only keeps the socket count sane.
UPSTREAM_MAX_CONNECTIONS = 32
# Vendor error messages are echoed to receipts; cap them.
MAX_UPSTREAM_MESSAGE_CHARS = 300
# Statuses after which a write may or may not have been applied upstream.
AMBIGUOUS_WRITE_STATUSES = frozenset({500, 504})


def upstream_message(body: Any, status: int) -> str:
    """A human message from a vendor error body (Magento's ``%name`` templating filled in)."""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        msg = body["message"]
        params = body.get("parameters")
        if isinstance(params, dict):
            for k, v in params.items():
                msg = msg.replace(f"%{k}", str(v))
        elif isinstance(params, list):
            for i, v in enumerate(params, start=1):
                msg = msg.replace(f"%{i}", str(v))
        return msg[:MAX_UPSTREAM_MESSAGE_CHARS]
    if isinstance(body, dict) and isinstance(body.get("Message"), str):
        return body["Message"][:MAX_UPSTREAM_MESSAGE_CHARS]  # AWS restJson1 error bodies
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        # Kustomer's two documented shapes (developer.kustomer.com/docs/concepts/errors):
        # {code, message, meta}, or JSON:API {status, code, title, detail, source}; its own
        # advice reads code, then message ?? detail ?? title, then the source pointer
        first = body["errors"][0]
        if isinstance(first, dict):
            text = first.get("message") or first.get("detail") or first.get("title")
            if isinstance(text, str):
                code = first.get("code")
                if isinstance(code, str) and code:
                    text = f"{code}: {text}"
                source = first.get("source")
                where = (
                    source.get("pointer") or source.get("parameter")
                    if isinstance(source, dict)
                    else None
                )
                if isinstance(where, str):
                    text += f" (at {where})"
                return text[:MAX_UPSTREAM_MESSAGE_CHARS]
    return f"upstream returned HTTP {status}"


def error_for_status(status: int, body: Any, *, write: bool) -> ConnectorError:
    return ConnectorError(
        code_for_http_status(status),
        upstream_message(body, status),
        status=status,
        outcome_unknown=write and status in AMBIGUOUS_WRITE_STATUSES,
    )


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110: delay-seconds or an HTTP date), None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# An ``x-ratelimit-reset`` above this is a UNIX time (Kustomer), below it a number of seconds
# (other vendors); 10^9 s is 2001, and no window is 31 years long.
EPOCH_SECONDS_FLOOR = 1_000_000_000


def reset_seconds(value: str | None) -> float | None:
    """Seconds until an ``x-ratelimit-reset`` (UNIX time or seconds), None if absent."""
    if not value or not value.strip().isdigit():
        return None
    n = int(value.strip())
    if n >= EPOCH_SECONDS_FLOOR:
        return max(0.0, n - datetime.now(UTC).timestamp())
    return float(n)


def rate_limited(retry_after: str | None, body: Any, reset: str | None = None) -> ConnectorError:
    """A 429: not applied (a write can be sent again), retryable after ``Retry-After`` or, when
    the vendor sends none (Kustomer documents only ``x-ratelimit-reset``), its window's reset."""
    wait = retry_after_seconds(retry_after)
    if wait is None:
        wait = reset_seconds(reset)
        if wait is not None:
            wait = float(int(wait + 0.999))  # whole seconds, never early
    after = f"; retry after {wait:g} s" if wait is not None else ""
    return ConnectorError(
        ConnectorErrorCode.UPSTREAM_ERROR,
        f"rate limited by the upstream (HTTP 429: {upstream_message(body, 429)}){after}",
        status=429,
        retry_after_s=wait,
    )


def egress_error(exc: EgressRefused) -> ConnectorError:
    # Refused before any connection: the same answer whether or not anything listens there.
    return ConnectorError(
        ConnectorErrorCode.UPSTREAM_ERROR, f"refused by the egress policy: the URL {exc.reason}"
    )


class Upstream:
    """A vendor REST API at ``base_url`` with fixed auth headers, reached under the egress
    policy of ``livemode`` (test mode may reach loopback stand-ins)."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        livemode: bool,
        timeout_s: float = UPSTREAM_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._refused: EgressRefused | None = None
        try:
            self._client = egress_client(
                self.base_url,
                livemode=livemode,
                headers={"Accept": "application/json", **headers},
                timeout=httpx.Timeout(
                    timeout_s, connect=min(UPSTREAM_CONNECT_TIMEOUT_S, timeout_s)
                ),
                limits=httpx.Limits(max_connections=UPSTREAM_MAX_CONNECTIONS),
            )
        except EgressRefused as exc:  # reported by every request, like an unreachable host
            self._refused = exc

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one request; the decoded JSON body on 2xx, else a ``ConnectorError``."""
        write = method.upper() not in ("GET", "HEAD")
        if self._client is None:
            assert self._refused is not None
            raise egress_error(self._refused)
        try:
            resp = await self._client.request(method, path, params=params, json=json)
        except EgressRefused as exc:
            raise egress_error(exc) from None
        except (httpx.ConnectError, httpx.ConnectTimeout):
            # One message for refused, filtered and timed-out connects: which one it was
            # would tell a caller whether a port is open.
            raise ConnectorError(
                ConnectorErrorCode.UPSTREAM_ERROR, "upstream unreachable"
            ) from None
        except httpx.TimeoutException:
            raise ConnectorError(
                ConnectorErrorCode.UPSTREAM_ERROR, "upstream timed out", outcome_unknown=write
            ) from None
        except httpx.HTTPError as exc:
            raise ConnectorError(
                ConnectorErrorCode.UPSTREAM_ERROR,
                f"upstream transport error: {type(exc).__name__}",
                outcome_unknown=write,
            ) from None
        try:
            body = resp.json() if resp.content else None
        except ValueError:
            body = None
        if resp.status_code == 429:
            raise rate_limited(
                resp.headers.get("Retry-After"), body, resp.headers.get("x-ratelimit-reset")
            )
        if resp.status_code >= 400:
            raise error_for_status(resp.status_code, body, write=write)
        if 300 <= resp.status_code < 400:
            # Redirects are never followed (a bearer token must not travel to another URL).
            raise ConnectorError(
                ConnectorErrorCode.UPSTREAM_ERROR,
                f"upstream answered with a redirect (HTTP {resp.status_code}), not followed",
                status=resp.status_code,
                outcome_unknown=write,
            )
        if resp.content and body is None:
            raise ConnectorError(
                ConnectorErrorCode.UPSTREAM_ERROR,
                "upstream returned a non-JSON body",
                status=resp.status_code,
                outcome_unknown=write,
            )
        return body

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
