"""A user's path through the three service processes on the real stack: create a campaign, add
recipients, press "Send out now", watch progress reach the end with exact counters."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devtools.processes import Sendout
from shared import topics
from tests.conftest import Stack
from tests.e2e.conftest import wait_for_completion, without_receipts
from tests.factories import campaign_payload

pytestmark = pytest.mark.e2e


def _recipients(n: int) -> tuple[str, dict[str, set[int]]]:
    """CSV of n recipients; every 33rd has no email, every 40th bounces, every 97th is flaky."""
    lines = ["email,first_name,ward"]
    expected: dict[str, set[int]] = {"completed": set(), "failed": set(), "skipped": set()}
    for i in range(n):
        if i % 33 == 0:
            email, status = "", "skipped"
        elif i % 40 == 0:
            email, status = f"r{i}+bounce@example.org", "failed"
        elif i % 97 == 0:
            email, status = f"r{i}+flaky@example.org", "completed"
        else:
            email, status = f"r{i}@example.org", "completed"
        lines.append(f"{email},Name{i},Ward{i % 7}")
        expected[status].add(i)
    return "\n".join(lines) + "\n", expected


def _create(http: httpx.Client, sendout: Sendout, **overrides: Any) -> str:
    r = http.post(f"{sendout.scheduler}/campaigns", json=campaign_payload(**overrides))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _all_outcomes(http: httpx.Client, tracker: str, cid: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = http.get(f"{tracker}/campaigns/{cid}/recipients",
                        params={"after": after, "limit": 400}).raise_for_status().json()
        rows += page["recipients"]
        if page["next_after"] is None:
            return rows
        after = page["next_after"]


def _provider_requests(http: httpx.Client, provider: str) -> list[dict[str, Any]]:
    return list(http.get(f"{provider}/requests", params={"limit": 100_000})
                .raise_for_status().json()["requests"])


def test_send_out_now_1000_recipients_gives_exact_counters_and_states(
    sendout: Sendout, http: httpx.Client
) -> None:
    assert sendout.provider
    csv, expected = _recipients(1000)
    template = "Hi {{ first_name }} of {{ ward }}"
    cid = _create(http, sendout, template=template)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients.csv", content=csv.encode(),
                  headers={"content-type": "text/csv"})
    assert r.status_code == 201 and r.json()["added"] == 1000, r.text

    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert r.status_code == 202 and r.json()["state"] == "sending", r.text
    final = wait_for_completion(http, sendout.tracker, cid)

    reasons = final.pop("reasons")
    assert final["by_channel"]["email"].pop("reasons") == reasons
    assert final["delivered"] + final["not_delivered"] <= final["completed"]
    counts = {"total": 1000, "pending": 0, "completed": len(expected["completed"]),
              "failed": len(expected["failed"]), "skipped": len(expected["skipped"]),
              "opted_out": 0}
    assert without_receipts(final) == {"campaign_id": cid, "state": "completed", **counts,
                     "by_channel": {"email": counts}}
    # Every failure and skip is counted under its reason.
    assert sum(reasons["failed"].values()) == len(expected["failed"])
    assert sum(reasons["skipped"].values()) == len(expected["skipped"])
    assert set(reasons["skipped"]) <= {"missing_address", "invalid_address"}
    # Per-recipient states: recipient ids are assigned in CSV order.
    rows = _all_outcomes(http, sendout.tracker, cid)
    first_id = min(r["recipient_id"] for r in rows)
    by_index = {r["recipient_id"] - first_id: r for r in rows}
    assert len(rows) == 1000 and set(by_index) == set(range(1000))
    for status, indexes in expected.items():
        assert {i for i, r in by_index.items() if r["status"] == status} == indexes
    assert {by_index[i]["reason"] for i in expected["skipped"]} == {"missing_address"}
    assert {by_index[i]["reason"] for i in expected["failed"]} == {
        "SMTP 550: 5.1.1 mailbox unavailable"}
    assert all(by_index[i]["provider_message_id"] for i in expected["completed"])

    # The SMTP server got one final answer per addressed recipient (none for those without an
    # address), rendered; the flaky ones were refused once (451) and delivered on retry.
    to = re.compile(r"^r(\d+)(\+\w+)?@example\.org$")
    assert sendout.smtp
    mine = [q for q in _provider_requests(http, sendout.smtp) if to.match(q["to"])]
    answered = [q for q in mine if q["status"] in (250, 550)]
    indexes = sorted(int(to.match(q["to"]).group(1)) for q in answered)  # type: ignore[union-attr]
    assert indexes == sorted(expected["completed"] | expected["failed"])
    retried = [q for q in mine if q["status"] == 451]
    assert len(retried) == sum(1 for i in expected["completed"] if i % 97 == 0)
    delivered = {q["to"]: q for q in answered if q["status"] == 250}
    sample = delivered["r1@example.org"]
    assert sample["body"] == "Hi Name1 of Ward1" and sample["subject"] == "Hello Name1"
    assert sample["sender"] == "Election Office <office@example.org>"
    # The provider message id recorded by the tracker is the one the SMTP server received.
    assert by_index[1]["provider_message_id"] == sample["id"]

    # The scheduler learns the campaign completed from the tracker's lifecycle event.
    deadline = time.monotonic() + 15
    while (state := http.get(f"{sendout.scheduler}/campaigns/{cid}").json()["state"]) != \
            "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state == "completed"


def test_unknown_campaign_is_404_everywhere(sendout: Sendout, http: httpx.Client) -> None:
    unknown = uuid.uuid4()
    for method, url in [
        ("GET", f"{sendout.scheduler}/campaigns/{unknown}"),
        ("POST", f"{sendout.scheduler}/campaigns/{unknown}/send-now"),
        ("GET", f"{sendout.tracker}/campaigns/{unknown}/progress"),
    ]:
        r = http.request(method, url)
        assert r.status_code == 404 and str(unknown) in r.json()["detail"], (url, r.text)
    r = http.post(f"{sendout.scheduler}/campaigns/{unknown}/recipients",
                  json={"recipients": [{"email": "a@example.org"}]})
    assert r.status_code == 404


def test_empty_template_is_422_with_a_clear_message(sendout: Sendout, http: httpx.Client) -> None:
    r = http.post(f"{sendout.scheduler}/campaigns", json=campaign_payload(template=" "))
    assert r.status_code == 422 and "template must not be empty" in r.text


def test_send_now_twice_is_409_naming_the_state(sendout: Sendout, http: httpx.Client) -> None:
    cid = _create(http, sendout)
    http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients",
              json={"recipients": [{"email": "twice@example.org", "first_name": "T"}]}
              ).raise_for_status()
    assert http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").status_code == 202
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert r.status_code == 409 and r.json()["state"] in ("sending", "completed"), r.text
    assert "cannot send out now" in r.json()["detail"]
    # Recipients cannot be added once sending either: nothing changes under a send-out.
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients",
                  json={"recipients": [{"email": "late@example.org"}]})
    assert r.status_code == 409
    final = wait_for_completion(http, sendout.tracker, cid)
    assert (final["total"], final["completed"]) == (1, 1)


def test_send_now_without_recipients_is_422_and_stays_draft(
    sendout: Sendout, http: httpx.Client
) -> None:
    cid = _create(http, sendout)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert r.status_code == 422 and "no recipients" in r.json()["detail"]
    assert http.get(f"{sendout.scheduler}/campaigns/{cid}").json()["state"] == "draft"


def test_csv_bad_rows_are_listed_by_line_and_good_rows_added(
    sendout: Sendout, http: httpx.Client
) -> None:
    """As voters.csv: an invalid phone or email, or a malformed row, is refused with its line
    and reason; every good row is added."""
    cid = _create(http, sendout)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients.csv",
                  content=b"email,phone,first_name\na@example.org,,A\nb@example.org,,B,oops\n"
                          b"c@example.org,12,C\nnot-an-email,,D\n,+4540100001,E\n",
                  headers={"content-type": "text/csv"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["added"], body["rejected"]) == (2, 3), body
    assert [(e["line"], e["error"].split(":")[0]) for e in body["errors"]] == [
        (3, "more fields than the header has"), (4, "invalid phone"), (5, "invalid email")]
    assert http.get(f"{sendout.scheduler}/campaigns/{cid}").json()["recipients"] == 2


def test_csv_without_a_good_row_is_422_and_adds_nothing(
    sendout: Sendout, http: httpx.Client
) -> None:
    cid = _create(http, sendout)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients.csv",
                  content=b"email,first_name\nnot-an-email,A\n",
                  headers={"content-type": "text/csv"})
    assert r.status_code == 422, r.text
    assert "no recipients added: 1 rows refused" in r.json()["detail"]
    assert [e["line"] for e in r.json()["errors"]] == [2]
    assert http.get(f"{sendout.scheduler}/campaigns/{cid}").json()["recipients"] == 0


def test_every_service_serves_health_and_metrics(sendout: Sendout, http: httpx.Client) -> None:
    for url in [sendout.scheduler, sendout.tracker, *sendout.dispatchers]:
        health = http.get(f"{url}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = http.get(f"{url}/metrics")
        assert metrics.status_code == 200 and "sendout_events" in metrics.text


async def test_a_poison_outcome_is_dead_lettered_and_counts_nothing(
    stack: Stack, sendout: Sendout
) -> None:
    key = uuid.uuid4().bytes
    consumer = AIOKafkaConsumer(topics.dlq(topics.OUTCOMES), bootstrap_servers=stack.kafka,
                                auto_offset_reset="earliest", group_id=f"t-{uuid.uuid4()}")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka)
    await consumer.start()
    await producer.start()
    try:
        await producer.send_and_wait(topics.OUTCOMES, b'{"type": "sent", "oops": 1}', key=key)
        deadline = time.monotonic() + 30
        found = None
        while found is None and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found = next((r for recs in batch.values() for r in recs if r.key == key), None)
        assert found is not None, "poison record never reached the DLQ"
        headers = dict(found.headers)
        assert found.value == b'{"type": "sent", "oops": 1}'
        assert b"ValidationError" in headers["x-error"]
    finally:
        await producer.stop()
        await consumer.stop()
