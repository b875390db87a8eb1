"""A local fake of Twilio's Messages API, for tests and the demo (loopback only; not a product
component). Written from Twilio's public API reference:

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`, `From` or
  `MessagingServiceSid`, `Body`, `StatusCallback`; HTTP basic auth with the account SID and
  auth token. 201 with the Message resource (`sid` "SM" + 32 hex digits, `status` "queued");
  errors as Twilio's `{"code", "message", "more_info", "status"}`: 20003 (401, bad
  credentials), 21602 (no Body), 21603 (no From), 21604 (no To), 21211 (To not a valid phone
  number: not E.164), 21610 (recipient unsubscribed: `--unsubscribed-pattern`), 20429 (429
  with Retry-After, `error_429` fraction), 500 (`error_500` fraction), 503 (`outage` "503");
  `outage` "hang": no answer for `hang_seconds`, then the connection closed, nothing accepted
  (a provider down behind a load balancer that holds the connection: the client times out).
- Status callbacks: for every accepted message with a `StatusCallback`, `sent` then
  `delivered` — or `undelivered` with `ErrorCode` 30003 for numbers matching
  `--undelivered-pattern`, `failed` with 30008 for `--failed-pattern` — posted form-encoded with
  `X-Twilio-Signature` (shared/twilio.py), each retried a few times on errors.
- `POST /_fake/inbound {"url", "from", "to", "body"}`: posts an inbound-message webhook (as
  Twilio does when a recipient replies, e.g. STOP) to `url`, signed.
- Like the other fakes: `GET /requests`, `GET /stats`, `GET /tally` (acceptances per
  `Idempotency-Key` header), `POST /reset`, `POST /config` (`latency_ms`, `error_500`,
  `error_429`, `retry_after_seconds`, `outage`: "503" | "hang" | null, `hang_seconds`, the
  patterns, `callbacks`:
  false to stop posting callbacks), `GET /callbacks` (what was posted and the answers),
  `GET /health`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlencode

import aiohttp
import uvloop
from aiohttp import web

from devtools.fake_provider import Recorder
from shared import twilio

API = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@dataclass
class Behaviour:
    account_sid: str
    auth_token: str
    latency_ms: float = 0.0
    unsubscribed_pattern: re.Pattern[str] | None = None
    undelivered_pattern: re.Pattern[str] | None = None
    failed_pattern: re.Pattern[str] | None = None
    error_500: float = 0.0
    error_429: float = 0.0
    retry_after_seconds: int = 1
    outage: str | None = None
    hang_seconds: float = 30.0
    callbacks: bool = True
    callback_delay_ms: float = 50.0
    rng: random.Random = field(default_factory=random.Random)


def _error(status: int, code: int, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}",
                              "status": status}, status=status, headers=headers)


class Callbacks:
    """Posts status callbacks and inbound webhooks in the background, signed."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._queue: asyncio.Queue[tuple[str, list[tuple[str, str]], float]] = asyncio.Queue()
        self.posted: list[dict[str, Any]] = []

    def post(self, url: str, params: list[tuple[str, str]], delay: float = 0.0) -> None:
        self._queue.put_nowait((url, params, time.monotonic() + delay))

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self._run()) for _ in range(8)]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                url, params, due = await self._queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await self._send(session, url, params)

    async def _send(self, session: aiohttp.ClientSession, url: str,
                    params: list[tuple[str, str]]) -> None:
        headers = {twilio.SIGNATURE_HEADER:
                   twilio.signature(self._behaviour.auth_token, url, params),
                   "Content-Type": "application/x-www-form-urlencoded",
                   "User-Agent": "TwilioProxy/1.1"}
        record: dict[str, Any] = {"url": url, "params": dict(params), "status": None}
        self.posted.append(record)
        for _attempt in range(5):
            try:
                async with session.post(url, data=urlencode(params), headers=headers) as resp:
                    record["status"] = resp.status
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["status"] = f"error: {exc}"
            await asyncio.sleep(0.5)


