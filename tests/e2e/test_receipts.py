"""Delivery receipts and the recipient report through the service processes: the fake SMS
provider reports some numbers not delivered, progress splits `completed` into delivered / not
delivered, and the report lists each recipient with the provider's reason."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devtools.processes import Sendout
from services.tracker.receipts_domain import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.e2e.conftest import wait_for_completion
from tests.e2e.helpers import sms_campaign

pytestmark = pytest.mark.e2e


def _wait_for_receipts(http: httpx.Client, tracker: str, cid: str,
                       timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        p = http.get(f"{tracker}/campaigns/{cid}/progress").json()
        if p["delivered"] + p["not_delivered"] == p["completed"]:
            return dict(p)
        assert time.monotonic() < deadline, p
        time.sleep(0.1)


def test_sms_receipts_split_completed_into_delivered_and_not_delivered_and_the_report_says_why(
    sendout: Sendout, http: httpx.Client
) -> None:
    assert sendout.provider
    series = f"+45209{random.randrange(10)}"
    phones = [f"{series}{i:04d}" for i in range(30)]
    landlines = {p for i, p in enumerate(phones) if i % 3 == 0}
    pattern = "^(" + "|".join(re.escape(p) for p in sorted(landlines)) + ")$"
    cid = sms_campaign(http, sendout, phones, name="SMS receipts")
    http.post(f"{sendout.provider}/config", json={
        "not_delivered_pattern": pattern, "not_delivered_reason": "landline"}
    ).raise_for_status()
    try:
        http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
        final = wait_for_completion(http, sendout.tracker, cid)
        assert (final["total"], final["completed"]) == (30, 30)
        p = _wait_for_receipts(http, sendout.tracker, cid)
    finally:
        http.post(f"{sendout.provider}/config", json={"not_delivered_pattern": None})
    assert (p["delivered"], p["not_delivered"]) == (20, 10)
    assert (p["by_channel"]["sms"]["delivered"], p["by_channel"]["sms"]["not_delivered"]) \
        == (20, 10)

    r = http.get(f"{sendout.tracker}/campaigns/{cid}/report.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["address"] for row in rows] == phones  # by recipient id: CSV order
    for row in rows:
        assert (row["channel"], row["status"], row["reason"]) == ("sms", "completed", "")
        assert row["provider_message_id"].startswith("fake-")
        datetime.fromisoformat(row["processed_at"])
        if row["address"] in landlines:
            assert (row["delivery"], row["delivery_reason"]) == ("not_delivered", "landline")
        else:
            assert (row["delivery"], row["delivery_reason"]) == ("delivered", "")
        datetime.fromisoformat(row["delivered_at"])


def test_email_receipts_report_bounces_after_acceptance_with_their_reason(
    sendout: Sendout, http: httpx.Client
) -> None:
    """Email over SMTP: the mail server accepts (250), and the email service's event webhook
    later reports delivered, or bounced ("mailbox full"), naming the Message-ID we set."""
    assert sendout.smtp
    tag = f"rcpt-{uuid.uuid4().hex[:6]}"
    emails = [f"{tag}-{i}@example.org" for i in range(12)]
    full = {e for i, e in enumerate(emails) if i % 4 == 0}
    r = http.post(f"{sendout.scheduler}/campaigns", json={
        "name": "Email receipts", "channels": ["email"], "subject": "Hi {{ first_name }}",
        "template": "Vote, {{ first_name }}",
        "sender": {"name": "Office", "email": "office@example.org"}})
    cid = str(r.raise_for_status().json()["id"])
    http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients", json={"recipients": [
        {"email": e, "first_name": f"V{i}"} for i, e in enumerate(emails)]}).raise_for_status()
    pattern = "^(" + "|".join(re.escape(e) for e in sorted(full)) + ")$"
    http.post(f"{sendout.smtp}/config", json={
        "not_delivered_pattern": pattern, "not_delivered_reason": "mailbox full"}
    ).raise_for_status()
    try:
        http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
        assert wait_for_completion(http, sendout.tracker, cid)["completed"] == 12
        p = _wait_for_receipts(http, sendout.tracker, cid)
    finally:
        http.post(f"{sendout.smtp}/config", json={"not_delivered_pattern": None})
    assert (p["delivered"], p["not_delivered"]) == (9, 3)
    assert p["reasons"]["not_delivered"] == {"mailbox full": 3}
    assert p["by_channel"]["email"]["not_delivered"] == 3

    rows = list(csv.DictReader(io.StringIO(
        http.get(f"{sendout.tracker}/campaigns/{cid}/report.csv").text)))
    assert {row["address"]: (row["delivery"], row["delivery_reason"]) for row in rows} == {
        e: ("not_delivered", "mailbox full") if e in full else ("delivered", "")
        for e in emails}
    assert all(row["provider_message_id"].endswith("@sendout.local") for row in rows)


def test_receipts_webhook_rejects_unsigned_badly_signed_and_stale_requests(
    sendout: Sendout, http: httpx.Client
) -> None:
    secret = sendout.env["SENDOUT_RECEIPTS_SECRET"].encode()
    url = f"{sendout.tracker}/receipts"
    body = json.dumps({"provider_message_id": "e2e-never-sent", "status": "delivered",
                       "at": datetime.now(UTC).isoformat()}).encode()

    def signed(ts: float, key: bytes = secret, content: bytes = body) -> dict[str, str]:
        return {**sign(key, "POST", "/receipts", content, now=ts),
                "content-type": "application/json"}

    now = time.time()  # stale means > 300 s off; 360 leaves room for a slow machine
    assert http.post(url, content=body).status_code == 401
    assert http.post(url, content=body, headers={
        TIMESTAMP_HEADER: str(int(now)), SIGNATURE_HEADER: "sha256=" + "0" * 64}
    ).status_code == 401
    assert http.post(url, content=body, headers=signed(now, key=b"guess")).status_code == 401
    assert http.post(url, content=body, headers=signed(now - 360)).status_code == 401
    assert http.post(url, content=body, headers=signed(now + 360)).status_code == 401
    # Signed, but the body is not a receipt: 422 naming the field.
    bad = body.replace(b'"delivered"', b'"lost"')
    r = http.post(url, content=bad, headers=signed(now, content=bad))
    assert r.status_code == 422 and "status" in r.text
