"""The console's sessions, CSRF, sign-in limits, template preview and the campaign state it
shows; the scheduler's password hashing and failure limiter."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.console import app as console_app
from services.console.app import (
    csv_partly_added,
    local_iso,
    preview,
    progress_state,
    shown_state,
)
from services.console.sessions import FailedSignIns, SessionStore
from services.console.settings import ConsoleSettings
from services.scheduler.passwords import FailureLimiter, hash_password, verify


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_after_the_idle_timeout_and_on_sign_out() -> None:
    clock = Clock()
    store = SessionStore(idle_seconds=60, clock=clock)
    s = store.create(token="t", user_id="u", name="n", organisation="o")
    clock.now += 59
    assert store.get(s.id) is s
    clock.now += 59  # used 59 s ago: still alive (the timeout counts idle time)
    assert store.get(s.id) is s
    clock.now += 61
    assert store.get(s.id) is None
    s2 = store.create(token="t", user_id="u", name="n", organisation="o")
    store.end(s2.id)
    assert store.get(s2.id) is None
    assert store.get(None) is None and store.get("made-up") is None


def test_csrf_token_must_match() -> None:
    store = SessionStore(idle_seconds=60)
    s = store.create(token="t", user_id="u", name="n", organisation="o")
    assert s.csrf_ok(s.csrf)
    assert not s.csrf_ok("forged") and not s.csrf_ok(None) and not s.csrf_ok("")


def test_console_blocks_a_browser_after_repeated_failures() -> None:
    clock = Clock()
    limits = FailedSignIns(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert not limits.blocked("1.2.3.4")
        limits.failed("1.2.3.4")
    assert limits.blocked("1.2.3.4") and not limits.blocked("5.6.7.8")
    clock.now += 61
    assert not limits.blocked("1.2.3.4")


def test_scheduler_limiter_counts_failures_per_key_in_a_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=2, window=100, clock=clock)
    limiter.failed("login:a")
    assert limiter.retry_after("login:a") == 0
    limiter.failed("login:a")
    assert limiter.retry_after("login:a") == 100
    assert limiter.retry_after("login:b") == 0
    clock.now += 101
    assert limiter.retry_after("login:a") == 0
    limiter.failed("login:a")
    limiter.succeeded("login:a")
    assert limiter.retry_after("login:a") == 0


def test_passwords_are_argon2id_hashes() -> None:
    async def run() -> None:
        h = await hash_password("correct horse battery")
        assert h.startswith("$argon2id$") and "correct" not in h
        assert await verify(h, "correct horse battery")
        assert not await verify(h, "wrong")
        assert not await verify("not a hash", "correct horse battery")

    asyncio.run(run())


def test_preview_renders_in_a_sandbox_and_reports_problems() -> None:
    assert preview("Hi {{ first_name }}", {"first_name": "Ada"}) == ("Hi Ada", None)
    out, error = preview("Hi {{ nobody }}", {"first_name": "Ada"})
    assert out is None and "nobody" in (error or "")
    out, error = preview("{{ ''.__class__.__mro__ }}", {})
    assert out is None and error
    assert preview(None, {}) == (None, None)


def test_times_are_shown_in_the_users_time_zone() -> None:
    assert local_iso("2026-06-01T07:30:00+00:00", "Europe/Copenhagen") == "2026-06-01 09:30"
    assert local_iso("2026-06-01T07:30:00+00:00", "Not/AZone") == "2026-06-01 07:30"
    assert local_iso(None, "UTC") == ""


def _progress(state: str, pending: int | None, total: int | None = 1500) -> dict[str, Any]:
    settled = (total or 0) - (pending or 0)
    return {"state": state, "total": total, "pending": pending, "completed": settled - 1472
            if settled >= 1472 else settled, "failed": 0,
            "skipped": 1472 if settled >= 1472 else 0, "delivered": 0, "not_delivered": 0,
            "reasons": {"failed": {}, "skipped": {}, "not_delivered": {}}}


@pytest.mark.parametrize(("scheduler", "tracker", "pending", "shown"), [
    # The scheduler lags the tracker's "nothing pending".
    ("aborting", "aborted", 0, "aborted"),
    ("aborting", "aborting", 0, "aborted"),
    ("aborting", "completed", 0, "aborted"),  # the last message settled before the abort did
    ("sending", "completed", 0, "completed"),
    ("sending", "sending", 0, "completed"),
    # The tracker lags the scheduler's abort and end.
    ("aborting", "sending", 40, "aborting"),
    ("completed", "sending", 40, "completed"),  # an ended peer-to-peer campaign
    ("aborted", "aborting", 40, "aborted"),
    # Nothing to reconcile.
    ("aborting", "aborting", 40, "aborting"),
    ("sending", "sending", 40, "sending"),
    ("sending", "aborting", 40, "aborting"),
    ("scheduled", "sending", 40, "sending"),  # the schedule came while the page was open
    ("sending", "starting", None, "sending"),
    ("draft", None, None, "draft"),
])
def test_the_state_shown_agrees_with_the_progress_whichever_side_lags(
        scheduler: str, tracker: str | None, pending: int | None, shown: str) -> None:
    progress = _progress(tracker, pending) if tracker else None
    assert shown_state(scheduler, progress) == shown


def test_the_progress_block_says_starting_until_the_tracker_has_the_totals() -> None:
    assert progress_state("sending", _progress("starting", None, total=None)) == "starting"
    assert progress_state("aborting", _progress("starting", None, total=None)) == "aborting"
    assert progress_state("sending", _progress("sending", 3)) == "sending"


class _FakeApis:
    """The scheduler's and the tracker's answers for one campaign (httpx's MockTransport)."""

    def __init__(self) -> None:
        self.cid = str(uuid.uuid4())
        self.campaign: dict[str, Any] = {
            "id": self.cid, "name": "Polls open", "kind": "mass", "channels": ["email"],
            "sender": {"name": "Election Office"}, "recipients": 1500, "total": 1500,
            "state": "aborting", "abort_pending": 1472, "processed": 0,
            "template": {"version": 1, "email_subject": "Hi", "email_body": "Hello",
                         "sms_body": None}}
        self.progress: dict[str, Any] | None = _progress("aborted", 0)
        self.tracker_down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/campaigns":
            return httpx.Response(200, json={"campaigns": [self.campaign]})
        if path == f"/campaigns/{self.cid}":
            return httpx.Response(200, json=self.campaign)
        if path == f"/campaigns/{self.cid}/lists":
            return httpx.Response(200, json={"lists": []})
        if path == f"/campaigns/{self.cid}/progress" and self.tracker_down:
            return httpx.Response(503, json={"detail": "starting"})
        if path == f"/campaigns/{self.cid}/progress" and self.progress is not None:
            return httpx.Response(200, json=self.progress)
        return httpx.Response(404, json={"detail": "not found"})


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, _FakeApis]]:
    apis = _FakeApis()

    class Api(console_app.Api):
        def __init__(self, scheduler_url: str, tracker_url: str) -> None:
            transport = httpx.MockTransport(apis.handle)
            self.scheduler = httpx.AsyncClient(base_url=scheduler_url, transport=transport)
            self.tracker = httpx.AsyncClient(base_url=tracker_url, transport=transport)

    monkeypatch.setattr(console_app, "Api", Api)
    app = console_app.create_app(
        ConsoleSettings(progress_poll_seconds=0.01, stream_max_seconds=0.3))
    session = app.state.sessions.create(token="t", user_id="u", name="Ada",
                                        organisation="Election Office")
    with TestClient(app) as client:
        client.cookies.set(console_app.COOKIE, session.id)
        yield client, apis


