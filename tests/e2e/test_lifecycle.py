"""Every operator action of the election send-out seed, through the service processes on the
real stack: send on schedule, cancel a schedule, abort, both channels, individual send."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from devtools.processes import Sendout
from tests.e2e.conftest import bearer, wait_for_completion
from tests.e2e.helpers import (
    add_recipients,
    audit_actions,
    campaign,
    create_campaign,
    in_seconds,
    requests_to,
    sender_and_template,
    wait_state,
)

pytestmark = pytest.mark.e2e


def _emails(tag: str, n: int) -> list[dict[str, Any]]:
    return [{"email": f"{tag}{i}@example.org", "first_name": f"N{i}"} for i in range(n)]


def test_scheduled_campaign_starts_within_a_second_of_its_time(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = f"sched-{uuid.uuid4().hex[:6]}-"
    cid = create_campaign(http, sendout)
    add_recipients(http, sendout, cid, _emails(tag, 5))
    ada = bearer(sendout.new_user("default", "ada"))  # waits for the tracker: before the clock
    at = in_seconds(3)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule", json={"at": at.isoformat()},
                  headers=ada)
    assert r.status_code == 202 and r.json()["state"] == "scheduled", r.text
    time.sleep(1)
    assert campaign(http, sendout, cid)["state"] == "scheduled"
    assert http.get(f"{sendout.tracker}/campaigns/{cid}/progress").status_code == 404

    started = wait_state(http, sendout, cid, {"sending", "completed"}, timeout=10)
    lag = (datetime.fromisoformat(started["started_at"]) - at).total_seconds()
    print(f"\nschedule lag: {lag * 1000:.0f} ms")
    assert 0 <= lag < 1.0
    final = wait_for_completion(http, sendout.tracker, cid)
    assert final["completed"] == 5
    addresses = {f"{tag}{i}@example.org" for i in range(5)}
    assert len([q for q in requests_to(http, sendout.smtp, addresses) if q["status"] == 250]) == 5
    wait_state(http, sendout, cid, {"completed"})
    assert audit_actions(http, sendout, cid) == [
        "created", "scheduled", "sent on schedule", "completed"]


def test_schedule_in_the_past_or_without_time_zone_is_422(
    sendout: Sendout, http: httpx.Client
) -> None:
    cid = create_campaign(http, sendout)
    add_recipients(http, sendout, cid, _emails("past", 1))
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
                  json={"at": in_seconds(-60).isoformat()})
    assert r.status_code == 422 and "in the past" in r.json()["detail"]
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
                  json={"at": "2099-01-01T09:00:00"})
    assert r.status_code == 422 and "time zone" in r.json()["detail"]
    assert campaign(http, sendout, cid)["state"] == "draft"


def test_schedule_canceled_before_its_time_sends_nothing_and_is_a_draft_again(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = f"cancel-{uuid.uuid4().hex[:6]}-"
    addresses = {f"{tag}{i}@example.org" for i in range(3)}
    cid = create_campaign(http, sendout)
    add_recipients(http, sendout, cid, _emails(tag, 3))
    at = in_seconds(3)
    http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
              json={"at": at.isoformat()}).raise_for_status()
    time.sleep(2)  # cancel 1 s before its time
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "draft", r.text
    assert r.json()["scheduled_for"] is None
    time.sleep(2.5)  # well past the canceled time
    assert campaign(http, sendout, cid)["state"] == "draft"
    assert requests_to(http, sendout.smtp, addresses) == []
    assert http.get(f"{sendout.tracker}/campaigns/{cid}/progress").status_code == 404
    # Back to both options: send out now works.
    assert http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").status_code == 202
    assert wait_for_completion(http, sendout.tracker, cid)["completed"] == 3
    assert audit_actions(http, sendout, cid)[:4] == [
        "created", "scheduled", "canceled", "sent out now"]


def test_cancel_after_the_time_is_409_naming_the_state(
    sendout: Sendout, http: httpx.Client
) -> None:
    cid = create_campaign(http, sendout)
    add_recipients(http, sendout, cid, _emails("late-cancel", 1))
    http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
              json={"at": in_seconds(1).isoformat()}).raise_for_status()
    state = wait_state(http, sendout, cid, {"sending", "completed"}, timeout=10)["state"]
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/cancel")
    assert r.status_code == 409 and r.json()["state"] in ("sending", "completed")
    assert f"is {r.json()['state']}" in r.json()["detail"]
    assert state in ("sending", "completed")


def test_invalid_transitions_are_409_with_the_current_state(
    sendout: Sendout, http: httpx.Client
) -> None:
    cid = create_campaign(http, sendout)
    add_recipients(http, sendout, cid, _emails("transitions", 1))
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/abort")
    assert (r.status_code, r.json()["state"]) == (409, "draft")
    assert "cannot abort" in r.json()["detail"]
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/cancel")
    assert (r.status_code, r.json()["state"]) == (409, "draft")
    http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
              json={"at": in_seconds(3600).isoformat()}).raise_for_status()
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/abort")
    assert (r.status_code, r.json()["state"]) == (409, "scheduled")
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert (r.status_code, r.json()["state"]) == (409, "scheduled")
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients",
                  json={"recipients": [{"email": "x@example.org"}]})
    assert (r.status_code, r.json()["state"]) == (409, "scheduled")
    http.post(f"{sendout.scheduler}/campaigns/{cid}/cancel").raise_for_status()


def test_two_scheduler_processes_fire_each_scheduled_campaign_once(
    sendout: Sendout, http: httpx.Client
) -> None:
    second = sendout.start_service("scheduler", name="scheduler-2")
    try:
        tag = f"twice-{uuid.uuid4().hex[:6]}-"
        cids = []
        for i in range(10):
            api = sendout.scheduler if i % 2 else second.url
            r = http.post(f"{api}/campaigns", json={
                "name": f"c{i}", "channels": ["email"], "template": "Hi {{ first_name }}",
                "sender": {"name": "Office", "email": "office@example.org"}})
            cid = r.raise_for_status().json()["id"]
            add_recipients(http, sendout, cid, [{"email": f"{tag}{i}@example.org",
                                                 "first_name": "A"}])
            cids.append(cid)
        # All due at the same moment, set once the campaigns exist (creating them on a slow
        # machine must not eat into the time before it).
        at = in_seconds(2.5)
        for i, cid in enumerate(cids):
            api = sendout.scheduler if i % 2 else second.url
            http.post(f"{api}/campaigns/{cid}/schedule",
                      json={"at": at.isoformat()}).raise_for_status()
        for cid in cids:
            wait_for_completion(http, sendout.tracker, cid, timeout=30)
            wait_state(http, sendout, cid, {"completed"})
            assert audit_actions(http, sendout, cid).count("sent on schedule") == 1
        delivered = [q for q in requests_to(http, sendout.smtp,
                                            {f"{tag}{i}@example.org" for i in range(10)})
                     if q["status"] == 250]
        assert sorted(q["to"] for q in delivered) == sorted(
            f"{tag}{i}@example.org" for i in range(10))
    finally:
        sendout.processes.kill(second.name)


def test_scheduler_killed_and_restarted_before_the_time_still_fires_once(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = f"restart-{uuid.uuid4().hex[:6]}-"
    cid = create_campaign(http, sendout)
    add_recipients(http, sendout, cid, _emails(tag, 2))
    http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
              json={"at": in_seconds(4).isoformat()}).raise_for_status()
    old = next(p for p in sendout.processes.procs
               if p.url == sendout.scheduler and p.name not in sendout.processes.stopped)
    sendout.processes.kill(old.name)
    time.sleep(1)
    restarted = sendout.start_service(
        "scheduler", name=f"scheduler-restarted-{uuid.uuid4().hex[:4]}"
    )
    sendout.scheduler = restarted.url  # later tests use the restarted one
    wait_for_completion(http, sendout.tracker, cid, timeout=30)
    wait_state(http, sendout, cid, {"completed"})
    assert audit_actions(http, sendout, cid).count("sent on schedule") == 1
    delivered = [q for q in requests_to(http, sendout.smtp, {f"{tag}0@example.org",
                                                             f"{tag}1@example.org"})
                 if q["status"] == 250]
    assert len(delivered) == 2


def _sms_campaign(http: httpx.Client, sendout: Sendout, template: str) -> str:
    r = http.post(f"{sendout.scheduler}/campaigns", json={
        "name": "SMS", "channels": ["sms"], "template": template,
        "sender": {"name": "Office", "sms_sender_id": "Office"}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_abort_stops_provider_calls_and_ends_aborted_with_exact_counters(
    sendout: Sendout, http: httpx.Client
) -> None:
    """20,000 recipients, a provider answering in 30 ms; abort at about a quarter."""
    assert sendout.provider
    n = 20_000
    # The aborting user exists before the send starts: creating one waits until the tracker
    # knows its token, which must not eat into the time the campaign has left to run.
    grace = bearer(sendout.new_user("default", "grace"))
    phones = [f"+4520{100_000 + i:06d}" for i in range(n)]
    cid = _sms_campaign(http, sendout, "Vote, {{ first_name }}")
    csv = "phone,first_name\n" + "".join(f"{p},V{i}\n" for i, p in enumerate(phones))
    http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients.csv", content=csv.encode(),
              headers={"content-type": "text/csv"}).raise_for_status()
    http.post(f"{sendout.provider}/config", json={"latency_ms": 30}).raise_for_status()
    reads: list[dict[str, Any]] = []
    try:
        http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, reads[-1:]
            r = http.get(f"{sendout.tracker}/campaigns/{cid}/progress")
            if r.status_code == 200 and r.json()["total"]:
                reads.append(r.json())
                if r.json()["completed"] >= n // 4:
                    break
            time.sleep(0.02)
        abort_sent_at = time.time()
        abort = http.post(f"{sendout.scheduler}/campaigns/{cid}/abort", headers=grace)
        answered_at = time.time()
        assert abort.status_code == 202, abort.text
        result = abort.json()["abort"]
        assert result["acknowledged"] is True
        assert len(result["acknowledged_by"]) == len(sendout.dispatchers)
        assert 0 < result["pending"] < n
        print(f"\nabort answered with {result['pending']} pending")
        # Keep reading progress until it ends: the invariant holds at every read.
        deadline = time.monotonic() + 120
        while (p := http.get(f"{sendout.tracker}/campaigns/{cid}/progress").json())["state"] \
                != "aborted":
            reads.append(p)
            assert time.monotonic() < deadline, p
            time.sleep(0.05)
        reads.append(p)
    finally:
        http.post(f"{sendout.provider}/config", json={"latency_ms": 0})

    for read in reads:
        assert read["pending"] + read["completed"] + read["failed"] + read["skipped"] == n, read
    requests = requests_to(http, sendout.provider, set(phones))
    late = [q for q in requests if q["at"] > answered_at]
    assert late == [], f"{len(late)} provider requests began after the abort answer"
    last = max(q["at"] for q in requests)
    print(f"abort request → answer {1000 * (answered_at - abort_sent_at):.0f} ms; "
          f"abort request → last provider request {1000 * (last - abort_sent_at):.0f} ms")
    # Messages already with the provider are reported as what they became; the rest skipped.
    final = reads[-1]
    assert final["completed"] == len({q["to"] for q in requests if q["status"] == 202})
    assert final["skipped"] == n - final["completed"] - final["failed"] > 0
    skipped = http.get(f"{sendout.tracker}/campaigns/{cid}/recipients",
                       params={"status": "skipped", "limit": 10_000}).json()["recipients"]
    assert {r["reason"] for r in skipped} == {"aborted"}
    c = wait_state(http, sendout, cid, {"aborted"})
    assert c["abort_pending"] == result["pending"]
    assert c["final_counts"]["skipped"] == final["skipped"]
    trail = http.get(f"{sendout.scheduler}/campaigns/{cid}/audit").json()["events"]
    aborted = next(e for e in trail if e["action"] == "aborted" and e["actor"] == "grace")
    assert aborted["details"]["pending"] == result["pending"]
    assert [e["action"] for e in trail] == ["created", "sent out now", "aborted", "aborted"]


def test_both_channels_count_and_explain_each_channel_exactly(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = uuid.uuid4().hex[:6]
    sender_id, template_id = sender_and_template(
        http, sendout, email_subject="Reminder for {{ first_name }}",
        email_body="Dear {{ first_name }}, vote on Sunday.",
        sms_body="{{ first_name }}: vote Sunday", sms_sender_id="ElectOffice",
    )
    r = http.post(f"{sendout.scheduler}/campaigns", json={
        "name": "Both", "channels": ["email", "sms"], "sender_id": sender_id,
        "template_id": template_id})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    people = {
        "email_only": {"email": f"e-{tag}@example.org"},
        "phone_only": {"phone": "+4540100001"},
        "neither": {},
        "both": {"email": f"b-{tag}@example.org", "phone": "40 10 00 02"},
        "bad_email": {"email": "not-an-email", "phone": "+4540100003"},
        "bad_phone": {"email": f"p-{tag}@example.org", "phone": "12"},
        "bouncing": {"email": f"x-{tag}+bounce@example.org"},
    }
    add_recipients(http, sendout, cid, [{**a, "first_name": name}
                                        for name, a in people.items()])
    http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
    final = wait_for_completion(http, sendout.tracker, cid)
    assert final["total"] == 14 and final["pending"] == 0
    receipts = ("delivered", "not_delivered")  # SMS receipts may still be on their way
    counters = ("total", "pending", "completed", "failed", "skipped", "opted_out")
    assert {ch: {k: c[k] for k in counters} for ch, c in final["by_channel"].items()} == {
        "email": {"total": 7, "pending": 0, "completed": 3, "failed": 1, "skipped": 3,
                  "opted_out": 0},
        "sms": {"total": 7, "pending": 0, "completed": 3, "failed": 0, "skipped": 4,
                "opted_out": 0},
    }
    # The reasons next to the counters, per channel.
    assert {ch: {k: v for k, v in c["reasons"].items() if k not in receipts}
            for ch, c in final["by_channel"].items()} == {
        "email": {"failed": {"SMTP 550: 5.1.1 mailbox unavailable": 1},
                  "skipped": {"missing_address": 2, "invalid_address": 1}},
        "sms": {"failed": {}, "skipped": {"missing_address": 3, "invalid_address": 1}},
    }
    rows = http.get(f"{sendout.tracker}/campaigns/{cid}/recipients").json()["recipients"]
    first = min(r["recipient_id"] for r in rows)
    names = list(people)
    got = {(names[r["recipient_id"] - first], r["channel"]): (r["status"], r["reason"])
           for r in rows}
    assert got == {
        ("email_only", "email"): ("completed", None),
        ("email_only", "sms"): ("skipped", "missing_address"),
        ("phone_only", "email"): ("skipped", "missing_address"),
        ("phone_only", "sms"): ("completed", None),
        ("neither", "email"): ("skipped", "missing_address"),
        ("neither", "sms"): ("skipped", "missing_address"),
        ("both", "email"): ("completed", None),
        ("both", "sms"): ("completed", None),
        ("bad_email", "email"): ("skipped", "invalid_address"),
        ("bad_email", "sms"): ("completed", None),
        ("bad_phone", "email"): ("completed", None),
        ("bad_phone", "sms"): ("skipped", "invalid_address"),
        ("bouncing", "email"): ("failed", "SMTP 550: 5.1.1 mailbox unavailable"),
        ("bouncing", "sms"): ("skipped", "missing_address"),
    }
    # The SMS went out normalised to E.164, rendered, from the sender id.
    sms = requests_to(http, sendout.provider, {"+4540100002"})
    assert [(q["body"], q["status"]) for q in sms] == [("both: vote Sunday", 202)]


def test_individual_send_reaches_one_recipient_by_email_and_sms(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = uuid.uuid4().hex[:6]
    sender_id, template_id = sender_and_template(
        http, sendout, email_subject="Hi {{ first_name }}",
        email_body="Your ward is {{ ward }}.", sms_body="Ward {{ ward }}",
    )
    r = http.post(f"{sendout.scheduler}/individual-sends", json={
        "recipient": {"email": f"one-{tag}@example.org", "phone": "+4540100011",
                      "first_name": "Ada", "attributes": {"ward": "North"}},
        "channels": ["email", "sms"], "sender_id": sender_id, "template_id": template_id})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "individual" and r.json()["total"] == 2
    final = wait_for_completion(http, sendout.tracker, r.json()["id"])
    assert final["by_channel"]["email"]["completed"] == 1
    assert final["by_channel"]["sms"]["completed"] == 1
    [mail] = [q for q in requests_to(http, sendout.smtp, {f"one-{tag}@example.org"})]
    assert (mail["subject"], mail["body"]) == ("Hi Ada", "Your ward is North.")
    [sms] = requests_to(http, sendout.provider, {"+4540100011"})
    assert sms["body"] == "Ward North"


def test_recipients_missing_a_template_variable_are_listed_and_nothing_is_sent(
    sendout: Sendout, http: httpx.Client
) -> None:
    tag = uuid.uuid4().hex[:6]
    cid = create_campaign(http, sendout, template="Hi {{ first_name }} in {{ ward }}")
    add_recipients(http, sendout, cid, [
        {"email": f"ok-{tag}@example.org", "first_name": "A", "attributes": {"ward": "N"}},
        {"email": f"noward-{tag}@example.org", "first_name": "B"},
        {"email": f"noname-{tag}@example.org", "attributes": {"ward": "S"}},
    ])
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert r.status_code == 422, r.text
    assert "2 recipients lack template variables ['first_name', 'ward']" in r.json()["detail"]
    assert len(r.json()["errors"]) == 2
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
                  json={"at": in_seconds(60).isoformat()})
    assert r.status_code == 422
    assert campaign(http, sendout, cid)["state"] == "draft"
