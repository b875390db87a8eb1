"""A local fake messaging provider (HTTP) for tests, the demo and benchmarks.

`POST /messages` answers like a real SMS/email API would, and the fake records every request
with its idempotency key so tests can check exactly what was (and was not) sent. Behaviour:
- `--fail-pattern REGEX`: addresses that match are refused for good (422, like a dead mailbox);
- `--flaky-pattern REGEX`: the first attempt for a matching address gets 503, retries succeed;
- `--latency-ms N`: every answer waits N ms.
Loopback only; not a product component.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvloop
from aiohttp import web


@dataclass
class Behaviour:
    fail_pattern: re.Pattern[str] | None = None
    flaky_pattern: re.Pattern[str] | None = None
    latency_ms: float = 0.0


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    flaked: set[str] = field(default_factory=set)


def create_app(behaviour: Behaviour) -> web.Application:
    # aiohttp.web: a fake provider must not be what bounds a benchmark.
    rec = Recorder()

    async def send(request: web.Request) -> web.Response:
        try:
            message = await request.json()
            to, channel, body = str(message["to"]), message["channel"], message["body"]
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        key = request.headers.get("Idempotency-Key")
        entry: dict[str, Any] = {
            "at": time.time(), "idempotency_key": key, "channel": channel, "to": to,
            "body": body, "subject": message.get("subject"),
        }
        rec.requests.append(entry)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_pattern and behaviour.fail_pattern.search(to):
            entry["status"] = 422
            return web.json_response({"error": "recipient unreachable"}, status=422)
        if (behaviour.flaky_pattern and behaviour.flaky_pattern.search(to)
                and (key or to) not in rec.flaked):
            rec.flaked.add(key or to)
            entry["status"] = 503
            return web.json_response({"error": "temporarily unavailable"}, status=503)
        entry["status"] = 202
        entry["id"] = f"fake-{uuid.uuid4().hex}"
        return web.json_response({"id": entry["id"]}, status=202)

    async def requests(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", 10_000))
        return web.json_response(
            {"requests": rec.requests[offset : offset + limit], "total": len(rec.requests)}
        )

    async def stats(request: web.Request) -> web.Response:
        by_status: dict[str, int] = {}
        for r in rec.requests:
            by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
        return web.json_response({
            "requests": len(rec.requests),
            "unique_keys": len({r["idempotency_key"] for r in rec.requests}),
            "by_status": by_status,
        })

    async def configure(request: web.Request) -> web.Response:
        """Change behaviour at run time, e.g. `{"latency_ms": 20}` for one test."""
        body = await request.json()
        if "latency_ms" in body:
            behaviour.latency_ms = float(body["latency_ms"])
        return web.json_response({"latency_ms": behaviour.latency_ms})

    async def reset(request: web.Request) -> web.Response:
        rec.requests.clear()
        rec.flaked.clear()
        return web.json_response({"status": "ok"})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/messages", send)
    app.router.add_get("/requests", requests)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/config", configure)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--fail-pattern")
    parser.add_argument("--flaky-pattern")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    behaviour = Behaviour(
        fail_pattern=re.compile(args.fail_pattern) if args.fail_pattern else None,
        flaky_pattern=re.compile(args.flaky_pattern) if args.flaky_pattern else None,
        latency_ms=args.latency_ms,
    )
    uvloop.install()
    web.run_app(create_app(behaviour), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
