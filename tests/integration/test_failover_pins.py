"""A message left in doubt with one provider of a failover chain, retried by another dispatcher
process (or after a restart): its retry must go to that provider alone, on real PostgreSQL.

The chain marks the reason stored with the retry (`in doubt at a: …`); the dispatcher's retry
round is to pass the name back (`OutgoingMessage.pinned_to`). It does not yet
(services/dispatcher/providers/failover.py names the lines of service.py to change): the test is
expected to fail until then, and fails loudly (strict) once it passes."""

from __future__ import annotations

import asyncpg
import pytest

from services.dispatcher import repo
from services.dispatcher.providers import OutgoingMessage, RetryableProviderError
from services.dispatcher.providers.failover import FailoverProvider, pinned_to
from services.dispatcher.reliability import RetryPolicy
from services.dispatcher.service import AbortRegistry, Dispatcher, RateLimiter
from tests.factories import send_requested
from tests.integration.test_dispatcher_claims import _campaign, settle_retries

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def _empty_retry_schedule(dispatcher_pool: asyncpg.Pool) -> None:
    async with dispatcher_pool.acquire() as conn:
        await conn.execute("DELETE FROM retries")


class Provider:
    """Answers as told per address: "ok", "refused" (retryable, certain), "doubt" (timed out)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.answers: dict[str, str] = {}
        self.calls: list[str] = []

    async def send(self, message: OutgoingMessage) -> str:
        self.calls.append(message.to)
        answer = self.answers.get(message.to, "ok")
        if answer != "ok":
            raise RetryableProviderError("timed out" if answer == "doubt" else "HTTP 503",
                                         in_doubt=answer == "doubt")
        return f"{self.name}-{len(self.calls)}"

    async def close(self) -> None:
        return None


def _dispatcher(pool: asyncpg.Pool, chain: FailoverProvider) -> Dispatcher:
    return Dispatcher(pool, {"email": chain, "sms": chain}, aborts=AbortRegistry(),
                      concurrency=4, rate_limiter=RateLimiter(0),
                      retry_policy=RetryPolicy(base_seconds=0.05, deadline_seconds=5))


async def test_a_retry_taken_by_another_process_goes_to_the_provider_it_was_in_doubt_with(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    a, b = Provider("a"), Provider("b")
    cid = await _campaign(dispatcher_pool)
    a.answers["v1@example.org"] = "doubt"
    first = _dispatcher(dispatcher_pool, FailoverProvider([("a", a), ("b", b)], errors=50))
    assert await first.dispatch([send_requested(cid, 1, "v1@example.org")]) == []
    async with dispatcher_pool.acquire() as conn:
        reason = await conn.fetchval("SELECT last_reason FROM retries WHERE campaign_id = $1",
                                     cid)
    assert pinned_to(reason) == "a" and b.calls == []
    # Another process: its chain has just passed `a` over (one refusal), so a message without
    # a pin goes to `b`; this one's retry must still go to `a`, which now accepts it.
    second_chain = FailoverProvider([("a", a), ("b", b)], errors=1)
    second = _dispatcher(dispatcher_pool, second_chain)
    a.answers["other@example.org"] = "refused"
    other = await _campaign(dispatcher_pool)
    await second.dispatch([send_requested(other, 1, "other@example.org")])
    assert second_chain.passed_over(0)
    a.answers["v1@example.org"] = "ok"
    [outcome] = [o for o in await settle_retries(second) if o.campaign_id == cid]
    assert outcome.status == "completed"
    assert "v1@example.org" not in b.calls
    async with dispatcher_pool.acquire() as conn:
        assert await repo.settled_count(conn, cid) == 1


async def test_the_reason_on_the_schedule_names_the_provider_a_message_is_in_doubt_with(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    a, b = Provider("a"), Provider("b")
    cid = await _campaign(dispatcher_pool)
    a.answers["v1@example.org"] = "doubt"
    d = _dispatcher(dispatcher_pool, FailoverProvider([("a", a), ("b", b)], errors=50))
    assert await d.dispatch([send_requested(cid, 1, "v1@example.org")]) == []
    async with dispatcher_pool.acquire() as conn:
        reason = await conn.fetchval("SELECT last_reason FROM retries WHERE campaign_id = $1",
                                     cid)
    assert reason.startswith("in doubt at a: ") and pinned_to(reason) == "a"
    a.answers["v1@example.org"] = "ok"  # the same process: its pin in memory
    [outcome] = await settle_retries(d)
    assert outcome.status == "completed" and b.calls == []


