"""The tracker's projection on real PostgreSQL: exact, idempotent counting."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from services.tracker import repo, service
from shared.events import CampaignAborted, CampaignCompleted
from tests.factories import outcome, started

pytestmark = pytest.mark.integration
TOPIC = f"test-outcomes-{uuid.uuid4()}"  # private offsets per test run


@dataclass
class Rec:
    partition: int
    offset: int


class Published:
    def __init__(self) -> None:
        self.events: list[CampaignCompleted] = []

    async def __call__(self, events: list[CampaignCompleted]) -> None:
        self.events.extend(events)


async def _progress(pool: asyncpg.Pool, cid: uuid.UUID) -> dict[str, object]:
    async with pool.acquire() as conn:
        p = await repo.get_progress(conn, cid)
    assert p is not None
    return p.view()


async def test_each_outcome_is_counted_once_even_when_redelivered(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = uuid.uuid4()
    published = Published()
    await service.apply_lifecycle(tracker_pool, [started(cid, 5)], published)
    batch = [(Rec(0, 100 + i), outcome(cid, i, s))
             for i, s in enumerate(["completed", "completed", "failed"])]
    await service.apply_outcomes(tracker_pool, TOPIC, batch, published)
    # Kafka redelivers the same records (commit lost) ...
    await service.apply_outcomes(tracker_pool, TOPIC, batch, published)
    # ... and a dispatcher re-reports recipient 0 as a new record.
    await service.apply_outcomes(tracker_pool, TOPIC, [(Rec(0, 200), outcome(cid, 0))], published)
    p = await _progress(tracker_pool, cid)
    assert (p["total"], p["pending"], p["completed"], p["failed"], p["skipped"]) == (5, 2, 2, 1, 0)
    assert p["state"] == "sending" and published.events == []


async def test_a_batch_holding_outcomes_counted_before_counts_only_the_new_ones(
    tracker_pool: asyncpg.Pool,
) -> None:
    """New records (past the stored offsets) carrying outcomes counted before — two
    dispatchers raced on them — next to new ones, two of them for one key."""
    cid = uuid.uuid4()
    published = Published()
    await service.apply_lifecycle(tracker_pool, [started(cid, 6)], published)
    await service.apply_outcomes(tracker_pool, TOPIC, [
        (Rec(7, 0), outcome(cid, 1)), (Rec(7, 1), outcome(cid, 2, "failed")),
    ], published)
    await service.apply_outcomes(tracker_pool, TOPIC, [
        (Rec(7, 2), outcome(cid, 1, "failed")),  # counted before, as completed: stays so
        (Rec(7, 3), outcome(cid, 2, "failed")),
        (Rec(7, 4), outcome(cid, 3, "skipped")),
        (Rec(7, 5), outcome(cid, 4)),
        (Rec(7, 6), outcome(cid, 4)),  # twice in the batch
    ], published)
    p = await _progress(tracker_pool, cid)
    assert (p["completed"], p["failed"], p["skipped"], p["pending"]) == (2, 1, 1, 2)
    assert p["reasons"]["failed"] == {"HTTP 422: recipient unreachable": 1}
    assert p["reasons"]["skipped"] == {"missing_address": 1}


async def test_skips_and_failures_are_counted_per_reason_once(
    tracker_pool: asyncpg.Pool,
) -> None:
    """The seed's "opted out" counter and the reasons next to failed / skipped."""
    cid = uuid.uuid4()
    published = Published()
    await service.apply_lifecycle(tracker_pool, [started(cid, 6)], published)
    opted = [outcome(cid, i, "skipped").model_copy(update={"reason": "opted_out"})
             for i in (0, 1)]
    batch = [(Rec(6, i), o) for i, o in enumerate(
        [*opted, outcome(cid, 2, "skipped"), outcome(cid, 3, "failed"), outcome(cid, 4)])]
    await service.apply_outcomes(tracker_pool, TOPIC, batch, published)
    await service.apply_outcomes(tracker_pool, TOPIC, batch, published)  # redelivered
    p = await _progress(tracker_pool, cid)
    assert (p["skipped"], p["opted_out"], p["failed"], p["pending"]) == (3, 2, 1, 1)
    assert p["reasons"] == {
        "failed": {"HTTP 422: recipient unreachable": 1},
        "skipped": {"missing_address": 1, "opted_out": 2},
        "not_delivered": {},
    }
    assert p["by_channel"]["email"]["opted_out"] == 2


