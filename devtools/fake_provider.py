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

import uvicorn
from fastapi import FastAPI, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class Message(BaseModel):
    channel: str
    to: str
    body: str
    subject: str | None = None
    # `from` is a keyword in Python.
    model_config = {"populate_by_name": True, "extra": "allow"}


@dataclass
class Behaviour:
    fail_pattern: re.Pattern[str] | None = None
    flaky_pattern: re.Pattern[str] | None = None
    latency_ms: float = 0.0


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    flaked: set[str] = field(default_factory=set)


def create_app(behaviour: Behaviour) -> FastAPI:
    app = FastAPI(title="Sendout fake provider")
    rec = Recorder()

    @app.post("/messages")
    async def send(
        message: Message, idempotency_key: str | None = Header(default=None)
    ) -> JSONResponse:
        entry: dict[str, Any] = {
            "at": time.time(), "idempotency_key": idempotency_key, "channel": message.channel,
            "to": message.to, "body": message.body, "subject": message.subject,
        }
        rec.requests.append(entry)
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_pattern and behaviour.fail_pattern.search(message.to):
            entry["status"] = 422
            return JSONResponse({"error": "recipient unreachable"}, status_code=422)
        if (
            behaviour.flaky_pattern
            and behaviour.flaky_pattern.search(message.to)
            and (idempotency_key or message.to) not in rec.flaked
        ):
            rec.flaked.add(idempotency_key or message.to)
            entry["status"] = 503
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        entry["status"] = 202
        entry["id"] = f"fake-{uuid.uuid4().hex}"
        return JSONResponse({"id": entry["id"]}, status_code=202)

    @app.get("/requests")
    async def requests(offset: int = Query(0, ge=0), limit: int = Query(10_000, le=100_000)):
        return {"requests": rec.requests[offset : offset + limit], "total": len(rec.requests)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for r in rec.requests:
            by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
        return {
            "requests": len(rec.requests),
            "unique_keys": len({r["idempotency_key"] for r in rec.requests}),
            "by_status": by_status,
        }

    @app.post("/reset")
    async def reset() -> dict[str, str]:
        rec.requests.clear()
        rec.flaked.clear()
        return {"status": "ok"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

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
    uvicorn.run(create_app(behaviour), host=args.host, port=args.port, log_level="warning",
                loop="uvloop")


if __name__ == "__main__":
    main()
