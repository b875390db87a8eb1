"""Property: whatever interleaving of provider answers (accepted, refused, retryable, raising),
redeliveries, crashes mid-call and aborts, each key is accepted by the provider at most once,
every report of a key says the same, and once the schedule drains every key has exactly one
outcome: pending + completed + failed + skipped = total at every step. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dispatcher import domain, repo
from services.dispatcher.bootstrap import MIGRATIONS
from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.reliability import RetryPolicy
from services.dispatcher.service import AbortRegistry, Dispatcher, RateLimiter
from shared import db
from tests.conftest import Stack
from tests.factories import send_requested, started

pytestmark = pytest.mark.integration

ANSWERS = st.sampled_from(["ok", "refuse", "retry", "raise"])
OPS = st.sampled_from(["deliver", "crash", "retry_round", "abort"])


class ScriptedProvider:
    """Answers each address from its script (then accepts); tallies acceptances per key."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = {a: list(s) for a, s in scripts.items()}
        self.accepted: Counter[str] = Counter()

    async def send(self, message: OutgoingMessage) -> str:
        script = self.scripts.get(message.to) or []
        answer = script.pop(0) if script else "ok"
        if answer == "refuse":
            raise PermanentProviderError("HTTP 422: no")
        if answer == "retry":
            raise RetryableProviderError("HTTP 503: busy")
        if answer == "raise":
            raise RuntimeError("surprise")
        self.accepted[message.idempotency_key] += 1
        return f"id-{message.idempotency_key}"

    async def close(self) -> None:
        return None


class _Db:
    """One event loop and pool for all examples (a pool per example cost more than the
    example)."""

    def __init__(self, dsn: str) -> None:
        self.runner = asyncio.Runner()
        self.pool: asyncpg.Pool = self.runner.run(self._open(dsn))

    @staticmethod
    async def _open(dsn: str) -> asyncpg.Pool:
        # The integration tests' own dispatcher schema (conftest.py says why).
        pool = await db.create_pool(dsn, "dispatcher_itest", max_size=3)
        await db.migrate(pool, "dispatcher_itest", MIGRATIONS)
        return pool

    def close(self) -> None:
        self.runner.run(self.pool.close())
        self.runner.close()


@pytest.fixture(scope="module")
def prop_db(stack: Stack) -> Any:
    handle = _Db(stack.database_url)
    yield handle
    handle.close()


async def _run(pool: asyncpg.Pool, scripts: list[list[str]], ops: list[str],
               crash_picks: list[bool]) -> None:
    cid = uuid.uuid4()
    async with pool.acquire() as conn:
        await repo.save_template(conn, started(cid, len(scripts)))
        await conn.execute("DELETE FROM retries")
    addresses = [f"k{i}@example.org" for i in range(len(scripts))]
    batch = [send_requested(cid, i + 1, a) for i, a in enumerate(addresses)]
    provider = ScriptedProvider(dict(zip(addresses, scripts, strict=True)))
    aborts = AbortRegistry()
    spans = [(2_000_000 + uuid.uuid4().int % 1_000_000, 0, len(batch) - 1)]
    d = Dispatcher(pool, {"email": provider, "sms": provider}, aborts=aborts, concurrency=3,
                   rate_limiter=RateLimiter(0), instance="prop",
                   retry_policy=RetryPolicy(base_seconds=0.001, cap_seconds=0.002,
                                            deadline_seconds=60), claim_lease_seconds=0.5)
    reported: dict[int, set[tuple[str, str | None, str | None]]] = {}

    def note(outcomes: list[Any]) -> None:
        for o in outcomes:
            reported.setdefault(o.recipient_id, set()).add(
                (o.status, o.reason, o.provider_message_id))

    async def publish(encoded: list[tuple[domain.Outcome, bytes]]) -> None:
        note([o for o, _ in encoded])

    async def retry_round() -> None:
        async with pool.acquire() as conn:
            await conn.execute("UPDATE retries SET due_at = now() WHERE campaign_id = $1", cid)
        await d.run_due_retries(publish)

    picks = iter(crash_picks)
    crashed: set[int] = set()
    for op in ops:
        if op == "deliver":
            note(await d.dispatch(batch, spans=spans))
        elif op == "retry_round":
            await retry_round()
        elif op == "abort":
            aborts.add({cid})
            async with pool.acquire() as conn:
                await repo.close_gate(conn, cid)
        elif op == "crash":
            # A process claimed some unsettled keys and died mid-call; some of those calls
            # reached the provider.
            async with pool.acquire() as conn:
                settled = await repo.settled(conn, batch)
                scheduled = await repo.scheduled_keys(conn, batch)
            # (A key some process claimed is never called again by another: it is waited for
            # or reported in doubt, so a crashed process only ever held unclaimed keys.)
            open_keys = [r for r in batch if domain.dedupe_key(r) not in settled
                         and domain.dedupe_key(r) not in scheduled
                         and r.recipient_id not in crashed]
            chosen = [r for r in open_keys if next(picks, False)]
            crashed.update(r.recipient_id for r in chosen)
            if chosen:
                async with pool.acquire() as conn:
                    taken = await repo.claim(conn, uuid.uuid4(),
                                             [(cid, "email", [r.recipient_id for r in chosen])],
                                             owner="dead", spans=spans)
                    await conn.execute("UPDATE claims SET claimed_at = now() - interval '1 hour'"
                                       " WHERE campaign_id = $1 AND claimed_by = 'dead'", cid)
                if taken:
                    for r in chosen:
                        if next(picks, False):
                            provider.accepted[str(r.event_id)] += 1
        # Invariant at every step: each key accepted at most once; reports agree.
        assert max(provider.accepted.values(), default=0) <= 1
        assert all(len(v) == 1 for v in reported.values()), reported
    # Drain: redeliver and run the schedule until every key has its outcome.
    for _ in range(60):
        note(await d.dispatch(batch, spans=spans))
        await retry_round()
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT count(*) FROM retries WHERE campaign_id = $1", cid):
                break
    assert max(provider.accepted.values(), default=0) <= 1
    assert all(len(v) == 1 for v in reported.values()), reported
    async with pool.acquire() as conn:
        final = await repo.settled(conn, batch)
    counts = Counter(o.status for o in final.values())
    assert counts["completed"] + counts["failed"] + counts["skipped"] == len(batch)
    assert set(reported) == {r.recipient_id for r in batch}
    # A key the provider accepted is reported completed, or in doubt if its process died.
    for r in batch:
        status, reason, _ = next(iter(reported[r.recipient_id]))
        if provider.accepted[str(r.event_id)]:
            assert status == "completed" or reason == "in_doubt"


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    scripts=st.lists(st.lists(ANSWERS, min_size=1, max_size=3), min_size=1, max_size=8),
    ops=st.lists(OPS, min_size=1, max_size=6),
    crash_picks=st.lists(st.booleans(), max_size=20),
)
def test_any_interleaving_keeps_one_acceptance_per_key_and_every_key_settled_once(
    prop_db: _Db, scripts: list[list[str]], ops: list[str], crash_picks: list[bool]
) -> None:
    prop_db.runner.run(_run(prop_db.pool, scripts, ops, crash_picks))