async def test_campaign_completes_when_nothing_is_pending_and_says_so_once(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = uuid.uuid4()
    published = Published()
    await service.apply_lifecycle(tracker_pool, [started(cid, 3)], published)
    batch = [(Rec(1, i), outcome(cid, i, s))
             for i, s in enumerate(["completed", "skipped", "failed"])]
    await service.apply_outcomes(tracker_pool, TOPIC, batch, published)
    await service.apply_outcomes(tracker_pool, TOPIC, batch, published)
    p = await _progress(tracker_pool, cid)
    assert (p["state"], p["pending"]) == ("completed", 0)
    assert [(e.campaign_id, e.completed, e.failed, e.skipped) for e in published.events] == [
        (cid, 1, 1, 1)
    ]


async def test_outcomes_that_overtake_the_started_event_are_kept_and_complete_it(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = uuid.uuid4()
    published = Published()
    await service.apply_outcomes(
        tracker_pool, TOPIC, [(Rec(2, 0), outcome(cid, 1)), (Rec(2, 1), outcome(cid, 2))],
        published,
    )
    assert (await _progress(tracker_pool, cid))["state"] == "starting"
    await service.apply_lifecycle(tracker_pool, [started(cid, 2)], published)
    p = await _progress(tracker_pool, cid)
    assert (p["state"], p["completed"], p["pending"]) == ("completed", 2, 0)
    assert len(published.events) == 1


async def test_a_batch_that_fails_leaves_no_partial_counts(tracker_pool: asyncpg.Pool) -> None:
    cid = uuid.uuid4()

    async def broken_publish(events: list[CampaignCompleted]) -> None:
        raise ConnectionError("broker down")

    await service.apply_lifecycle(tracker_pool, [started(cid, 1)], Published())
    with pytest.raises(ConnectionError):
        await service.apply_outcomes(tracker_pool, TOPIC, [(Rec(3, 0), outcome(cid, 1))],
                                     broken_publish)
    p = await _progress(tracker_pool, cid)
    assert (p["completed"], p["pending"], p["state"]) == (0, 1, "sending")
    # The redelivery then succeeds and counts it.
    published = Published()
    await service.apply_outcomes(tracker_pool, TOPIC, [(Rec(3, 0), outcome(cid, 1))], published)
    assert (await _progress(tracker_pool, cid))["state"] == "completed"


async def test_counts_are_kept_per_channel_and_add_up(tracker_pool: asyncpg.Pool) -> None:
    cid = uuid.uuid4()
    published = Published()
    await service.apply_lifecycle(tracker_pool, [started(cid, 2, channels=("email", "sms"))],
                                  published)
    await service.apply_outcomes(tracker_pool, TOPIC, [
        (Rec(4, 0), outcome(cid, 1, "completed", "email")),
        (Rec(4, 1), outcome(cid, 1, "skipped", "sms")),
        (Rec(4, 2), outcome(cid, 2, "failed", "email")),
    ], published)
    p = await _progress(tracker_pool, cid)
    assert (p["total"], p["pending"], p["completed"], p["failed"], p["skipped"]) == (4, 1, 1, 1, 1)
    assert p["by_channel"] == {
        "email": {"total": 2, "pending": 0, "completed": 1, "failed": 1, "skipped": 0,
                  "opted_out": 0, "delivered": 0, "not_delivered": 0,
                  "reasons": {"failed": {"HTTP 422: recipient unreachable": 1}, "skipped": {},
                              "not_delivered": {}}},
        "sms": {"total": 2, "pending": 1, "completed": 0, "failed": 0, "skipped": 1,
                "opted_out": 0, "delivered": 0, "not_delivered": 0,
                "reasons": {"failed": {}, "skipped": {"missing_address": 1},
                            "not_delivered": {}}},
    }


async def test_an_aborted_campaign_ends_aborted_when_nothing_is_pending(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = uuid.uuid4()
    published = Published()
    await service.apply_lifecycle(tracker_pool, [started(cid, 2)], published)
    await service.apply_lifecycle(tracker_pool, [CampaignAborted(campaign_id=cid)], published)
    assert (await _progress(tracker_pool, cid))["state"] == "aborting"
    await service.apply_outcomes(tracker_pool, TOPIC, [
        (Rec(5, 0), outcome(cid, 1)), (Rec(5, 1), outcome(cid, 2, "skipped")),
    ], published)
    assert (await _progress(tracker_pool, cid))["state"] == "aborted"
    assert len(published.events) == 1
