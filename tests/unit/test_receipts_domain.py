"""Receipts webhook rules, without a network: signatures, skew, body shapes, record keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.tracker.domain import Counts, Progress
from services.tracker.receipts_domain import (
    NONCE_HEADER,
    RECEIPT_BODY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Receipt,
    ReceiptRejected,
    receipts_of,
    reported,
    sign,
    verify,
)
from shared.events import RECEIPT, MessageSent

SECRET = b"s3cret"
NOW = 1_800_000_000.0
PATH = "/receipts"
NONCE = "n" * 32
BODY = b'{"provider_message_id": "m1", "status": "delivered", "at": "2026-11-23T09:00:00Z"}'


def _headers(ts: float = NOW, secret: bytes = SECRET, body: bytes = BODY, path: str = PATH,
             method: str = "POST") -> dict[str, str]:
    return sign(secret, method, path, body, now=ts, nonce=NONCE)


def _verify(headers: dict[str, str], body: bytes = BODY, path: str = PATH) -> None:
    verify(SECRET, "POST", path, headers, body, now=NOW, max_skew_seconds=300)


def test_a_request_signed_with_the_secret_for_its_target_and_recent_is_accepted() -> None:
    _verify(_headers(NOW - 299))
    assert _headers()[NONCE_HEADER] == NONCE
    assert sign(SECRET, "POST", PATH, BODY)[NONCE_HEADER] != sign(SECRET, "POST", PATH, BODY)[
        NONCE_HEADER]


@pytest.mark.parametrize(
    ("headers", "body", "why"),
    [
        ({}, BODY, "unsigned"),
        ({TIMESTAMP_HEADER: str(int(NOW))}, BODY, "unsigned"),
        ({k: v for k, v in _headers().items() if k != NONCE_HEADER}, BODY, "unsigned"),
        (_headers(secret=b"other"), BODY, "bad signature"),
        (_headers(), BODY + b" ", "bad signature"),
        # Signed for another target: another path (organisation) or method.
        (_headers(path="/organisations/a/inbound-sms"), BODY, "bad signature"),
        (_headers(method="PUT"), BODY, "bad signature"),
        (_headers(NOW - 301), BODY, "stale"),
        (_headers(NOW + 301), BODY, "stale"),
        ({TIMESTAMP_HEADER: "yesterday", NONCE_HEADER: NONCE, SIGNATURE_HEADER: "sha256=00"},
         BODY, "Unix seconds"),
        ({**_headers(), NONCE_HEADER: "short"}, BODY, NONCE_HEADER),
        # Any characters in the signature header: refused, not a TypeError.
        ({**_headers(), SIGNATURE_HEADER: "sha256=" + "é" * 64}, BODY, "sha256="),
    ],
)
def test_unsigned_badly_signed_mistargeted_or_stale_requests_are_rejected(
    headers: dict[str, str], body: bytes, why: str
) -> None:
    with pytest.raises(ReceiptRejected, match=why):
        _verify(headers, body)


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