def _words(html: str) -> tuple[str, str]:
    sentence = re.search(r"This campaign is <span data-campaign-state>(\w+)</span>", html)
    progress = re.search(r'State: <strong data-field="state">(\w+)</strong>', html)
    assert sentence and progress, html
    return sentence[1], progress[1]


def test_an_aborted_campaign_is_not_shown_as_aborting_while_the_scheduler_catches_up(
        console: tuple[TestClient, _FakeApis]) -> None:
    client, apis = console
    page = client.get(f"/campaigns/{apis.cid}")
    assert page.status_code == 200
    assert _words(page.text) == ("aborted", "aborted")
    assert "aborting" not in page.text
    assert "When it was aborted, 1472 messages were still pending" in page.text

    apis.progress = _progress("aborting", 40)  # still settling: aborting is right
    assert _words(client.get(f"/campaigns/{apis.cid}").text) == ("aborting", "aborting")


def test_a_campaign_the_tracker_completed_offers_no_abort(
        console: tuple[TestClient, _FakeApis]) -> None:
    client, apis = console
    apis.campaign.update(state="sending", abort_pending=None)
    apis.progress = _progress("completed", 0)
    page = client.get(f"/campaigns/{apis.cid}").text
    assert _words(page) == ("completed", "completed")
    assert f"/campaigns/{apis.cid}/abort" not in page


