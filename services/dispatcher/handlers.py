"""Dispatcher Kafka subscribers: send requests in, outcomes out; lifecycle → templates."""

from __future__ import annotations

import asyncpg
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.dispatcher import repo
from services.dispatcher.domain import Outcome
from services.dispatcher.service import AbortRegistry, Dispatcher, OptOutRegistry
from shared import topics
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
    accept_batch,
    decode_records,
    publish_all,
    publish_encoded,
    records_of,
    redelivered_on_failure,
)
from shared.wire import decode_send_requests, outcome_records

SERVICE = "dispatcher"


def kafka_router(
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
) -> KafkaRouter:
    router = KafkaRouter()

    async def on_send_requested(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async with redelivered_on_failure():
            good = await accept_batch(msg, broker, decode_send_requests, service=SERVICE)

            async def publish(outcomes: list[tuple[Outcome, bytes]]) -> None:
                await publish_encoded(
                    outcomes_pub, outcome_records(outcomes, outcome_batch_size), service=SERVICE
                )

            # Outcomes are recorded and acknowledged by Kafka before this returns and the
            # offsets commit.
            await dispatcher.dispatch_encoded(
                [request for _, (_, requests) in good for request in requests], publish
            )

    # `consumers` members of the group in this process, each with its own partitions and its
    # own batch in flight: a batch spends most of its time waiting on PostgreSQL and Kafka,
    # and meanwhile another consumer's batch uses the CPU.
    for n in range(consumers):
        router.subscriber(
            topics.SEND_REQUESTED,
            group_id="sendout-dispatcher",
            max_records=max_records,
            description="Renders and sends each requested message; reports its outcome.",
            include_in_schema=n == 0,
            **BATCH_CONSUMER,
        )(on_send_requested)

    @router.subscriber(
        topics.CAMPAIGN_LIFECYCLE,
        group_id="sendout-dispatcher-lifecycle",
        max_records=500,
        description="Stores started campaigns' templates and aborted campaigns, for every "
        "dispatcher process, present or future.",
        **BATCH_CONSUMER,
    )
    async def on_lifecycle(body: list[bytes], msg: KafkaMessage, broker: KafkaBroker) -> None:
        async with redelivered_on_failure():
            good = await accept_batch(msg, broker, LIFECYCLE, service=SERVICE)
            started = [e for _, e in good if isinstance(e, CampaignStarted)]
            aborted = [e.campaign_id for _, e in good if isinstance(e, CampaignAborted)]
            if started or aborted:
                async with pool.acquire() as conn, conn.transaction():
                    for event in started:
                        await repo.save_template(conn, event)
                    await repo.save_aborts(conn, aborted)

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
                settled = await repo.settled_count(conn, campaign_id)
                acks.append(AbortAcknowledged(campaign_id=campaign_id, instance=instance,
                                              settled=settled))
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
        async with redelivered_on_failure():
            good = await accept_batch(msg, broker, OPTED_OUT, service=SERVICE)
            if good:
                async with pool.acquire() as conn:
                    await repo.save_opt_outs(conn, [e for _, e in good])

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
