"""Erasure reaches every copy: after `DELETE /voters/{id}?erase=true` none of the three
services holds the voter's email or phone — the scheduler's recipient copy, the tracker's
report rows and voter history, the dispatcher's recorded outcomes — for a finished campaign at
once, and for a campaign still sending when it ends. The rows stay (statuses, counts)."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx
import pytest

from devtools.processes import Sendout
from tests.conftest import Stack
from tests.e2e.conftest import wait_for_completion
from tests.e2e.helpers import requests_to, sender_and_template, wait_state
from tests.voter_factories import run_tag, voters_csv

pytestmark = pytest.mark.e2e


def _copies(database_url: str, cid: str) -> dict[str, list[Any]]:
    """What each service's tables hold for the campaign's recipients."""

    async def query() -> dict[str, list[Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            campaign = uuid.UUID(cid)
            return {
                "scheduler": [tuple(r) for r in await conn.fetch(
                    "SELECT email, phone, first_name FROM scheduler.recipients "
                    "WHERE campaign_id = $1", campaign)],
                "tracker": [tuple(r) for r in await conn.fetch(
                    "SELECT channel, address, voter_id, status FROM tracker.recipient_outcomes "
                    "WHERE campaign_id = $1 ORDER BY channel", campaign)],
                "dispatcher": [r["outcome"] for r in await conn.fetch(
                    "SELECT outcome::text AS outcome FROM dispatcher.deliveries "
                    "WHERE campaign_id = $1 ORDER BY channel", campaign)],
            }
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, query()).result()


def _eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _holds(copies: dict[str, list[Any]], *texts: str) -> set[str]:
    """The services whose rows still contain any of `texts`."""
    return {service for service, rows in copies.items()
            if any(t in str(row) for row in rows for t in texts)}


def test_erasing_a_voter_blanks_every_services_copy_of_a_finished_campaign(
    sendout: Sendout, http: httpx.Client, stack: Stack
) -> None:
    s = sendout.scheduler
    tag = uuid.uuid4().hex[:8]
    email, phone = f"erase-{tag}@example.org", f"+4541{100_000 + int(tag, 16) % 900_000}"
    r = http.post(f"{s}/voters", json={"first_name": "Eva", "email": email, "phone": phone})
    assert r.status_code == 201, r.text
    voter = r.json()
    sender, template = sender_and_template(http, sendout, email_subject="Hi",
                                           email_body="Vote {{ first_name }}", sms_body="Vote")
    cid = http.post(f"{s}/voters/{voter['id']}/send", json={
        "channels": ["email", "sms"], "sender_id": sender, "template_id": template,
    }).raise_for_status().json()["id"]
    wait_for_completion(http, sendout.tracker, cid)
    wait_state(http, sendout, cid, {"completed"})  # the scheduler learns it from the tracker
    before = _eventually(lambda: _assert_all_hold(_copies(stack.database_url, cid), email))
    assert _holds(before, phone) == {"scheduler", "tracker", "dispatcher"}
    history = http.get(f"{sendout.tracker}/voters/{voter['id']}/history").json()["history"]
    assert {h["campaign_id"] for h in history} == {cid}

    r = http.delete(f"{s}/voters/{voter['id']}", params={"erase": "true"})
    assert r.json() == {"deleted": voter["id"], "campaigns": 1, "erased": 1,
                        "erase_when_finished": 0}, r.text

    after = _eventually(lambda: _assert_none_hold(_copies(stack.database_url, cid), email,
                                                  phone))
    assert [row[3] for row in after["tracker"]] == ["completed", "completed"]  # rows kept
    assert len(after["dispatcher"]) == 2
    report = list(csv.DictReader(io.StringIO(
        http.get(f"{sendout.tracker}/campaigns/{cid}/report.csv").raise_for_status().text)))
    assert [(row["channel"], row["address"], row["status"]) for row in report] == [
        ("email", "", "completed"), ("sms", "", "completed")]
    assert http.get(f"{sendout.tracker}/voters/{voter['id']}/history").json()["history"] == []


def test_erasing_a_voter_of_a_campaign_still_sending_blanks_every_copy_when_it_ends(
    sendout: Sendout, http: httpx.Client, stack: Stack
) -> None:
    s = sendout.scheduler
    tag = run_tag()
    list_id = http.post(f"{s}/lists", json={"name": f"erase {tag}"}).raise_for_status().json()[
        "id"]
    r = http.post(f"{s}/lists/{list_id}/voters.csv", content=voters_csv(tag, 300)[0],
                  headers={"content-type": "text/csv"})
    assert r.json()["inserted"] == 300, r.text
    sender, template = sender_and_template(http, sendout, email_subject="Hi",
                                           email_body="Vote", sms_body="Vote")
    cid = http.post(f"{s}/campaigns", json={
        "name": "Erase mid-send", "channels": ["email"], "sender_id": sender,
        "template_id": template}).raise_for_status().json()["id"]
    http.post(f"{s}/campaigns/{cid}/lists", json={"list_ids": [list_id]}).raise_for_status()
    email = f"{tag}.v150@example.org"
    voter = http.get(f"{s}/voters", params={"q": email}).raise_for_status().json()["voters"][0]

    http.post(f"{s}/campaigns/{cid}/send-now").raise_for_status()
    r = http.delete(f"{s}/voters/{voter['id']}", params={"erase": "true"})
    assert r.json()["erase_when_finished"] == 1, r.text  # still sending: erased at its end
    wait_for_completion(http, sendout.tracker, cid)
    # The copy taken when the campaign started was sent to, then erased everywhere.
    assert requests_to(http, sendout.smtp, {email})
    after = _eventually(lambda: _assert_none_hold(_copies(stack.database_url, cid), email))
    assert len(after["tracker"]) == 300 and len(after["dispatcher"]) == 300
    assert sum(str(row).count(f"{tag}.v") > 0 for row in after["tracker"]) == 299


def _assert_all_hold(copies: dict[str, list[Any]], text: str) -> dict[str, list[Any]]:
    assert _holds(copies, text) == {"scheduler", "tracker", "dispatcher"}, copies
    return copies


def _assert_none_hold(copies: dict[str, list[Any]], *texts: str) -> dict[str, list[Any]]:
    assert _holds(copies, *texts) == set(), copies
    return copies
