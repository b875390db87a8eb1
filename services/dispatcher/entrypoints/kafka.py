"""The dispatcher's Kafka subscribers: send requests in, outcomes out; lifecycle → templates
and aborts, opt-outs → who is not messaged (wired by bootstrap.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import asyncpg
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.dispatcher import repo
from services.dispatcher.domain import CampaignTemplate, Outcome, template_from_context
from services.dispatcher.metrics import OutcomeCounter
from services.dispatcher.service import (
    AbortRegistry,
    BatchLeft,
    BatchSuperseded,
    Dispatcher,
    OptOutRegistry,
)
from shared import topics, tracing
from shared.events import (
    LIFECYCLE,
    OPTED_OUT,
    AbortAcknowledged,
    CampaignAborted,
    CampaignStarted,
)
from shared.kafka import (
    BATCH_CONSUMER,
    BROADCAST_CONSUMER,
    Redeliver,
    decode_records,
    process_bounded,
    publish_all,
    publish_encoded,
    records_of,
)
from shared.wire import decode_send_requests, outcome_records

SERVICE = "dispatcher"
log = logging.getLogger(__name__)


# aiokafka has no type hints: its listener base class is Any to mypy.
class InFlight(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer's batch in progress, and the partitions assigned to it. A partition is
    handed back only once the batch in progress is settled (recorded, published), so its next
    owner re-reports it instead of finding it mid-flight; bounded, since the next owner's
    attempt fences this one (`repo.register_batch`) either way."""

    def __init__(self, bound_seconds: float) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        self._bound = bound_seconds
        self._assigned: set[int] | None = None  # not known before the first assignment

    def owns(self, partitions: Iterable[int]) -> bool:
        """Are these partitions (still) assigned to this consumer?"""
        return self._assigned is None or set(partitions) <= self._assigned

    @contextlib.asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) - {tp.partition for tp in revoked}
        if self._idle.is_set():
            return
        try:
            await asyncio.wait_for(self._idle.wait(), self._bound)
        except TimeoutError:
            log.warning("partitions revoked with a batch in flight; their next owner fences it",
                        extra={"partitions": len(revoked)})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._assigned = (self._assigned or set()) | {tp.partition for tp in assigned}


def contexts_of(
    dispatcher: Dispatcher, good: Sequence[tuple[Any, tuple[Any, Any]]]
) -> dict[Any, CampaignTemplate]:
    """The campaign contexts the records carry, for campaigns the dispatcher does not know
    yet: a request never waits for another consumer group's `started` event."""
    contexts: dict[Any, CampaignTemplate] = {}
    for _, (context, requests) in good:
        if context is None or not requests:
            continue
        campaign_id = requests[0].campaign_id
        if campaign_id not in contexts and not dispatcher.knows(campaign_id):
            contexts[campaign_id] = template_from_context(campaign_id, context)
    return contexts


def spans_of(records: Sequence[ConsumerRecord[Any, Any]]) -> list[tuple[int, int, int]]:
    """(partition, first offset, last offset) of each partition a batch read."""
    spans: dict[int, tuple[int, int]] = {}
    for r in records:
        low, high = spans.get(r.partition, (r.offset, r.offset))
        spans[r.partition] = (min(low, r.offset), max(high, r.offset))
    return [(p, low, high) for p, (low, high) in spans.items()]


