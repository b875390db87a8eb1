"""A user's path through the voter directory on the real stack: voters imported into two
overlapping lists, a campaign targeting both sent out now, each voter's page and history."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import httpx
import pytest

from devtools.processes import Sendout
from tests.conftest import Stack
from tests.e2e.conftest import wait_for_completion, without_receipts
from tests.e2e.helpers import sender_and_template
from tests.factories import campaign_payload
from tests.voter_factories import run_tag, voters_csv

pytestmark = pytest.mark.e2e


def _new_list(http: httpx.Client, sendout: Sendout, name: str) -> str:
    r = http.post(f"{sendout.scheduler}/lists", json={"name": name})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _import_into(http: httpx.Client, sendout: Sendout, list_id: str, body: bytes) -> dict[str, Any]:
    r = http.post(f"{sendout.scheduler}/lists/{list_id}/voters.csv", content=body,
                  headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _campaign_over(http: httpx.Client, sendout: Sendout, list_ids: list[str]) -> str:
    r = http.post(f"{sendout.scheduler}/campaigns",
                  json=campaign_payload(template="Hi {{ first_name }} of {{ ward }}"))
    assert r.status_code == 201, r.text
    cid = str(r.json()["id"])
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/lists", json={"list_ids": list_ids})
    assert r.status_code == 201, r.text
    assert sorted(x["id"] for x in r.json()["lists"]) == sorted(list_ids)
    return cid


def _voter_id(http: httpx.Client, sendout: Sendout, email: str) -> int:
    r = http.get(f"{sendout.scheduler}/voters", params={"q": email})
    [voter] = r.raise_for_status().json()["voters"]
    return int(voter["id"])


def _wait_for_state(http: httpx.Client, sendout: Sendout, cid: str, state: str) -> None:
    deadline = time.monotonic() + 15
    while (now := http.get(f"{sendout.scheduler}/campaigns/{cid}").json()["state"]) != state \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now == state


def test_campaign_over_two_overlapping_lists_sends_each_voter_once_and_shows_in_their_history(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = run_tag()
    list_a, list_b = _new_list(http, sendout, f"{tag} A"), _new_list(http, sendout, f"{tag} B")
    assert _import_into(http, sendout, list_a, voters_csv(tag, 200)[0])["inserted"] == 200
    second = _import_into(http, sendout, list_b, voters_csv(tag, 200, start=100)[0])
    assert (second["inserted"], second["unchanged"], second["rejected"]) == (100, 100, 0)
    cid = _campaign_over(http, sendout, [list_a, list_b])

    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert r.status_code == 202 and r.json()["state"] == "sending", r.text
    final = wait_for_completion(http, sendout.tracker, cid)
    counts = {"total": 300, "pending": 0, "completed": 300, "failed": 0, "skipped": 0,
              "opted_out": 0, "reasons": {"failed": {}, "skipped": {}}}
    assert without_receipts(final) == {"campaign_id": cid, "state": "completed", **counts,
                     "by_channel": {"email": counts}}

    # One message per voter, rendered from the voter's copy.
    assert sendout.smtp
    requests = http.get(f"{sendout.smtp}/requests", params={"limit": 100_000}).json()
    mine = [q for q in requests["requests"] if q["to"].startswith(f"{tag}.v")]
    assert sorted(q["to"] for q in mine) == sorted(f"{tag}.v{i}@example.org" for i in range(300))
    sample = next(q for q in mine if q["to"] == f"{tag}.v150@example.org")
    assert sample["body"] == "Hi Voter150 of Ward3"

    # The voter's page (scheduler) and history (tracker) of a voter in both lists.
    voter_id = _voter_id(http, sendout, f"{tag}.v150@")
    page = http.get(f"{sendout.scheduler}/voters/{voter_id}").raise_for_status().json()
    assert [c["campaign_id"] for c in page["campaigns"]] == [cid]
    assert sorted(x["name"] for x in page["lists"]) == [f"{tag} A", f"{tag} B"]
    assert page["opted_out"] is False and page["statuses"]["service"] == "tracker"
    history = http.get(f"{sendout.tracker}{page['statuses']['path']}").raise_for_status().json()
    assert [(h["campaign_id"], h["channel"], h["status"], h["reason"])
            for h in history["history"]] == [(cid, "email", "completed", None)]
    _wait_for_state(http, sendout, cid, "completed")


def _deleted_voters_copy(database_url: str, cid: str) -> dict[str, Any] | None:
    """The campaign's recipient row of the deleted voter, read from the scheduler's schema
    (nothing in the API shows a deleted voter's copy any more)."""

    async def query() -> dict[str, Any] | None:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                """
                SELECT voter_id, email, first_name, erase_pending FROM scheduler.recipients
                WHERE campaign_id = $1 AND voter_deleted
                """,
                uuid.UUID(cid),
            )
        finally:
            await conn.close()
        return dict(row) if row else None

    # Its own thread and event loop: this test is synchronous, like the HTTP client it uses.
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, query()).result()


