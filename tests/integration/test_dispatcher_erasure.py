"""Erasure reaches the dispatcher's retry schedule, on real PostgreSQL: a retried message of an
erased voter loses its address, is never sent, and is settled as skipped `erased`."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from services.dispatcher import erasure, repo
from services.dispatcher.reliability import RetryPolicy
from services.dispatcher.service import AbortRegistry, Dispatcher, RateLimiter
from shared.events import ErasedRecipient, RecipientsErased
from tests.factories import send_requested, started
from tests.integration.test_dispatcher_claims import RecordingProvider

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def _empty_retry_schedule(dispatcher_pool: asyncpg.Pool) -> None:
    async with dispatcher_pool.acquire() as conn:
        await conn.execute("DELETE FROM retries")


async def _retry_rows(pool: asyncpg.Pool, cid: uuid.UUID) -> dict[int, dict[str, object]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT recipient_id, status, request::text AS request, due_at <= now() AS due "
            "FROM retries WHERE campaign_id = $1", cid)
    return {r["recipient_id"]: {"status": r["status"], "due": r["due"],
                                **json.loads(r["request"])} for r in rows}


async def test_an_erased_voters_waiting_retry_is_scrubbed_never_sent_and_settled_skipped(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = uuid.uuid4()
    async with dispatcher_pool.acquire() as conn:
        await repo.save_template(conn, started(cid, 3))
    addresses = {i: f"e{i}-{cid.hex[:6]}@example.org" for i in (1, 2, 3)}
    # Each first call fails retryably; the next attempt is a minute away.
    provider = RecordingProvider(flaky={addresses[1], addresses[2]})
    d = Dispatcher(dispatcher_pool, {"email": provider, "sms": provider},
                   aborts=AbortRegistry(), concurrency=4, rate_limiter=RateLimiter(0),
                   retry_policy=RetryPolicy(base_seconds=60, cap_seconds=60,
                                            deadline_seconds=3600),
                   instance=f"test-{uuid.uuid4().hex[:6]}")
    outcomes = await d.dispatch([send_requested(cid, i, addresses[i]) for i in (1, 2, 3)])
    assert [(o.recipient_id, o.status) for o in outcomes] == [(3, "completed")]
    waiting = await _retry_rows(dispatcher_pool, cid)
    assert {i: (r["status"], r["address"]) for i, r in waiting.items()} == {
        1: ("waiting", addresses[1]), 2: ("waiting", addresses[2])}

    event = RecipientsErased(organisation_id=uuid.uuid4(), voter_id=7,
                             recipients=[ErasedRecipient(campaign_id=cid, recipient_id=1)])
    async with dispatcher_pool.acquire() as conn:
        await erasure.erase(conn, [event])
        await erasure.erase(conn, [event])  # a redelivered event changes nothing more
        recorded = await repo.recorded_outcomes(conn, [(cid, 1, "email"), (cid, 2, "email")])
        stored = await conn.fetchval(
            "SELECT outcome::text FROM deliveries WHERE campaign_id = $1 AND recipient_id = 1",
            cid)

    rows = await _retry_rows(dispatcher_pool, cid)
    # Recipient 1's retry holds no personal data and is due; recipient 2's is untouched.
    assert (rows[1]["address"], rows[1]["variables"], rows[1]["due"]) == (None, {}, True)
    assert (rows[2]["address"], rows[2]["variables"], rows[2]["due"]) == (
        addresses[2], {"first_name": "Ada"}, False)
    assert list(recorded) == [(cid, 1, "email")]
    assert (recorded[(cid, 1, "email")].status, recorded[(cid, 1, "email")].reason,
            recorded[(cid, 1, "email")].address) == ("skipped", "erased", None)
    assert addresses[1] not in stored

    published: list[object] = []

    async def publish(batch: list[tuple[object, bytes]]) -> None:
        published.extend(o for o, _ in batch)

    calls_before = len(provider.calls)
    assert await d.run_due_retries(publish) == 1
    # Reported to the tracker from the record, without an address; no provider call.
    assert [(o.recipient_id, o.status, o.reason, o.address) for o in published] == [
        (1, "skipped", "erased", None)]
    assert len(provider.calls) == calls_before
    assert addresses[1] not in [c.to for c in provider.calls[calls_before:]]
    assert set(await _retry_rows(dispatcher_pool, cid)) == {2}  # off the schedule