# complexity: the subscribers are closures over its dependencies, counted in it; each is small
def kafka_router(  # noqa: C901
    pool: asyncpg.Pool,
    dispatcher: Dispatcher,
    aborts: AbortRegistry,
    opt_outs: OptOutRegistry,
    outcomes_pub: DefaultPublisher,
    lifecycle_pub: DefaultPublisher,
    *,
    instance: str,
    max_records: int,
    outcome_batch_size: int = 500,
    consumers: int = 1,
    rebalance_seconds: float = 30.0,
    outcome_counter: OutcomeCounter | None = None,
) -> KafkaRouter:
    router = KafkaRouter()

    def send_requested_handler(in_flight: InFlight) -> Any:
        async def publish(outcomes: list[tuple[Outcome, bytes]]) -> None:
            if outcome_counter is not None:
                outcome_counter.count(outcomes)
            await publish_encoded(outcomes_pub, outcome_records(outcomes, outcome_batch_size),
                                  service=SERVICE)

        async def send(good: Sequence[tuple[ConsumerRecord[Any, Any], Any]]) -> None:
            # Outcomes are recorded and acknowledged by Kafka before this returns and the
            # offsets commit.
            if dispatcher.stopping:  # a batch fetched again after one was left: not begun
                raise Redeliver("stopping: the batch is left to the partition's next owner")
            spans = spans_of([record for record, _ in good])
            partitions = [p for p, _, _ in spans]
            if not in_flight.owns(partitions):
                # Revoked between the fetch and now: the partition's new owner sends these.
                log.warning("batch of a partition no longer assigned left to its new owner",
                         extra={"partitions": partitions})
                return
            try:
                await dispatcher.dispatch_encoded(
                    [request for _, (_, requests) in good for request in requests], publish,
                    spans=spans, contexts=contexts_of(dispatcher, good),
                )
            except BatchLeft as exc:
                # Stopping: whether or not the partitions are still this consumer's, no offset
                # may commit past the messages this attempt left unclaimed.
                raise Redeliver(str(exc)) from exc
            except BatchSuperseded as exc:
                if in_flight.owns(partitions):
                    # Superseded by an attempt of a consumer that no longer owns these
                    # records: this one takes them back (and waits for what it claimed).
                    raise Redeliver(str(exc)) from exc
                log.warning("batch taken over by the partition's new owner",
                         extra={"partitions": partitions})

        async def on_send_requested(
            body: list[bytes], msg: KafkaMessage, broker: KafkaBroker
        ) -> None:
            async with in_flight.busy():
                await process_bounded(msg, broker, decode_send_requests, send, service=SERVICE)

        return on_send_requested

    # `consumers` members of the group in this process, each with its own partitions and its
    # own batch in flight: a batch spends most of its time waiting on PostgreSQL and Kafka,
    # and meanwhile another consumer's batch uses the CPU.
    for n in range(consumers):
        in_flight = InFlight(bound_seconds=rebalance_seconds)
        router.subscriber(
            topics.SEND_REQUESTED,
            group_id="sendout-dispatcher",
            max_records=max_records,
            description="Renders and sends each requested message; reports its outcome.",
            include_in_schema=n == 0,
            listener=in_flight,
            # Time for a member to settle its batch in flight before a rebalance goes on.
            rebalance_timeout_ms=int(rebalance_seconds * 1000) + 10_000,
            **BATCH_CONSUMER,
        )(send_requested_handler(in_flight))

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-dispatcher-lifecycle",
        max_records=500,
        description="Stores started campaigns' templates and aborted campaigns, for every "
        "dispatcher process, present or future.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def apply(good: Sequence[tuple[ConsumerRecord[Any, Any], Any]]) -> None:
            started = [e for _, e in good if isinstance(e, CampaignStarted)]
            aborted = [e.campaign_id for _, e in good if isinstance(e, CampaignAborted)]
            if started or aborted:
                async with pool.acquire() as conn, conn.transaction():
                    for event in started:
                        await repo.save_template(conn, event)
                        tracing.log_campaign(log, "campaign templates stored", event.campaign_id,
                                             event_id=str(event.event_id))
                    await repo.save_aborts(conn, aborted)
                    for campaign_id in aborted:
                        await repo.close_gate(conn, campaign_id)

        await process_bounded(msg, broker, LIFECYCLE, apply, service=SERVICE)

    # No group: every dispatcher process must hear of an abort itself, at once, and say so.
    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        description="Aborts: stop starting provider calls for the campaign, then acknowledge.",
        **BROADCAST_CONSUMER,
    )
    async def on_abort(body: list[bytes], msg: KafkaMessage) -> None:
        good, _ = decode_records(records_of(msg), LIFECYCLE)
        aborted = {e.campaign_id for _, e in good if isinstance(e, CampaignAborted)}
        if not aborted:
            return
        aborts.add(aborted)
        acks = []
        async with pool.acquire() as conn:
            for campaign_id in aborted:
                # The gate first: from its commit on, no dispatcher (this one, another, or one
                # that was hung and wakes up) claims a message of the campaign, and every claim
                # before it is counted as going out.
                await repo.close_gate(conn, campaign_id)
                settled = await repo.sent_or_in_flight(conn, campaign_id)
                acks.append(AbortAcknowledged(campaign_id=campaign_id, instance=instance,
                                              settled=settled))
                tracing.log_campaign(log, "abort acknowledged", campaign_id, settled=settled)
        await publish_all(lifecycle_pub, [(a.campaign_id.bytes, a) for a in acks],
                          service=SERVICE)

    @router.subscriber(
        topics.OPT_OUTS,
        group_id="sendout-dispatcher-opt-outs",
        max_records=1000,
        description="Stores opted-out addresses for every dispatcher process, present or future.",
        **BATCH_CONSUMER,
    )
    async def on_opt_outs(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async def save(good: Sequence[tuple[ConsumerRecord[Any, Any], Any]]) -> None:
            async with pool.acquire() as conn:
                await repo.save_opt_outs(conn, [e for _, e in good])

        await process_bounded(msg, broker, OPTED_OUT, save, service=SERVICE)

    # No group: every process stops messaging an opted-out address at once.
    @router.subscriber(
        topics.OPT_OUTS,
        description="Opt-outs: no provider call for the address starts from now on.",
        **BROADCAST_CONSUMER,
    )
    async def on_opt_out_now(body: list[bytes], msg: KafkaMessage) -> None:
        good, _ = decode_records(records_of(msg), OPTED_OUT)
        opt_outs.add({(e.organisation_id, e.address) for _, e in good})

    return router