def test_deleting_a_voter_mid_send_does_not_break_the_campaign(
    sendout: Sendout, http: httpx.Client, stack: Stack
) -> None:
    tag = run_tag()
    list_id = _new_list(http, sendout, tag)
    assert _import_into(http, sendout, list_id, voters_csv(tag, 1000)[0])["inserted"] == 1000
    cid = _campaign_over(http, sendout, [list_id])
    voter_id = _voter_id(http, sendout, f"{tag}.v500@")

    assert http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").status_code == 202
    r = http.delete(f"{sendout.scheduler}/voters/{voter_id}", params={"erase": "true"})
    assert r.status_code == 200, r.text
    # The campaign was still sending: its copy of the voter is erased when it ends.
    assert r.json() == {"deleted": voter_id, "campaigns": 1, "erased": 0,
                        "erase_when_finished": 1}
    assert http.get(f"{sendout.scheduler}/voters/{voter_id}").status_code == 404

    final = wait_for_completion(http, sendout.tracker, cid)
    assert (final["total"], final["completed"], final["failed"], final["skipped"]) == (
        1000, 1000, 0, 0)
    _wait_for_state(http, sendout, cid, "completed")
    # Erased once the campaign ended (the scheduler learnt it from the tracker's event).
    assert _deleted_voters_copy(stack.database_url, cid) == {
        "voter_id": None, "email": None, "first_name": None, "erase_pending": False}


def test_voter_directory_errors_map_to_404_409_422(sendout: Sendout, http: httpx.Client) -> None:
    s = sendout.scheduler
    tag = run_tag()
    assert http.get(f"{s}/voters/-1").status_code == 404
    assert http.delete(f"{s}/voters/-1").status_code == 404
    r = http.post(f"{s}/voters.csv", content=b"first_name,ward\nAda,W1\n",
                  headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "must name at least one of" in r.json()["detail"]
    r = http.post(f"{s}/voters", json={"first_name": "Ada", "phone": "123"})
    assert r.status_code == 422 and "invalid phone" in r.json()["detail"]
    assert http.get(f"{s}/voters", params={"q": "  "}).status_code == 422

    r = http.post(f"{s}/voters", json={"external_id": f"{tag}-1", "first_name": "Ada",
                                        "phone": "20 10 00 07", "attributes": {"ward": "W1"}})
    assert r.status_code == 201 and r.json()["phone"] == "+4520100007", r.text
    voter_id = r.json()["id"]
    r = http.patch(f"{s}/voters/{voter_id}", json={"last_name": "Lovelace"})
    assert r.status_code == 200 and (r.json()["first_name"], r.json()["last_name"]) == (
        "Ada", "Lovelace")
    list_id = _new_list(http, sendout, tag)
    assert http.post(f"{s}/lists", json={"name": tag}).status_code == 422
    r = http.post(f"{s}/lists/{list_id}/voters", json={"voter_ids": [voter_id]})
    assert r.json() == {"added": 1}
    cid = _campaign_over(http, sendout, [list_id])
    assert http.post(f"{s}/campaigns/{cid}/send-now").status_code == 202
    r = http.post(f"{s}/campaigns/{cid}/lists", json={"list_ids": [list_id]})
    assert r.status_code == 409 and r.json()["state"] in ("sending", "completed")
    r = http.delete(f"{s}/lists/{list_id}")
    assert r.status_code == 204  # the started campaign holds its own copy of the voters
    export = http.get(f"{s}/voters/{voter_id}/export").raise_for_status().json()
    assert [x["campaign_id"] for x in export["recipient_snapshots"]] == [cid]
    wait_for_completion(http, sendout.tracker, cid)


def test_send_one_voter_an_sms_and_an_email_from_their_page(
    sendout: Sendout, http: httpx.Client
) -> None:
    s = sendout.scheduler
    tag = run_tag()
    r = http.post(f"{s}/voters", json={
        "external_id": f"{tag}-page", "first_name": "Grace", "last_name": "Hopper",
        "email": f"{tag}.page@example.org", "phone": "40 10 00 21",
        "attributes": {"ward": "Harbour"}})
    assert r.status_code == 201, r.text
    voter = r.json()
    sender_id, template_id = sender_and_template(
        http, sendout, email_subject="{{ first_name }}, your polling station",
        email_body="Dear {{ first_name }} {{ last_name }}, vote in {{ ward }}.",
        sms_body="{{ first_name }}: vote in {{ ward }}",
    )

    r = http.post(f"{s}/voters/{voter['id']}/send", json={
        "channels": ["email", "sms"], "sender_id": sender_id, "template_id": template_id})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "individual"
    cid = r.json()["id"]
    final = wait_for_completion(http, sendout.tracker, cid)
    assert final["by_channel"]["email"]["completed"] == 1
    assert final["by_channel"]["sms"]["completed"] == 1

    assert sendout.smtp and sendout.provider
    mails = http.get(f"{sendout.smtp}/requests", params={"limit": 100_000}).json()["requests"]
    [mail] = [m for m in mails if m["to"] == f"{tag}.page@example.org"]
    assert (mail["subject"], mail["body"]) == (
        "Grace, your polling station", "Dear Grace Hopper, vote in Harbour.")
    texts = http.get(f"{sendout.provider}/requests", params={"limit": 100_000}).json()
    [sms] = [m for m in texts["requests"] if m["to"] == "+4540100021"]
    assert sms["body"] == "Grace: vote in Harbour"

    # The voter's page lists it, and the tracker's history has both channels.
    page = http.get(f"{s}/voters/{voter['id']}").raise_for_status().json()
    assert cid in [c["campaign_id"] for c in page["campaigns"]]
    history = http.get(f"{sendout.tracker}{page['statuses']['path']}").json()["history"]
    assert sorted((h["channel"], h["status"]) for h in history if h["campaign_id"] == cid) == [
        ("email", "completed"), ("sms", "completed")]

    assert http.post(f"{s}/voters/999999999/send", json={
        "channels": ["sms"], "sender_id": sender_id, "template_id": template_id,
    }).status_code == 404