def test_an_ended_peer_to_peer_campaign_shows_completed_while_the_tracker_settles(
        console: tuple[TestClient, _FakeApis]) -> None:
    client, apis = console
    apis.campaign.update(kind="p2p", state="completed", abort_pending=None)
    apis.progress = _progress("sending", 40)
    page = client.get(f"/p2p/{apis.cid}").text
    assert re.search(r"recipients · <span data-campaign-state>completed</span>", page)
    assert 'State: <strong data-field="state">completed</strong>' in page
    assert "End Campaign" not in page


def test_the_live_progress_carries_the_reconciled_state(
        console: tuple[TestClient, _FakeApis]) -> None:
    client, apis = console
    apis.campaign.update(kind="p2p", state="completed", abort_pending=None, processed=12)
    apis.progress = _progress("sending", 40)
    # The stream follows the tracker until it is done (its counters still move): here until
    # the stream's time is up.
    with client.stream("GET", f"/campaigns/{apis.cid}/events?p2p=1") as response:
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    assert [(e["state"], e["pending"], e["processed"]) for e in events] == \
        [("completed", 40, 12)]


@pytest.mark.parametrize("kind", ["mass", "p2p"])
def test_a_draft_offers_a_schedule_and_send_out_now_unless_peer_to_peer(
        console: tuple[TestClient, _FakeApis], kind: str) -> None:
    client, apis = console
    apis.campaign.update(kind=kind, state="draft", abort_pending=None)
    apis.progress = None  # the tracker learns a campaign when it starts
    page = client.get(f"/campaigns/{apis.cid}").text
    assert page.count(f'action="/campaigns/{apis.cid}/schedule"') == 1
    assert (f'action="/campaigns/{apis.cid}/send-now"' in page) == (kind == "mass")
    assert ("texters send it from" in page) == (kind == "p2p")


def test_the_campaign_list_files_a_campaign_under_the_state_its_progress_shows(
        console: tuple[TestClient, _FakeApis]) -> None:
    client, apis = console
    page = client.get("/campaigns").text
    assert "Aborted (1)" in page and "Aborting (0)" in page
    assert "Polls open" in client.get("/campaigns?state=aborted").text
    assert "Polls open" not in client.get("/campaigns?state=aborting").text

    apis.tracker_down = True  # the list still shows, with the scheduler's state
    assert "Aborting (1)" in client.get("/campaigns").text


def test_peer_to_peer_lists_follow_the_shown_state(
        console: tuple[TestClient, _FakeApis]) -> None:
    client, apis = console
    apis.campaign.update(kind="p2p", state="sending", abort_pending=None)
    apis.progress = _progress("completed", 0)
    assert "Polls open" not in client.get("/p2p").text
    assert "Polls open" in client.get("/p2p/completed").text


def test_a_partly_refused_csv_is_reported_in_words_for_one_and_for_many() -> None:
    assert csv_partly_added(1, 1) == (
        "1 row of the CSV was refused, listed below; its other recipient was added.")
    assert csv_partly_added(3, 12) == (
        "3 rows of the CSV were refused, listed below; its other 12 recipients were added.")
    assert csv_partly_added(2, 0) == (
        "2 rows of the CSV were refused, listed below; none of its other rows was added.")
