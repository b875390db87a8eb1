"""A local SMTP sink (aiosmtpd) for tests and the demo, with an HTTP side to read what it got.

Every message is recorded with its idempotency key (header `X-Sendout-Idempotency-Key`), so
tests can check exactly what was and was not sent. Behaviour:
- `--fail-pattern REGEX`: matching recipients are refused for good (550 at RCPT);
- `--flaky-pattern REGEX`: the first delivery to a matching recipient gets 451, retries pass.
- `--receipts-url URL --receipts-secret S`: like an email service's event webhook, a signed
  delivery receipt for every accepted message (its Message-ID is the provider message id) is
  posted to URL shortly afterwards; `--not-delivered-pattern REGEX` / `--not-delivered-reason`
  (also through `POST /config`): matching addresses are reported not delivered (e.g. a bounce
  after acceptance, "mailbox full"). The same poster as the fake HTTP provider's.
HTTP (`--http-port`): GET /requests, GET /stats, GET /tally, POST /reset, POST /config,
GET /health — like the fake HTTP provider's (`/tally`: accepted messages per idempotency
key). Loopback only; not a product component.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import Any

import uvloop
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from devtools.fake_provider import (
    Behaviour,
    ReceiptPoster,
    Recorder,
    add_receipt_options,
    receipt_options,
)


@dataclass
class Sink:
    fail_pattern: re.Pattern[str] | None = None
    flaky_pattern: re.Pattern[str] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    flaked: set[str] = field(default_factory=set)
    # Receipts only (the other fields of the HTTP fake's behaviour are unused here).
    receipts: Behaviour = field(default_factory=Behaviour)
    poster: ReceiptPoster = field(init=False)

    def __post_init__(self) -> None:
        self.poster = ReceiptPoster(self.receipts)

    def _record(self, to: str, status: int, **extra: Any) -> None:
        self.requests.append({"at": time.time(), "channel": "email", "to": to,
                              "status": status, **extra})

    # aiosmtpd handler hooks
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.fail_pattern and self.fail_pattern.search(address):
            self._record(address, 550)
            return "550 5.1.1 mailbox unavailable"
        if self.flaky_pattern and self.flaky_pattern.search(address) \
                and address not in self.flaked:
            self.flaked.add(address)
            self._record(address, 451)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        message = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content().rstrip("\r\n") if body is not None else ""
        message_id = str(message["Message-ID"] or "").strip("<>")
        for to in envelope.rcpt_tos:
            self._record(
                to, 250, subject=str(message["Subject"] or ""), body=text,
                sender=str(message["From"] or ""),
                idempotency_key=str(message["X-Sendout-Idempotency-Key"] or ""),
                id=message_id,
            )
            if message_id:
                self.poster.receipt_for(message_id, to)
        return "250 Message accepted"


class _NoDelaySMTP(SMTP):
    """Replies go out at once (no Nagle delay), as a real MTA's do."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def http_app(sink: Sink) -> web.Application:
    async def requests(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", 10_000))
        return web.json_response({"requests": sink.requests[offset : offset + limit],
                                  "total": len(sink.requests)})

    async def stats(request: web.Request) -> web.Response:
        delivered = [r for r in sink.requests if r["status"] == 250]
        return web.json_response({
            "requests": len(sink.requests),
            "delivered": len(delivered),
            "unique_keys": len({r["idempotency_key"] for r in delivered}),
        })

    async def tally(request: web.Request) -> web.Response:
        rec = Recorder()
        for r in sink.requests:
            if r["status"] == 250:
                rec.accept(r.get("idempotency_key") or None, r["to"])
        return web.json_response(rec.tally(request.query.get("to_contains"),
                                           request.query.get("full") in ("1", "true")))

    async def reset(request: web.Request) -> web.Response:
        sink.requests.clear()
        sink.flaked.clear()
        return web.json_response({"status": "ok"})

    async def configure(request: web.Request) -> web.Response:
        return web.json_response(sink.poster.configure(await request.json()))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.cleanup_ctx.append(sink.poster.running)
    app.router.add_post("/config", configure)
    app.router.add_get("/requests", requests)
    app.router.add_get("/stats", stats)
    app.router.add_get("/tally", tally)
    app.router.add_post("/reset", reset)
    app.router.add_get("/health", health)
    return app


async def serve(sink: Sink, host: str, smtp_port: int, http_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _NoDelaySMTP(sink, hostname="sendout-sink"),
                                      host, smtp_port)
    runner = web.AppRunner(http_app(sink), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, http_port).start()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=8026)
    parser.add_argument("--http-port", type=int, default=8027)
    parser.add_argument("--fail-pattern")
    parser.add_argument("--flaky-pattern")
    add_receipt_options(parser, not_delivered_reason="mailbox full")
    args = parser.parse_args()
    sink = Sink(
        fail_pattern=re.compile(args.fail_pattern) if args.fail_pattern else None,
        flaky_pattern=re.compile(args.flaky_pattern) if args.flaky_pattern else None,
        receipts=Behaviour(**receipt_options(args)),
    )
    uvloop.run(serve(sink, args.host, args.smtp_port, args.http_port))


if __name__ == "__main__":
    main()
