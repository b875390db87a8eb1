"""Signed webhooks (providers' receipts and inbound messages): who may post, to what, once.

Headers:
- `X-Sendout-Timestamp`: Unix seconds when the request was signed;
- `X-Sendout-Nonce`: a value unique to this request (16 to 128 characters of A-Z a-z 0-9 _ -,
  e.g. a random UUID's hex);
- `X-Sendout-Signature: sha256=<hex>`: HMAC-SHA256 with the shared secret over
  `<METHOD>\\n<path>\\n<timestamp>\\n<nonce>\\n<raw body>` (the path as the service receives it,
  e.g. `/organisations/<id>/inbound-sms`; the body's bytes as sent).

The method and path are signed, so a request signed for one target (one organisation's
inbound SMS) is refused at another; the timestamp is signed, so a captured request is refused
after the allowed skew; the nonce is signed and remembered for the skew window
(`NonceStore`), so a replay inside the window is refused too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import asyncpg
from fastapi import HTTPException, Request

TIMESTAMP_HEADER = "X-Sendout-Timestamp"
NONCE_HEADER = "X-Sendout-Nonce"
SIGNATURE_HEADER = "X-Sendout-Signature"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_SIGNATURE = re.compile(r"^sha256=[0-9a-f]{64}$")


class WebhookRejected(Exception):
    """The request is not from a party we share the secret with, or is a replay (→ 401)."""


def signed_bytes(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n".encode() + body


def signature(secret: bytes, method: str, path: str, timestamp: str, nonce: str,
              body: bytes) -> str:
    mac = hmac.new(secret, signed_bytes(method, path, timestamp, nonce, body), hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def sign(secret: bytes, method: str, path: str, body: bytes, *, now: float | None = None,
         nonce: str | None = None) -> dict[str, str]:
    """The three headers of a signed request (a fresh nonce unless one is given)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce,
            SIGNATURE_HEADER: signature(secret, method, path, timestamp, nonce, body)}


@dataclass(frozen=True)
class Claimed:
    """What the headers claim, checked for form and freshness before the body is read."""

    timestamp: str
    nonce: str
    signature: str


def check_headers(headers: Mapping[str, str], *, now: float, max_skew_seconds: float) -> Claimed:
    """Raise WebhookRejected unless the headers are present, well formed and recent: a request
    failing this is refused without reading its body."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    nonce = headers.get(NONCE_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not timestamp or not given or not nonce:
        raise WebhookRejected(
            f"unsigned: {TIMESTAMP_HEADER}, {NONCE_HEADER} and {SIGNATURE_HEADER} required")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(f"{TIMESTAMP_HEADER} must be Unix seconds") from None
    if abs(now - sent_at) > max_skew_seconds:
        raise WebhookRejected("stale timestamp")
    if not _NONCE.match(nonce):
        raise WebhookRejected(f"{NONCE_HEADER} must be 16 to 128 characters of A-Z a-z 0-9 _ -")
    if not _SIGNATURE.match(given):
        raise WebhookRejected(f"{SIGNATURE_HEADER} must be sha256=<64 lower-case hex digits>")
    return Claimed(timestamp, nonce, given)


def verify(secret: bytes, method: str, path: str, headers: Mapping[str, str], body: bytes, *,
           now: float, max_skew_seconds: float) -> Claimed:
    """Raise WebhookRejected unless the request is signed with `secret` for this method and
    path, and recent. Replays are the NonceStore's to refuse."""
    claimed = check_headers(headers, now=now, max_skew_seconds=max_skew_seconds)
    expected = signature(secret, method, path, claimed.timestamp, claimed.nonce, body)
    # Constant-time comparison of bytes (the header's characters are checked ASCII above).
    if not hmac.compare_digest(expected.encode(), claimed.signature.encode()):
        raise WebhookRejected("bad signature")
    return claimed


class NonceStore:
    """Nonces of accepted webhook requests, in the service's own `webhook_nonces` table, kept
    for the skew window (beyond it the timestamp refuses the request anyway): shared by all of
    a service's replicas."""

    def __init__(self, pool: asyncpg.Pool, window_seconds: float) -> None:
        self.pool = pool
        self.window_seconds = window_seconds

    async def claim(self, nonce: str) -> None:
        """Raise WebhookRejected if the nonce was seen inside the window; else remember it."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM webhook_nonces WHERE seen_at < now() - make_interval(secs => $1)",
                2 * self.window_seconds)
            first = await conn.fetchval(
                "INSERT INTO webhook_nonces (nonce) VALUES ($1) ON CONFLICT DO NOTHING "
                "RETURNING true", nonce)
        if not first:
            raise WebhookRejected("replayed: this request's nonce was already used")

    async def release(self, nonce: str) -> None:
        """Forget a nonce whose request was not carried out (e.g. Kafka was down), so the
        sender's retry of the same request is not taken for a replay."""
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM webhook_nonces WHERE nonce = $1", nonce)

    @contextlib.asynccontextmanager
    async def claimed(self, nonce: str) -> AsyncIterator[None]:
        """The block runs with the nonce claimed: HTTP 401 if it was used before; released if
        the block fails, so the sender's retry is not a replay."""
        try:
            await self.claim(nonce)
        except WebhookRejected as exc:
            raise HTTPException(401, str(exc)) from exc
        try:
            yield
        except BaseException:
            await self.release(nonce)
            raise


async def signed_body(
    request: Request, secret: bytes, *, max_skew_seconds: float
) -> tuple[bytes, Claimed]:
    """A webhook request's body (the raw bytes: the signature is over the body exactly as sent)
    and what its headers claim; HTTP 401 unless it is signed with `secret` for its method and
    path, and recent. Headers first: an unsigned or stale request is refused before its body
    is read."""
    try:
        check_headers(request.headers, now=time.time(), max_skew_seconds=max_skew_seconds)
        body = await request.body()
        claimed = verify(secret, request.method, request.url.path, request.headers, body,
                         now=time.time(), max_skew_seconds=max_skew_seconds)
    except WebhookRejected as exc:
        raise HTTPException(401, str(exc)) from exc
    return body, claimed
