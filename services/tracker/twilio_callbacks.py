"""Twilio's message status callbacks, turned into Sendout's delivery receipts.

Twilio posts `MessageSid`, `MessageStatus` (queued, sending, sent, delivered, undelivered,
failed, ...) and, for a message that did not arrive, `ErrorCode`, form-encoded and signed with
`X-Twilio-Signature` (shared/twilio.py) over the URL it called. `delivered` becomes Delivered,
`undelivered` / `failed` Not delivered with the reason; the other statuses are steps on the
way and change nothing. From here on the receipt goes the way of every receipt (published to
`sendout.receipts.v1`, projected by the tracker).

Twilio's scheme has no timestamp, so a captured callback could be posted again: applying a
receipt twice changes nothing (the projection sets a message's delivery status once).
The route is entrypoints/http/twilio_callbacks.py.
"""

from __future__ import annotations

from datetime import datetime

from services.tracker.receipts_domain import Receipt

PATH = "/providers/twilio/status"

# What Twilio's delivery error codes mean for the report (its public error reference).
ERROR_REASONS = {
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "carrier filtered the message",
    "30008": "unknown error",
    "30034": "sender number not registered (A2P 10DLC)",
    "21610": "recipient unsubscribed",
    "21614": "not a mobile number",
}
NOT_DELIVERED = frozenset({"undelivered", "failed"})


def receipt_of(params: dict[str, str], now: datetime) -> Receipt | None:
    """The receipt a callback carries, None for an intermediate status. Raises ValueError for
    a callback without a message sid or status."""
    sid, status = params.get("MessageSid") or params.get("SmsSid"), \
        params.get("MessageStatus") or params.get("SmsStatus")
    if not sid or not status:
        raise ValueError("MessageSid and MessageStatus are required")
    if status == "delivered":
        return Receipt(provider_message_id=sid, status="delivered", at=now)
    if status in NOT_DELIVERED:
        return Receipt(provider_message_id=sid, status="not_delivered",
                       reason=_not_delivered_reason(params, status), at=now)
    return None


def _not_delivered_reason(params: dict[str, str], status: str) -> str:
    """Twilio's error code in words (ours, else its ErrorMessage, else the status), with the
    code."""
    code = params.get("ErrorCode") or ""
    text = ERROR_REASONS.get(code) or params.get("ErrorMessage") or status
    return f"{text} (twilio {code})" if code else text
