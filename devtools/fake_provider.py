"""A local fake messaging provider (HTTP) for tests, the demo and benchmarks.

`POST /messages` answers like a real SMS/email API would, and the fake records every request
with its idempotency key so tests can check exactly what was (and was not) sent. Behaviour:
- `--fail-pattern REGEX`: addresses that match are refused for good (422, like a dead mailbox);
- `--flaky-pattern REGEX`: the first attempt for a matching address gets 503, retries succeed;
- `--latency-ms N`: every answer waits N ms.
- Faults, set at run time through `POST /config` (all optional, fractions of `POST /messages`
  calls drawn at random): `error_500` (answer 500), `error_429` (answer 429 with
  `Retry-After: <retry_after_seconds>`), `hang` (say nothing for `hang_seconds`, then close the
  connection without an answer: nothing accepted), and `outage`: `"refuse"` (stop listening
  and hang up on every request of an open connection, like a provider that is down) or `"503"`
  (answer 503 to everything); `null` ends it. During a "refuse" outage the other routes stay
  reachable on `--control-port`. `seed` makes the draws repeatable.
- `GET /tally[?to_contains=TEXT][&full=1]`: accepted calls (202) per idempotency key — a
  provider that honours the key would answer a repeat with the same id, this one counts each
  acceptance so that repeats show: total accepted, distinct keys, keys accepted more than once
  (with their counts), and with `full=1` every key with its address and count.
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
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvloop
from aiohttp import web

from devtools import lean_http
from shared import webhooks


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


def _signed(secret: str, url: str, body: bytes) -> dict[str, str]:
    """Headers of a receipts callback, signed for its target (shared/webhooks.py): method,
    path, timestamp, a fresh nonce and the body."""
    path = urlsplit(url).path or "/"
    return {"content-type": "application/json",
            **webhooks.sign(secret.encode(), "POST", path, body)}


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
                                        headers=_signed(b.receipts_secret, url, body)) as response:
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
    # Acceptances per idempotency key (a request without one counts under its address).
    accepted: dict[str, int] = field(default_factory=dict)
    accepted_to: dict[str, str] = field(default_factory=dict)

    def accept(self, key: str | None, to: str) -> None:
        k = key or f"to:{to}"
        self.accepted[k] = self.accepted.get(k, 0) + 1
        self.accepted_to[k] = to

    def clear(self) -> None:
        self.requests.clear()
        self.flaked.clear()
        self.accepted.clear()
        self.accepted_to.clear()

    def tally(self, to_contains: str | None, full: bool) -> dict[str, Any]:
        keys = [k for k in self.accepted
                if to_contains is None or to_contains in self.accepted_to[k]]
        repeated = {k: self.accepted[k] for k in keys if self.accepted[k] > 1}
        out: dict[str, Any] = {
            "accepted": sum(self.accepted[k] for k in keys),
            "keys": len(keys),
            "keys_accepted_more_than_once": len(repeated),
            "repeated_acceptances": sum(n - 1 for n in repeated.values()),
            "repeated": dict(list(repeated.items())[:1000]),
        }
        if full:
            out["per_key"] = [[k, self.accepted_to[k], self.accepted[k]] for k in keys]
        return out


def tally_route(rec: Recorder) -> lean_http.Handler:
    async def tally(request: lean_http.Request) -> lean_http.Response:
        return 200, rec.tally(request.query.get("to_contains"),
                              request.query.get("full") in ("1", "true"))
    return tally


@dataclass
class Faults:
    """Injected provider failures (see the module's docstring)."""

    error_500: float = 0.0
    error_429: float = 0.0
    retry_after_seconds: int = 1
    hang: float = 0.0
    hang_seconds: float = 30.0
    outage: str | None = None  # "refuse" | "503" | None
    rng: random.Random = field(default_factory=random.Random)
    # Called with the new outage mode: stops or restarts listening (set by `serve`).
    on_outage: Any = None

    async def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        for name in ("error_500", "error_429", "hang"):
            if name in body:
                value = float(body[name])
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be a fraction between 0 and 1")
                setattr(self, name, value)
        if self.error_500 + self.error_429 + self.hang > 1.0:
            raise ValueError("error_500 + error_429 + hang must not exceed 1")
        if "retry_after_seconds" in body:
            self.retry_after_seconds = int(body["retry_after_seconds"])
        if "hang_seconds" in body:
            self.hang_seconds = float(body["hang_seconds"])
        if "seed" in body:
            self.rng.seed(body["seed"])
        if "outage" in body:
            mode = body["outage"]
            if mode not in (None, "refuse", "503"):
                raise ValueError("outage is one of null, \"refuse\", \"503\"")
            if mode != self.outage:
                self.outage = mode
                if self.on_outage is not None:
                    await self.on_outage(mode)
        return {"error_500": self.error_500, "error_429": self.error_429,
                "retry_after_seconds": self.retry_after_seconds, "hang": self.hang,
                "hang_seconds": self.hang_seconds, "outage": self.outage}

    async def injected(self) -> lean_http.Response | None:
        """The failure this call gets, if any (None: handle it normally)."""
        if self.outage == "refuse":
            return lean_http.DROP
        if self.outage == "503":
            return 503, {"error": "service unavailable (outage)"}
        draw = self.rng.random()
        if draw < self.error_500:
            return 500, {"error": "internal error (injected)"}
        draw -= self.error_500
        if draw < self.error_429:
            return (429, {"error": "too many requests (injected)"},
                    {"retry-after": str(self.retry_after_seconds)})
        draw -= self.error_429
        if draw < self.hang:
            await asyncio.sleep(self.hang_seconds)
            return lean_http.DROP
        return None


def create_routes(behaviour: Behaviour, poster: ReceiptPoster,
                  faults: Faults | None = None) -> lean_http.Routes:
    # On `lean_http`, not aiohttp's server: the fake must not be what bounds a benchmark.
    rec = Recorder()
    faults = faults if faults is not None else Faults()

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
        fault = await faults.injected()
        if fault is not None:
            entry["status"] = fault[0] or "dropped"
            return fault
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
        rec.accept(key, to)
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
        try:
            fault_state = await faults.configure(body)
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 200, {"latency_ms": behaviour.latency_ms, **poster.configure(body),
                     **fault_state}

    async def reset(request: lean_http.Request) -> lean_http.Response:
        rec.clear()
        return 200, {"status": "ok"}

    async def health(request: lean_http.Request) -> lean_http.Response:
        return 200, {"status": "ok"}

    return {
        ("POST", "/messages"): send,
        ("GET", "/requests"): requests,
        ("GET", "/stats"): stats,
        ("GET", "/tally"): tally_route(rec),
        ("POST", "/reset"): reset,
        ("POST", "/config"): configure,
        ("GET", "/health"): health,
    }


async def serve(behaviour: Behaviour, host: str, port: int,
                control_port: int | None = None) -> None:
    poster = ReceiptPoster(behaviour)
    posting = poster.start()
    faults = Faults()
    routes = create_routes(behaviour, poster, faults)
    servers = [await lean_http.serve(routes, host, port)]
    # Everything but `POST /messages`, on a port that stays open during a "refuse" outage.
    control = None if control_port is None else await lean_http.serve(
        {k: v for k, v in routes.items() if k != ("POST", "/messages")}, host, control_port)
    done = asyncio.Event()

    async def on_outage(mode: str | None) -> None:
        # "refuse": stop listening (new connections are refused) until the outage ends; then
        # listen again on the same port. The answer to `POST /config` itself goes out on its
        # already open connection.
        if mode == "refuse" and servers:
            servers.pop().close()
        elif mode != "refuse" and not servers:
            servers.append(await lean_http.serve(routes, host, port))

    faults.on_outage = on_outage
    try:
        await done.wait()
    finally:
        posting.cancel()
        for server in servers:
            server.close()
        if control is not None:
            control.close()


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
    parser.add_argument("--control-port", type=int, default=None,
                        help="also serve every route but POST /messages here (it stays open "
                             "during an outage of mode \"refuse\")")
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
        uvloop.run(serve(behaviour, args.host, args.port, args.control_port))


if __name__ == "__main__":
    main()
