"""Receipts webhook rules, without a network: signatures, skew, body shapes, record keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.tracker.domain import Counts, Progress
from services.tracker.receipts_domain import (
    RECEIPT_BODY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Receipt,
    ReceiptRejected,
    receipts_of,
    reported,
    signature,
    verify,
)
from shared.events import RECEIPT, MessageSent

SECRET = b"s3cret"
NOW = 1_800_000_000.0
BODY = b'{"provider_message_id": "m1", "status": "delivered", "at": "2026-11-23T09:00:00Z"}'


def _headers(ts: float = NOW, secret: bytes = SECRET, body: bytes = BODY) -> dict[str, str]:
    stamp = str(int(ts))
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret, stamp, body)}


def test_a_request_signed_with_the_secret_and_recent_is_accepted() -> None:
    verify(SECRET, _headers(NOW - 299), BODY, now=NOW, max_skew_seconds=300)


@pytest.mark.parametrize(
    ("headers", "body", "why"),
    [
        ({}, BODY, "unsigned"),
        ({TIMESTAMP_HEADER: str(int(NOW))}, BODY, "unsigned"),
        (_headers(secret=b"other"), BODY, "bad signature"),
        (_headers(), BODY + b" ", "bad signature"),
        (_headers(NOW - 301), BODY, "stale"),
        (_headers(NOW + 301), BODY, "stale"),
        ({TIMESTAMP_HEADER: "yesterday", SIGNATURE_HEADER: "sha256=00"}, BODY, "Unix seconds"),
    ],
)
def test_unsigned_badly_signed_or_stale_requests_are_rejected(
    headers: dict[str, str], body: bytes, why: str
) -> None:
    with pytest.raises(ReceiptRejected, match=why):
        verify(SECRET, headers, body, now=NOW, max_skew_seconds=300)


def test_a_body_is_one_receipt_or_a_batch_and_status_is_delivered_or_not() -> None:
    one = RECEIPT_BODY.validate_json(BODY)
    batch = RECEIPT_BODY.validate_json(b'{"receipts": [' + BODY + b"," + BODY + b"]}")
    assert len(receipts_of(one)) == 1 and len(receipts_of(batch)) == 2
    with pytest.raises(ValidationError):
        RECEIPT_BODY.validate_json(BODY.replace(b'"delivered"', b'"lost"'))
    with pytest.raises(ValidationError):  # a time without a zone is ambiguous
        RECEIPT_BODY.validate_json(BODY.replace(b"09:00:00Z", b"09:00:00"))


def test_receipts_are_keyed_by_campaign_when_known_else_by_message_id() -> None:
    cid = uuid.uuid4()
    at = datetime(2026, 11, 23, 9, tzinfo=UTC)
    known = Receipt(provider_message_id="m1", status="delivered", at=at)
    early = Receipt(provider_message_id="m2", status="not_delivered", reason="landline", at=at)
    (k1, e1), (k2, e2) = reported([known, early], {"m1": cid})
    assert (k1, e1.campaign_id, e1.occurred_at) == (cid.bytes, cid, at)
    assert (k2, e2.campaign_id, e2.reason) == (b"m2", None, "landline")
    assert RECEIPT.validate_json(e2.to_bytes()) == e2


def test_outcomes_carry_the_address_and_progress_shows_delivery_counters() -> None:
    sent = MessageSent(campaign_id=uuid.uuid4(), recipient_id=1, channel="sms",
                       address="+4520000000", provider_message_id="m1")
    assert MessageSent.model_validate_json(sent.to_bytes()).address == "+4520000000"
    p = Progress(uuid.uuid4(), "sending", True,
                 {"sms": Counts(4, 3, 0, 0, delivered=2, not_delivered=1), "email": Counts(1)})
    view = p.view()
    assert (view["delivered"], view["not_delivered"]) == (2, 1)
    assert view["by_channel"]["sms"]["not_delivered"] == 1
