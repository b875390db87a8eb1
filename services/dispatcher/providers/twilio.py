"""SMS through a Twilio-compatible Messages API.

`POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded `To`, `From` (or
`MessagingServiceSid`), `Body` and `StatusCallback`, HTTP basic auth with the account SID and
auth token; 201 with the message resource, whose `sid` is the provider message id. Status
callbacks come back to the tracker (services/tracker/twilio_callbacks.py).

Errors: Twilio answers `{"code", "message", "more_info", "status"}`. 429 (with its
Retry-After), 5xx, timeouts and dropped connections are retryable; so are refusals that are
about our account or configuration rather than the message (authentication, an unknown
account, a `From` that is not ours, queue overflow): the messages wait on the retry schedule
and the breaker opens, instead of every voter failing for good over a typo in a setting. Other
4xx answers (21211 invalid `To`, 21610 unsubscribed recipient, 21614 not a mobile number,
21408 region not enabled, ...) are permanent for that message.

Twilio documents no idempotency key for sending messages: the `Idempotency-Key` header we send
is ignored by Twilio itself (a compatible provider may honour it), so keep
`SENDOUT_RESEND_IN_DOUBT` off with Twilio.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

from services.dispatcher.limiter import AdaptiveLimiter
from services.dispatcher.providers.base import (
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.providers.http import in_doubt, limited_request
from services.dispatcher.providers.http11 import Http11Pool, HttpError, Response

# Twilio error codes that say nothing about the message itself.
RETRYABLE_CODES = frozenset({
    20003,  # authentication failed
    20005,  # account not active
    20404,  # resource (account) not found
    20429,  # too many requests
    14107,  # SMS send rate limit exceeded
    21212,  # invalid From number
    21606,  # From number not SMS-capable
    21659,  # From is not a Twilio number of this account
    21703,  # Messaging Service has no phone numbers
    30001,  # queue overflow
})


class TwilioProvider:
    def __init__(
        self,
        base_url: str,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        timeout: float,
        max_connections: int,
        limiter: AdaptiveLimiter | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs an account SID and an auth token")
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs a From number or a Messaging Service SID")
        self._pool = Http11Pool(base_url, max_connections=max_connections)
        self._timeout = timeout
        self._limiter = limiter
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._head = (
            f"POST {self._pool.path_prefix}/2010-04-01/Accounts/{account_sid}/Messages.json "
            "HTTP/1.1\r\n"
            f"Host: {self._pool.host_header}\r\n"
            f"Authorization: Basic {credentials}\r\n"
            "Accept: application/json\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
        ).encode()
        fixed: list[tuple[str, str]] = []
        if messaging_service_sid:
            fixed.append(("MessagingServiceSid", messaging_service_sid))
        else:
            assert from_number is not None
            fixed.append(("From", from_number))
        if status_callback:
            fixed.append(("StatusCallback", status_callback))
        self._fixed = "&" + urlencode(fixed)

    async def send(self, message: OutgoingMessage) -> str:
        key = message.idempotency_key
        if "\r" in key or "\n" in key:
            raise PermanentProviderError("idempotency key with a line break")
        body = (urlencode({"To": message.to, "Body": message.body}) + self._fixed).encode()
        request = b"".join((
            self._head,
            f"Content-Length: {len(body)}\r\nIdempotency-Key: {key}\r\n\r\n".encode(),
            body,
        ))
        try:
            response = await limited_request(self._pool, request, self._timeout, self._limiter)
        except (OSError, HttpError, TimeoutError) as exc:
            # A connection refused: not sent. A timeout or a connection lost: perhaps accepted.
            raise RetryableProviderError(f"twilio {type(exc).__name__}: {exc}",
                                         in_doubt=in_doubt(exc)) from exc
        status = response.status
        parsed = _json_object(response.body)
        if status in (200, 201):
            sid = parsed.get("sid")
            if not sid:
                raise RetryableProviderError(f"twilio HTTP {status} without a message sid")
            return str(sid)
        raise _refusal(response, parsed)

    async def close(self) -> None:
        await self._pool.close()


def _json_object(body: bytes) -> dict[str, Any]:
    """The response's JSON object; empty if the body is empty or holds no object."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _refusal(
    response: Response, parsed: dict[str, Any]
) -> RetryableProviderError | PermanentProviderError:
    """The error of a response that is not an accepted message: retryable when the refusal says
    nothing about the message itself."""
    status = response.status
    code = parsed.get("code")
    text = str(parsed.get("message") or response.body[:300].decode(errors="replace"))
    reason = f"twilio {code or status}: {text}"[:500]
    if (status == 429 or status >= 500 or status in (401, 403, 404)
            or code in RETRYABLE_CODES):
        return RetryableProviderError(reason, retry_after=response.retry_after)
    return PermanentProviderError(reason)
