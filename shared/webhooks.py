"""Signed webhooks (providers' receipts and inbound messages): who may post.

Signature: `X-Sendout-Signature: sha256=<hex>` where hex is HMAC-SHA256 with the shared secret
over `<X-Sendout-Timestamp>.<raw body>` (Unix seconds, a dot, the bytes as sent). The
timestamp is signed so that a captured request cannot be replayed later than the allowed skew.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-Sendout-Timestamp"
SIGNATURE_HEADER = "X-Sendout-Signature"


class WebhookRejected(Exception):
    """The request is not from a party we share the secret with (→ 401)."""


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    max_skew_seconds: float,
) -> None:
    """Raise WebhookRejected unless the request is signed with `secret` and recent."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not timestamp or not given:
        raise WebhookRejected(f"unsigned: {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} required")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(f"{TIMESTAMP_HEADER} must be Unix seconds") from None
    if abs(now - sent_at) > max_skew_seconds:
        raise WebhookRejected("stale timestamp")
    # Constant-time comparison: the signature must not leak through answer timing.
    if not hmac.compare_digest(signature(secret, timestamp, body), given):
        raise WebhookRejected("bad signature")
