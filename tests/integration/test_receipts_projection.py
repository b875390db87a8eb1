"""Delivery receipts in the tracker's projection on real PostgreSQL: counted once, the first
final receipt wins, and a receipt that overtakes its outcome is applied when the outcome
arrives."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from services.tracker import repo, service
from services.tracker.receipts_service import apply_receipts
from shared.events import CampaignCompleted, DeliveryReported, MessageFailed, MessageSent
from tests.factories import started

pytestmark = pytest.mark.integration
RUN = uuid.uuid4().hex
OUTCOMES = f"test-outcomes-{RUN}"  # private offsets per test run
RECEIPTS = f"test-receipts-{RUN}"


@dataclass
class Rec:
    partition: int
    offset: int


class Offsets:
    """Kafka-like offsets of one topic: every call is new records, unless replayed."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, events: list[Any]) -> list[tuple[Any, Any]]:
        out = [(Rec(0, self.next + i), e) for i, e in enumerate(events)]
        self.next += len(events)
        return out


outcomes, receipts = Offsets(), Offsets()


async def _ignore(events: list[CampaignCompleted]) -> None:
    return None


def _sent(cid: uuid.UUID, rid: int) -> MessageSent:
    return MessageSent(campaign_id=cid, recipient_id=rid, channel="sms",
                       provider_message_id=f"{cid}-{rid}", address=f"+452000{rid:04d}")


def _receipt(cid: uuid.UUID, rid: int, status: str = "delivered",
             reason: str | None = None) -> DeliveryReported:
    return DeliveryReported(provider_message_id=f"{cid}-{rid}", status=status,  # type: ignore[arg-type]
                            reason=reason)


async def _campaign(pool: asyncpg.Pool, total: int) -> uuid.UUID:
    cid = uuid.uuid4()
    await service.apply_lifecycle(pool, [started(cid, total, channels=("sms",))], _ignore)
    return cid


async def _counts(pool: asyncpg.Pool, cid: uuid.UUID) -> tuple[int, int, int]:
    async with pool.acquire() as conn:
        p = await repo.get_progress(conn, cid)
    assert p is not None
    return p.counts.completed, p.counts.delivered, p.counts.not_delivered


async def _reasons(pool: asyncpg.Pool, cid: uuid.UUID) -> dict[str, dict[str, int]]:
    async with pool.acquire() as conn:
        p = await repo.get_progress(conn, cid)
    assert p is not None
    return p.view()["reasons"]


async def _delivery(pool: asyncpg.Pool, cid: uuid.UUID) -> dict[int, tuple[Any, Any]]:
    rows = await pool.fetch(
        "SELECT recipient_id, delivery, delivery_reason FROM recipient_outcomes "
        "WHERE campaign_id = $1", cid)
    return {r["recipient_id"]: (r["delivery"], r["delivery_reason"]) for r in rows}


async def test_a_receipt_counts_once_when_redelivered_or_reported_again(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(tracker_pool, 3)
    failed = MessageFailed(campaign_id=cid, recipient_id=2, channel="sms", reason="HTTP 422")
    await service.apply_outcomes(tracker_pool, OUTCOMES,
                                 outcomes([_sent(cid, 0), _sent(cid, 1), failed]), _ignore)
    batch = receipts([_receipt(cid, 0), _receipt(cid, 1, "not_delivered", "landline"),
                      _receipt(cid, 0)])
    await apply_receipts(tracker_pool, RECEIPTS, batch)
    await apply_receipts(tracker_pool, RECEIPTS, batch)  # Kafka redelivers (commit lost)
    await apply_receipts(tracker_pool, RECEIPTS, receipts([_receipt(cid, 0)]))  # provider retry
    assert await _counts(tracker_pool, cid) == (2, 1, 1)
    assert await _delivery(tracker_pool, cid) == {
        0: ("delivered", None), 1: ("not_delivered", "landline"), 2: (None, None)}
    assert await _reasons(tracker_pool, cid) == {
        "failed": {"HTTP 422": 1}, "skipped": {}, "not_delivered": {"landline": 1}}


async def test_the_first_final_receipt_wins(tracker_pool: asyncpg.Pool) -> None:
    cid = await _campaign(tracker_pool, 2)
    await service.apply_outcomes(tracker_pool, OUTCOMES,
                                 outcomes([_sent(cid, 0), _sent(cid, 1)]), _ignore)
    await apply_receipts(tracker_pool, RECEIPTS, receipts([_receipt(cid, 0)]))
    await apply_receipts(tracker_pool, RECEIPTS, receipts([
        _receipt(cid, 0, "not_delivered", "carrier blocked"),
        # In one batch too: the earlier record wins.
        _receipt(cid, 1, "not_delivered", "unreachable handset"), _receipt(cid, 1)]))
    assert await _counts(tracker_pool, cid) == (2, 1, 1)
    assert await _delivery(tracker_pool, cid) == {
        0: ("delivered", None), 1: ("not_delivered", "unreachable handset")}


async def test_a_receipt_that_overtakes_its_outcome_is_kept_and_counted_when_it_arrives(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(tracker_pool, 2)
    early = await apply_receipts(tracker_pool, RECEIPTS, receipts([
        _receipt(cid, 0, "not_delivered", "landline"), _receipt(cid, 0)]))
    assert (early.applied, early.parked) == (0, 1)
    assert await _counts(tracker_pool, cid) == (0, 0, 0)
    await service.apply_outcomes(tracker_pool, OUTCOMES,
                                 outcomes([_sent(cid, 0), _sent(cid, 1)]), _ignore)
    assert await _counts(tracker_pool, cid) == (2, 0, 1)
    assert (await _delivery(tracker_pool, cid))[0] == ("not_delivered", "landline")
    assert (await _reasons(tracker_pool, cid))["not_delivered"] == {"landline": 1}
    assert await tracker_pool.fetchval(
        "SELECT count(*) FROM receipts_pending WHERE provider_message_id = $1", f"{cid}-0") == 0


async def test_receipts_racing_their_outcomes_in_concurrent_transactions_are_all_counted(
    tracker_pool: asyncpg.Pool,
) -> None:
    """Each receipt batch runs at the same moment as its outcome's batch: whichever commits
    first, the receipt is neither lost in `receipts_pending` nor counted twice."""
    n = 60
    cid = await _campaign(tracker_pool, n)
    for rid in range(n):
        status = "delivered" if rid % 3 else "not_delivered"
        await asyncio.gather(
            service.apply_outcomes(tracker_pool, OUTCOMES, outcomes([_sent(cid, rid)]), _ignore),
            apply_receipts(tracker_pool, RECEIPTS, receipts([_receipt(cid, rid, status)])),
        )
    assert await _counts(tracker_pool, cid) == (n, n - n // 3, n // 3)
    assert await tracker_pool.fetchval(
        "SELECT count(*) FROM receipts_pending WHERE provider_message_id LIKE $1",
        f"{cid}-%") == 0
