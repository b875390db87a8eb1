"""A local fake messaging provider (HTTP) for tests, the demo and benchmarks.

`POST /messages` answers like a real SMS/email API would, and the fake records every request
with its idempotency key so tests can check exactly what was (and was not) sent. Behaviour:
- `--fail-pattern REGEX`: addresses that match are refused for good (422, like a dead mailbox);
- `--flaky-pattern REGEX`: the first attempt for a matching address gets 503, retries succeed;
- `--latency-ms N`: every answer waits N ms.
- `--receipts-url URL --receipts-secret S`: for every accepted message, a signed delivery
  receipt is posted to URL shortly afterwards (batched, like real providers' callbacks);
  `--not-delivered-pattern REGEX` / `--not-delivered-reason TEXT`: matching addresses are
  reported not delivered with that reason, the others delivered. All four can be changed at run
  time through `POST /config`.
Loopback only; not a product component.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from devtools import lean_http


@dataclass
class Behaviour:
    fail_pattern: re.Pattern[str] | None = None
    flaky_pattern: re.Pattern[str] | None = None
    latency_ms: float = 0.0
    receipts_url: str | None = None
    receipts_secret: str = ""
    not_delivered_pattern: re.Pattern[str] | None = None
    not_delivered_reason: str = "unreachable handset"
    receipts_delay_ms: float = 50.0


def _signed(secret: str, body: bytes) -> dict[str, str]:
    """Headers of a receipts callback: HMAC-SHA256 over `<timestamp>.<body>`."""
    timestamp = str(int(time.time()))
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return {"content-type": "application/json", "X-Sendout-Timestamp": timestamp,
            "X-Sendout-Signature": f"sha256={mac.hexdigest()}"}


class ReceiptPoster:
    """Posts receipts in the background, in batches: one callback per message would make the
    fake, not Sendout, the bottleneck of a mass send."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._queue: list[dict[str, Any]] = []
        self._wakeup = asyncio.Event()
        self.posted = 0
        self.errors = 0

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /config` fields about receipts (each optional); the receipts state after."""
        b = self._behaviour
        if "receipts_url" in body:
            b.receipts_url = body["receipts_url"]
        if "receipts_secret" in body:
            b.receipts_secret = body["receipts_secret"]
        if "not_delivered_pattern" in body:
            pattern = body["not_delivered_pattern"]
            b.not_delivered_pattern = re.compile(pattern) if pattern else None
        if "not_delivered_reason" in body:
            b.not_delivered_reason = body["not_delivered_reason"]
        return {
            "receipts_url": b.receipts_url,
            "not_delivered_pattern": b.not_delivered_pattern.pattern
            if b.not_delivered_pattern else None,
            "not_delivered_reason": b.not_delivered_reason,
            "receipts_posted": self.posted, "receipts_errors": self.errors,
        }

    def start(self) -> asyncio.Task[None]:
        """Post receipts until the task returned is cancelled."""
        return asyncio.create_task(self.run())

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp `cleanup_ctx`: posts receipts while the app runs."""
        task = self.start()
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def receipt_for(self, message_id: str, to: str) -> None:
        b = self._behaviour
        if not b.receipts_url:
            return
        not_delivered = b.not_delivered_pattern is not None and b.not_delivered_pattern.search(to)
        self._queue.append({
            "provider_message_id": message_id,
            "status": "not_delivered" if not_delivered else "delivered",
            "reason": b.not_delivered_reason if not_delivered else None,
            "at": datetime.now(UTC).isoformat(),
        })
        self._wakeup.set()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                # "Shortly after accepting": the delay also gathers a batch.
                await asyncio.sleep(self._behaviour.receipts_delay_ms / 1000)
                while self._queue:
                    batch, self._queue = self._queue[:500], self._queue[500:]
                    await self._post(session, batch)

    async def _post(self, session: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> None:
        b = self._behaviour
        body = json.dumps({"receipts": batch}).encode()
        for _attempt in range(5):
            url = b.receipts_url
            if not url:
                return
            try:
                async with session.post(url, data=body,
                                        headers=_signed(b.receipts_secret, body)) as response:
                    if response.status < 500:
                        self.posted += len(batch) if response.status == 202 else 0
                        self.errors += 0 if response.status == 202 else 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)  # like a real provider: retry callbacks for a while
        self.errors += 1


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    flaked: set[str] = field(default_factory=set)


def create_routes(behaviour: Behaviour, poster: ReceiptPoster) -> lean_http.Routes:
    # On `lean_http`, not aiohttp's server: the fake must not be what bounds a benchmark.
    rec = Recorder()

    async def send(request: lean_http.Request) -> lean_http.Response:
        try:
            message = request.json()
            to, channel, body = str(message["to"]), message["channel"], message["body"]
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f"bad request: {exc}"}
        key = request.headers.get("idempotency-key")
        entry: dict[str, Any] = {
            "at": time.time(), "idempotency_key": key, "channel": channel, "to": to,
            "body": body, "subject": message.get("subject"),
        }
        rec.requests.append(entry)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_pattern and behaviour.fail_pattern.search(to):
            entry["status"] = 422
            return 422, {"error": "recipient unreachable"}
        if (behaviour.flaky_pattern and behaviour.flaky_pattern.search(to)
                and (key or to) not in rec.flaked):
            rec.flaked.add(key or to)
            entry["status"] = 503
            return 503, {"error": "temporarily unavailable"}
        entry["status"] = 202
        entry["id"] = f"fake-{uuid.uuid4().hex}"
        poster.receipt_for(entry["id"], to)
        return 202, {"id": entry["id"]}

    async def requests(request: lean_http.Request) -> lean_http.Response:
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", 10_000))
        return 200, {"requests": rec.requests[offset : offset + limit],
                     "total": len(rec.requests)}

    async def stats(request: lean_http.Request) -> lean_http.Response:
        by_status: dict[str, int] = {}
        for r in rec.requests:
            by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
        return 200, {
            "requests": len(rec.requests),
            "unique_keys": len({r["idempotency_key"] for r in rec.requests}),
            "by_status": by_status,
        }

    async def configure(request: lean_http.Request) -> lean_http.Response:
        """Change behaviour at run time, e.g. `{"latency_ms": 20}` for one test."""
        body = request.json()
        if not isinstance(body, dict):
            return 400, {"error": "a JSON object is expected"}
        if "latency_ms" in body:
            behaviour.latency_ms = float(body["latency_ms"])
        return 200, {"latency_ms": behaviour.latency_ms, **poster.configure(body)}

    async def reset(request: lean_http.Request) -> lean_http.Response:
        rec.requests.clear()
        rec.flaked.clear()
        return 200, {"status": "ok"}

    async def health(request: lean_http.Request) -> lean_http.Response:
        return 200, {"status": "ok"}

    return {
        ("POST", "/messages"): send,
        ("GET", "/requests"): requests,
        ("GET", "/stats"): stats,
        ("POST", "/reset"): reset,
        ("POST", "/config"): configure,
        ("GET", "/health"): health,
    }


async def serve(behaviour: Behaviour, host: str, port: int) -> None:
    poster = ReceiptPoster(behaviour)
    posting = poster.start()
    server = await lean_http.serve(create_routes(behaviour, poster), host, port)
    try:
        await server.serve_forever()
    finally:
        posting.cancel()


def add_receipt_options(parser: argparse.ArgumentParser, *, not_delivered_reason: str) -> None:
    parser.add_argument("--receipts-url")
    parser.add_argument("--receipts-secret", default="")
    parser.add_argument("--not-delivered-pattern")
    parser.add_argument("--not-delivered-reason", default=not_delivered_reason)


def receipt_options(args: argparse.Namespace) -> dict[str, Any]:
    """`Behaviour` fields from the options `add_receipt_options` added."""
    return {
        "receipts_url": args.receipts_url,
        "receipts_secret": args.receipts_secret,
        "not_delivered_pattern": re.compile(args.not_delivered_pattern)
        if args.not_delivered_pattern else None,
        "not_delivered_reason": args.not_delivered_reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--fail-pattern")
    parser.add_argument("--flaky-pattern")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    add_receipt_options(parser, not_delivered_reason="unreachable handset")
    args = parser.parse_args()
    behaviour = Behaviour(
        fail_pattern=re.compile(args.fail_pattern) if args.fail_pattern else None,
        flaky_pattern=re.compile(args.flaky_pattern) if args.flaky_pattern else None,
        latency_ms=args.latency_ms,
        **receipt_options(args),
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(behaviour, args.host, args.port))


if __name__ == "__main__":
    main()
