"""The tracker's consumers write the same campaigns' rows from concurrent transactions."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from services.tracker import repo, service
from shared.events import CampaignCompleted
from tests.factories import outcome, started

pytestmark = pytest.mark.integration


@dataclass
class Rec:
    partition: int
    offset: int


async def _ignore(events: list[CampaignCompleted]) -> None:
    pass


async def test_outcome_and_lifecycle_batches_of_the_same_campaigns_do_not_deadlock(
    tracker_pool: asyncpg.Pool,
) -> None:
    """An outcome batch writes counters then states; a lifecycle batch states then totals.
    Run side by side over the same campaigns, in opposite orders, neither may be aborted."""
    topic = f"test-concurrency-{uuid.uuid4()}"
    rounds, per_round = 30, 6
    for r in range(rounds):
        cids = [uuid.uuid4() for _ in range(per_round)]
        # Outcomes first for some campaigns, so each transaction meets rows the other wrote.
        await service.apply_outcomes(tracker_pool, topic, [
            (Rec(0, 10_000 * r + i), outcome(c, 0)) for i, c in enumerate(cids)], _ignore)
        outcomes = [(Rec(1, 10_000 * r + i), outcome(c, 1)) for i, c in enumerate(cids)]
        lifecycle = [started(c, 3) for c in reversed(cids)]
        await asyncio.gather(
            service.apply_outcomes(tracker_pool, topic, outcomes, _ignore),
            service.apply_lifecycle(tracker_pool, lifecycle, _ignore),
        )
        async with tracker_pool.acquire() as conn:
            progress = await repo.progress_of(conn, cids)
        assert all((p.counts.total, p.counts.completed) == (3, 2) for p in progress.values())
