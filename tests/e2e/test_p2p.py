"""Peer-to-peer texting, one test per sentence of the seed (../shared/seeds/002_*), through
the service processes on the real stack."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devtools.processes import Sendout
from shared import webhooks
from tests.e2e.conftest import ADMIN_TOKEN, INBOUND_SMS_SECRET, bearer, wait_for_completion
from tests.e2e.helpers import in_seconds, requests_to, wait_state

pytestmark = pytest.mark.e2e
_numbers = itertools.count(200_000)


def _user(http: httpx.Client, sendout: Sendout, org: str = "default") -> dict[str, str]:
    return bearer(sendout.new_user(org, f"user-{uuid.uuid4().hex[:6]}"))


def _phones(n: int) -> list[str]:
    return [f"+4540{next(_numbers):06d}" for _ in range(n)]


def _p2p_campaign(http: httpx.Client, sendout: Sendout, user: dict[str, str],
                  phones: list[str]) -> tuple[str, list[int]]:
    r = http.post(f"{sendout.scheduler}/campaigns", headers=user, json={
        "name": "Texting", "kind": "p2p", "channels": ["sms"],
        "template": "Hi {{ first_name }}, vote!",
        "sender": {"name": "Office", "sms_sender_id": "Office"}})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients", json={
        "recipients": [{"phone": p, "first_name": f"P{i}"} for i, p in enumerate(phones)]},
        headers=user,
    ).raise_for_status()
    rows = http.get(f"{sendout.scheduler}/campaigns/{cid}/p2p/recipients",
                    headers=user).raise_for_status().json()["recipients"]
    return cid, [r["id"] for r in rows]


def _start(http: httpx.Client, sendout: Sendout, user: dict[str, str], cid: str) -> httpx.Response:
    return http.post(f"{sendout.scheduler}/campaigns/{cid}/p2p/start", headers=user)


def _press(http: httpx.Client, sendout: Sendout, user: dict[str, str], cid: str,
           rid: int) -> dict[str, Any]:
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients/{rid}/send", headers=user)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _end(http: httpx.Client, sendout: Sendout, user: dict[str, str], cid: str) -> None:
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/end", headers=user,
                  json={"confirmation": "END"})
    assert r.status_code == 200, r.text


def _texts(http: httpx.Client, sendout: Sendout, phones: list[str]) -> list[str]:
    return sorted(q["to"] for q in requests_to(http, sendout.provider, set(phones))
                  if q["status"] == 202)


def _wait_texts(http: httpx.Client, sendout: Sendout, phones: list[str],
                expected: list[str], timeout: float = 30) -> None:
    """Wait until the provider accepted texts to exactly `expected` of `phones`."""
    deadline = time.monotonic() + timeout
    while (got := _texts(http, sendout, phones)) != expected:
        assert time.monotonic() < deadline, got
        time.sleep(0.1)


def _reasons(http: httpx.Client, sendout: Sendout, cid: str) -> dict[int, tuple[str, str]]:
    rows = http.get(f"{sendout.tracker}/campaigns/{cid}/recipients").json()["recipients"]
    return {r["recipient_id"]: (r["status"], r["reason"]) for r in rows}


def _signed(payload: dict[str, str], path: str,
            secret: str = INBOUND_SMS_SECRET) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    return {"content": body, "headers": {
        "content-type": "application/json",
        **webhooks.sign(secret.encode(), "POST", path, body)}}


def _schedule(http: httpx.Client, sendout: Sendout, cid: str, seconds: float) -> None:
    http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
              json={"at": in_seconds(seconds).isoformat()}).raise_for_status()


def test_every_p2p_call_needs_an_api_token(sendout: Sendout, http: httpx.Client) -> None:
    user = _user(http, sendout)
    cid, _ = _p2p_campaign(http, sendout, user, _phones(1))
    assert httpx.post(f"{sendout.scheduler}/campaigns/{cid}/p2p/start").status_code == 401
    r = httpx.post(f"{sendout.scheduler}/campaigns/{cid}/p2p/start",
                   headers={"Authorization": "Bearer so_wrong"})
    assert r.status_code == 401
    assert http.post(f"{sendout.scheduler}/admin/users",
                     json={"organisation": "x", "name": "y"}).status_code == 401


def test_send_in_a_non_scheduled_campaign_sends_at_once_and_only_to_those_sent(
    sendout: Sendout, http: httpx.Client
) -> None:
    user = _user(http, sendout)
    phones = _phones(3)
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    assert _start(http, sendout, user, cid).json()["state"] == "sending"
    assert _press(http, sendout, user, cid, rids[0])["status"] == "sent"
    _wait_texts(http, sendout, phones, [phones[0]])
    # The provider has it; the tracker counts it a moment later (404 until it saw the start).
    deadline = time.monotonic() + 30
    while (progress := http.get(f"{sendout.tracker}/campaigns/{cid}/progress").json()).get(
            "completed", 0) < 1:
        assert time.monotonic() < deadline, progress
        time.sleep(0.1)
    assert (progress["total"], progress["completed"], progress["pending"]) == (3, 1, 2)
    _end(http, sendout, user, cid)
    final = wait_for_completion(http, sendout.tracker, cid)
    assert (final["completed"], final["skipped"]) == (1, 2)
    assert _reasons(http, sendout, cid)[rids[1]] == ("skipped", "not_sent")
    time.sleep(1)
    assert _texts(http, sendout, phones) == [phones[0]]


def test_send_before_schedule_waits_for_schedule(sendout: Sendout, http: httpx.Client) -> None:
    user = _user(http, sendout)
    phones = _phones(3)
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    _schedule(http, sendout, cid, 3)
    assert _start(http, sendout, user, cid).json()["state"] == "scheduled"
    assert _press(http, sendout, user, cid, rids[0])["status"] == "queued"
    time.sleep(1.5)
    assert _texts(http, sendout, phones) == []  # not before its time
    wait_state(http, sendout, cid, {"sending"}, timeout=10)
    _wait_texts(http, sendout, phones, [phones[0]])


def test_send_after_schedule_sends_at_once_and_unsent_recipients_are_never_messaged(
    sendout: Sendout, http: httpx.Client
) -> None:
    user = _user(http, sendout)
    phones = _phones(3)
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    _schedule(http, sendout, cid, 2)
    _start(http, sendout, user, cid)
    _press(http, sendout, user, cid, rids[0])
    wait_state(http, sendout, cid, {"sending"}, timeout=10)
    assert _press(http, sendout, user, cid, rids[1])["status"] == "sent"
    _wait_texts(http, sendout, phones, sorted(phones[:2]))
    _end(http, sendout, user, cid)
    final = wait_for_completion(http, sendout.tracker, cid)
    assert (final["completed"], final["skipped"]) == (2, 1)
    assert _reasons(http, sendout, cid)[rids[2]] == ("skipped", "not_sent")
    assert _texts(http, sendout, phones) == sorted(phones[:2])


def test_scheduled_campaign_nobody_sent_completes_with_zero_sent(
    sendout: Sendout, http: httpx.Client
) -> None:
    user = _user(http, sendout)
    phones = _phones(2)
    cid, _ = _p2p_campaign(http, sendout, user, phones)
    _schedule(http, sendout, cid, 1.5)
    _start(http, sendout, user, cid)
    final = wait_for_completion(http, sendout.tracker, cid, timeout=30)
    assert (final["completed"], final["skipped"], final["total"]) == (0, 2, 2)
    assert wait_state(http, sendout, cid, {"completed"})["state"] == "completed"
    assert _texts(http, sendout, phones) == []
    # The user is free to send another campaign.
    other, _ = _p2p_campaign(http, sendout, user, _phones(1))
    assert _start(http, sendout, user, other).status_code == 200


def test_scheduled_campaign_canceled_before_its_time_sends_to_nobody(
    sendout: Sendout, http: httpx.Client
) -> None:
    user = _user(http, sendout)
    phones = _phones(2)
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    _schedule(http, sendout, cid, 2.5)
    _start(http, sendout, user, cid)
    _press(http, sendout, user, cid, rids[0])
    _press(http, sendout, user, cid, rids[1])
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "draft"
    time.sleep(3.5)
    assert _texts(http, sendout, phones) == []
    assert http.get(f"{sendout.tracker}/campaigns/{cid}/progress").status_code == 404


def test_send_twice_for_one_recipient_sends_once(sendout: Sendout, http: httpx.Client) -> None:
    user = _user(http, sendout)
    phones = _phones(1)
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    _start(http, sendout, user, cid)
    assert _press(http, sendout, user, cid, rids[0])["status"] == "sent"
    assert _press(http, sendout, user, cid, rids[0])["status"] == "already sent"
    wait_for_completion(http, sendout.tracker, cid)
    time.sleep(0.5)
    assert _texts(http, sendout, phones) == phones


def test_user_cannot_send_two_campaigns_at_once(sendout: Sendout, http: httpx.Client) -> None:
    user = _user(http, sendout)
    first, _ = _p2p_campaign(http, sendout, user, _phones(1))
    second, _ = _p2p_campaign(http, sendout, user, _phones(1))
    assert _start(http, sendout, user, first).status_code == 200
    r = _start(http, sendout, user, second)
    assert r.status_code == 409 and r.json()["detail"]["active_campaign"] == first
    _end(http, sendout, user, first)
    assert _start(http, sendout, user, second).status_code == 200


def test_two_users_send_in_parallel(sendout: Sendout, http: httpx.Client) -> None:
    ada, bob = _user(http, sendout), _user(http, sendout)
    phones_a, phones_b = _phones(2), _phones(2)
    a, rids_a = _p2p_campaign(http, sendout, ada, phones_a)
    b, rids_b = _p2p_campaign(http, sendout, bob, phones_b)
    assert _start(http, sendout, ada, a).status_code == 200
    assert _start(http, sendout, bob, b).status_code == 200
    for rid in rids_a:
        _press(http, sendout, ada, a, rid)
    for rid in rids_b:
        _press(http, sendout, bob, b, rid)
    assert wait_for_completion(http, sendout.tracker, a)["completed"] == 2
    assert wait_for_completion(http, sendout.tracker, b)["completed"] == 2
    # Only a campaign's own senders may press SEND in it.
    r = http.post(f"{sendout.scheduler}/campaigns/{a}/recipients/{rids_a[0]}/send", headers=bob)
    assert r.status_code == 409


def test_fifty_parallel_starts_by_one_user_over_five_campaigns_let_exactly_one_win(
    sendout: Sendout, http: httpx.Client
) -> None:
    user = _user(http, sendout)
    cids = [_p2p_campaign(http, sendout, user, _phones(1))[0] for _ in range(5)]
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda i: _start(client, sendout, user, cids[i % 5]).status_code,
                              range(50)))
    assert sorted(set(codes)) == [200, 409] and codes.count(200) == 1


def test_opted_out_recipient_never_messaged(sendout: Sendout, http: httpx.Client) -> None:
    user = _user(http, sendout)
    org = http.post(f"{sendout.scheduler}/admin/users",
                    json={"organisation": "default", "name": "lookup"},
                    headers={"X-Sendout-Admin-Token": ADMIN_TOKEN}).json()["organisation_id"]
    phones = _phones(3)
    # Opted out before SEND (a STOP reply), and after SEND but before the message left.
    path = f"/organisations/{org}/inbound-sms"
    inbound = f"{sendout.scheduler}{path}"
    r = http.post(inbound, **_signed({"from": phones[0], "body": " stop "}, path))
    assert r.json() == {"opted_out": True, "address": phones[0]}
    later = _signed({"from": phones[2], "body": "Stop by later!"}, path)
    assert http.post(inbound, **later).json() == {"opted_out": False}
    unsigned = http.post(inbound, json={"from": phones[2], "body": "STOP"})
    assert unsigned.status_code == 401
    forged = _signed({"from": phones[2], "body": "STOP"}, path, secret="guess")
    assert http.post(inbound, **forged).status_code == 401
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    _schedule(http, sendout, cid, 2.5)
    _start(http, sendout, user, cid)
    for rid in rids:
        _press(http, sendout, user, cid, rid)
    r = http.post(f"{sendout.scheduler}/opt-outs", headers=user, json={"address": phones[1]})
    assert r.status_code == 201
    final = wait_for_completion(http, sendout.tracker, cid, timeout=30)
    assert (final["completed"], final["skipped"]) == (1, 2)
    # The seed's "processed, opted out, sent": 3 pressed SEND, 2 opted out, 1 sent.
    processed = http.get(f"{sendout.scheduler}/campaigns/{cid}").json()["processed"]
    assert (processed, final["opted_out"], final["completed"]) == (3, 2, 1)
    assert final["reasons"]["skipped"] == {"opted_out": 2}
    reasons = _reasons(http, sendout, cid)
    assert reasons[rids[0]] == reasons[rids[1]] == ("skipped", "opted_out")
    assert _texts(http, sendout, phones) == [phones[2]]


def test_end_requires_typed_END_and_moves_the_campaign_to_completed(
    sendout: Sendout, http: httpx.Client
) -> None:
    user = _user(http, sendout)
    phones = _phones(2)
    cid, rids = _p2p_campaign(http, sendout, user, phones)
    _start(http, sendout, user, cid)
    _press(http, sendout, user, cid, rids[0])
    for wrong in ("end", "END ", "yes", ""):
        r = http.post(f"{sendout.scheduler}/campaigns/{cid}/end", headers=user,
                      json={"confirmation": wrong})
        assert r.status_code == 422, wrong
    _end(http, sendout, user, cid)
    completed = http.get(f"{sendout.scheduler}/campaigns", headers=user,
                         params={"state": "completed"}).json()["campaigns"]
    assert cid in [c["id"] for c in completed]
    final = wait_for_completion(http, sendout.tracker, cid)
    # The message already SENT still went.
    assert (final["completed"], final["skipped"]) == (1, 1)
    assert _texts(http, sendout, phones) == [phones[0]]


def test_another_organisations_user_cannot_see_or_send_the_campaign(
    sendout: Sendout, http: httpx.Client
) -> None:
    owner, stranger = _user(http, sendout, "Org A"), _user(http, sendout, "Org B")
    cid, rids = _p2p_campaign(http, sendout, owner, _phones(1))
    for method, path, body in [
        ("POST", f"/campaigns/{cid}/p2p/start", None),
        ("GET", f"/campaigns/{cid}/p2p/recipients", None),
        ("POST", f"/campaigns/{cid}/recipients/{rids[0]}/send", None),
        ("POST", f"/campaigns/{cid}/end", {"confirmation": "END"}),
    ]:
        r = http.request(method, f"{sendout.scheduler}{path}", headers=stranger, json=body)
        assert r.status_code == 404, (path, r.text)
