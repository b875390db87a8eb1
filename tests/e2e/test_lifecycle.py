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
from tests.e2e.conftest import wait_for_completion
from tests.e2e.helpers import (
    add_recipients,
    audit_actions,
    campaign,
    create_campaign,
    in_seconds,
    requests_to,
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
    at = in_seconds(3)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule", json={"at": at.isoformat()},
                  headers={"X-Sendout-Actor": "ada"})
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
        at = in_seconds(2.5)
        cids = []
        for i in range(10):
            api = sendout.scheduler if i % 2 else second.url
            r = http.post(f"{api}/campaigns", json={
                "name": f"c{i}", "channels": ["email"], "template": "Hi {{ first_name }}",
                "sender": {"name": "Office", "email": "office@example.org"}})
            cid = r.raise_for_status().json()["id"]
            add_recipients(http, sendout, cid, [{"email": f"{tag}{i}@example.org",
                                                 "first_name": "A"}])
            http.post(f"{api}/campaigns/{cid}/schedule",
                      json={"at": at.isoformat()}).raise_for_status()
            cids.append(cid)
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
