"""The console's sessions, CSRF, sign-in limits and template preview; the scheduler's password
hashing and failure limiter."""

from __future__ import annotations

import asyncio

from services.console.app import local_iso, preview
from services.console.sessions import FailedSignIns, SessionStore
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
