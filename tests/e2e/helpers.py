"""Small clients for the e2e tests: the user's actions and what the fakes recorded."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from devtools.processes import Sendout
from tests.factories import campaign_payload


def create_campaign(http: httpx.Client, sendout: Sendout, **overrides: Any) -> str:
    r = http.post(f"{sendout.scheduler}/campaigns", json=campaign_payload(**overrides))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def sms_campaign(http: httpx.Client, sendout: Sendout, phones: list[str], *, name: str) -> str:
    """A campaign texting "Vote, {{ first_name }}" from "Office" to these numbers, uploaded as
    a CSV (first names V0, V1, ...); its id."""
    r = http.post(f"{sendout.scheduler}/campaigns", json={
        "name": name, "channels": ["sms"], "template": "Vote, {{ first_name }}",
        "sender": {"name": "Office", "sms_sender_id": "Office"}})
    assert r.status_code == 201, r.text
    cid = str(r.json()["id"])
    body = "phone,first_name\n" + "".join(f"{p},V{i}\n" for i, p in enumerate(phones))
    http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients.csv", content=body.encode(),
              headers={"content-type": "text/csv"}).raise_for_status()
    return cid


def add_recipients(http: httpx.Client, sendout: Sendout, cid: str,
                   recipients: list[dict[str, Any]]) -> None:
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients",
                  json={"recipients": recipients})
    assert r.status_code == 201, r.text


def campaign(http: httpx.Client, sendout: Sendout, cid: str) -> dict[str, Any]:
    return dict(http.get(f"{sendout.scheduler}/campaigns/{cid}").raise_for_status().json())


def wait_state(http: httpx.Client, sendout: Sendout, cid: str, states: set[str],
               timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        c = campaign(http, sendout, cid)
        if c["state"] in states:
            return c
        if time.monotonic() > deadline:
            raise AssertionError(f"campaign {cid} still {c['state']}, wanted {states}")
        time.sleep(0.05)


def requests_to(http: httpx.Client, fake_url: str | None, addresses: set[str]) -> list[dict]:
    """What a fake provider / SMTP sink recorded for these addresses."""
    assert fake_url
    got = http.get(f"{fake_url}/requests", params={"limit": 100_000}).raise_for_status().json()
    return [q for q in got["requests"] if q["to"] in addresses]


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def audit_actions(http: httpx.Client, sendout: Sendout, cid: str) -> list[str]:
    events = http.get(f"{sendout.scheduler}/campaigns/{cid}/audit").raise_for_status().json()
    return [e["action"] for e in events["events"]]


def sender_and_template(
    http: httpx.Client, sendout: Sendout, *, email_subject: str, email_body: str,
    sms_body: str, sms_sender_id: str = "Office",
) -> tuple[str, str]:
    """A stored sender (email and SMS) and template; their ids."""
    sender = http.post(f"{sendout.scheduler}/senders", json={
        "name": "Election Office", "email": "office@example.org",
        "sms_sender_id": sms_sender_id,
    }).raise_for_status().json()
    template = http.post(f"{sendout.scheduler}/templates", json={
        "name": "Template", "email_subject": email_subject, "email_body": email_body,
        "sms_body": sms_body,
    }).raise_for_status().json()
    return str(sender["id"]), str(template["id"])