def create_app(behaviour: Behaviour) -> web.Application:
    rec = Recorder()
    callbacks = Callbacks(behaviour)
    b = behaviour

    def authorised(request: web.Request, account_sid: str) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == b.account_sid == account_sid and password == b.auth_token

    async def create_message(request: web.Request) -> web.Response:
        account_sid = request.match_info["sid"]
        form = await request.post()
        to, sender = str(form.get("To", "")), str(form.get("From", ""))
        service, body = str(form.get("MessagingServiceSid", "")), str(form.get("Body", ""))
        callback = str(form.get("StatusCallback", "")) or None
        key = request.headers.get("Idempotency-Key")
        entry: dict[str, Any] = {"at": time.time(), "idempotency_key": key, "to": to,
                                 "from": sender or None, "messaging_service_sid": service or None,
                                 "body": body, "status_callback": callback}
        rec.requests.append(entry)

        def refuse(response: web.Response) -> web.Response:
            entry["status"] = response.status
            return response

        if not authorised(request, account_sid):
            return refuse(_error(401, 20003, "Authentication Error - invalid username"))
        if b.outage == "503":
            return refuse(_error(503, 20500, "Service Unavailable"))
        if b.outage == "hang":
            entry["status"] = "hung"
            await asyncio.sleep(b.hang_seconds)
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("hung up")
        draw = b.rng.random()
        if draw < b.error_500:
            return refuse(_error(500, 20500, "Internal Server Error"))
        if draw < b.error_500 + b.error_429:
            return refuse(_error(429, 20429, "Too Many Requests",
                                 {"Retry-After": str(b.retry_after_seconds)}))
        if b.latency_ms:
            await asyncio.sleep(b.latency_ms / 1000)
        if not to:
            return refuse(_error(400, 21604, "A 'To' phone number is required."))
        if not (sender or service):
            return refuse(_error(400, 21603, "A 'From' phone number is required."))
        if not body:
            return refuse(_error(400, 21602, "Message body is required."))
        if not E164.match(to):
            return refuse(_error(400, 21211, f"The 'To' number {to} is not a valid phone "
                                             "number."))
        if b.unsubscribed_pattern and b.unsubscribed_pattern.search(to):
            return refuse(_error(400, 21610, "Attempt to send to unsubscribed recipient"))
        sid = f"SM{uuid.uuid4().hex}"
        now = formatdate(usegmt=True)
        entry.update(status=201, sid=sid)
        rec.accept(key, to)
        if callback and b.callbacks:
            base = [("AccountSid", account_sid), ("ApiVersion", API), ("From", sender),
                    ("MessageSid", sid), ("SmsSid", sid), ("To", to)]
            if service:
                base.append(("MessagingServiceSid", service))
            delay = b.callback_delay_ms / 1000
            callbacks.post(callback, [*base, ("MessageStatus", "sent"),
                                      ("SmsStatus", "sent")], delay)
            if b.failed_pattern and b.failed_pattern.search(to):
                final = [("MessageStatus", "failed"), ("SmsStatus", "failed"),
                         ("ErrorCode", "30008")]
            elif b.undelivered_pattern and b.undelivered_pattern.search(to):
                final = [("MessageStatus", "undelivered"), ("SmsStatus", "undelivered"),
                         ("ErrorCode", "30003")]
            else:
                final = [("MessageStatus", "delivered"), ("SmsStatus", "delivered")]
            callbacks.post(callback, [*base, *final], delay * 2)
        return web.json_response({
            "account_sid": account_sid, "api_version": API, "body": body,
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": sender or None, "messaging_service_sid": service or None,
            "num_media": "0", "num_segments": "1", "price": None, "price_unit": "USD",
            "sid": sid, "status": "queued",
            "subresource_uris": {
                "media": f"/{API}/Accounts/{account_sid}/Messages/{sid}/Media.json"},
            "to": to, "uri": f"/{API}/Accounts/{account_sid}/Messages/{sid}.json",
        }, status=201)

    async def inbound(request: web.Request) -> web.Response:
        body = await request.json()
        sid = f"SM{uuid.uuid4().hex}"
        params = [("AccountSid", b.account_sid), ("ApiVersion", API), ("Body", body["body"]),
                  ("From", body["from"]), ("MessageSid", sid), ("NumMedia", "0"),
                  ("NumSegments", "1"), ("SmsMessageSid", sid), ("SmsSid", sid),
                  ("SmsStatus", "received"), ("To", body.get("to", "+15005550006"))]
        if body["body"].strip().upper() in ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END",
                                            "QUIT"):
            params.append(("OptOutType", "STOP"))
        callbacks.post(body["url"], params)
        return web.json_response({"MessageSid": sid}, status=202)

    async def requests(request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", 10_000))
        return web.json_response({"requests": rec.requests[offset:offset + limit],
                                  "total": len(rec.requests)})

    async def stats(request: web.Request) -> web.Response:
        by_status: dict[str, int] = {}
        for r in rec.requests:
            by_status[str(r.get("status"))] = by_status.get(str(r.get("status")), 0) + 1
        return web.json_response({"requests": len(rec.requests), "by_status": by_status})

    async def tally(request: web.Request) -> web.Response:
        return web.json_response(rec.tally(request.query.get("to_contains"),
                                           request.query.get("full") in ("1", "true")))

    async def posted(request: web.Request) -> web.Response:
        return web.json_response({"callbacks": callbacks.posted})

    async def reset(request: web.Request) -> web.Response:
        rec.clear()
        callbacks.posted.clear()
        return web.json_response({"status": "ok"})

    async def configure(request: web.Request) -> web.Response:
        body = await request.json()
        for name in ("latency_ms", "error_500", "error_429"):
            if name in body:
                setattr(b, name, float(body[name]))
        if "retry_after_seconds" in body:
            b.retry_after_seconds = int(body["retry_after_seconds"])
        if "outage" in body:
            if body["outage"] not in (None, "503", "hang"):
                return web.json_response({"error": 'outage is "503", "hang" or null'},
                                         status=400)
            b.outage = body["outage"]
        if "hang_seconds" in body:
            b.hang_seconds = float(body["hang_seconds"])
        if "callbacks" in body:
            b.callbacks = bool(body["callbacks"])
        for name in ("unsubscribed_pattern", "undelivered_pattern", "failed_pattern"):
            if name in body:
                setattr(b, name, re.compile(body[name]) if body[name] else None)
        return web.json_response({
            "latency_ms": b.latency_ms, "error_500": b.error_500, "error_429": b.error_429,
            "outage": b.outage, "hang_seconds": b.hang_seconds, "callbacks": b.callbacks})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.cleanup_ctx.append(callbacks.running)
    app.router.add_post(f"/{API}/Accounts/{{sid}}/Messages.json", create_message)
    app.router.add_post("/_fake/inbound", inbound)
    app.router.add_get("/requests", requests)
    app.router.add_get("/stats", stats)
    app.router.add_get("/tally", tally)
    app.router.add_get("/callbacks", posted)
    app.router.add_post("/reset", reset)
    app.router.add_post("/config", configure)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8029)
    parser.add_argument("--account-sid", default="AC" + "0" * 32)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--unsubscribed-pattern")
    parser.add_argument("--undelivered-pattern")
    parser.add_argument("--failed-pattern")
    args = parser.parse_args()

    def pattern(value: str | None) -> re.Pattern[str] | None:
        return re.compile(value) if value else None

    behaviour = Behaviour(
        account_sid=args.account_sid, auth_token=args.auth_token, latency_ms=args.latency_ms,
        unsubscribed_pattern=pattern(args.unsubscribed_pattern),
        undelivered_pattern=pattern(args.undelivered_pattern),
        failed_pattern=pattern(args.failed_pattern),
    )
    uvloop.run(serve(create_app(behaviour), args.host, args.port))


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
