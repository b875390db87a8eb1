"""Handlers and wiring, in memory (FastStream's TestKafkaBroker): no network."""

import uuid
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.testing import TestKafkaBroker

from services.dispatcher import erasure as dispatcher_erasure
from services.dispatcher.entrypoints import kafka as dispatcher_handlers
from services.dispatcher.service import AbortRegistry, OptOutRegistry
from services.scheduler.campaigns.aborts import AbortAcks
from services.scheduler.entrypoints import kafka as scheduler_handlers
from services.tracker import erasure as tracker_erasure
from services.tracker.entrypoints import kafka as tracker_handlers
from shared import erasure, topics
from shared.events import (
    SEND_REQUESTED,
    AbortAcknowledged,
    ErasedRecipient,
    RecipientsErased,
)
from shared.kafka import (
    bulk_producer,
    decode_records,
    key_partitioner,
    make_broker,
    publish_raw,
    raw_body,
    records_of,
)
from tests.factories import send_requested


class _Record:
    def __init__(self, value: bytes) -> None:
        self.value = value


def test_decode_records_sets_poison_records_aside_and_keeps_the_rest() -> None:
    good_event = send_requested()
    good, bad = decode_records(
        [_Record(good_event.to_bytes()), _Record(b"{not json"), _Record(b'{"type": "x"}')],
        SEND_REQUESTED,
    )
    assert [e for _, e in good] == [good_event]
    assert len(bad) == 2 and "ValidationError" in bad[0].error


def _all_routers() -> list[Any]:
    pool: Any = None
    return [
        scheduler_handlers.kafka_router(pool, AbortAcks()),
        dispatcher_handlers.kafka_router(
            pool, None, AbortRegistry(), OptOutRegistry(), None, None,  # type: ignore[arg-type]
            instance="i", max_records=10,
        ),
        tracker_handlers.kafka_router(pool, None, 10),  # type: ignore[arg-type]
        tracker_erasure.kafka_router(pool),
        dispatcher_erasure.kafka_router(pool),
    ]


def test_every_topic_has_a_consumer() -> None:
    consumed = {
        topic
        for router in _all_routers()
        for sub in router.subscribers
        for topic in sub.topic_names
    }
    assert consumed == set(topics.ALL)


async def test_a_poison_lifecycle_record_is_dead_lettered_with_its_error() -> None:
    broker = KafkaBroker()
    broker.include_router(scheduler_handlers.kafka_router(None, AbortAcks()))  # type: ignore[arg-type]
    parked: list[tuple[bytes, dict[str, str]]] = []

    @broker.subscriber(topics.dlq(topics.CAMPAIGN_LIFECYCLE))
    async def dlq(msg: KafkaMessage) -> None:
        parked.append((msg.body, msg.headers))

    async with TestKafkaBroker(broker) as br:
        await br.publish(b"garbage", topics.CAMPAIGN_LIFECYCLE, key=uuid.uuid4().bytes)

    assert len(parked) == 1
    body, headers = parked[0]
    assert body == b"garbage"
    assert headers["x-source-topic"] == topics.CAMPAIGN_LIFECYCLE
    assert "ValidationError" in headers["x-error"]


async def test_an_abort_reaches_every_dispatcher_instance_and_each_acknowledges() -> None:
    """The abort subscriber is a broadcast one: it has no consumer group."""
    routers = _all_routers()
    broadcast = [
        (router, sub) for router in routers for sub in router.subscribers
        if topics.CAMPAIGN_LIFECYCLE in sub.topic_names and not sub.group_id
    ]
    # One in the scheduler (acknowledgements), one in the dispatcher (aborts).
    assert len(broadcast) == 2
    opt_outs = [sub for router in routers for sub in router.subscribers
                if topics.OPT_OUTS in sub.topic_names and not sub.group_id]
    assert len(opt_outs) == 1


def test_abort_acks_complete_when_every_expected_instance_answered() -> None:
    acks = AbortAcks()
    cid = uuid.uuid4()
    with acks.expecting(cid) as wait:
        # An answer may come before the group's members are listed: it is kept.
        acks.acknowledged(AbortAcknowledged(campaign_id=cid, instance="a", settled=3))
        assert not wait.done.is_set()
        wait.expect({"a", "b"})
        assert not wait.done.is_set()
        acks.acknowledged(AbortAcknowledged(campaign_id=uuid.uuid4(), instance="b", settled=1))
        assert not wait.done.is_set()
        acks.acknowledged(AbortAcknowledged(campaign_id=cid, instance="b", settled=5))
        assert wait.done.is_set() and wait.acks == {"a": 3, "b": 5}


async def test_a_dispatcher_consumer_knows_which_partitions_are_still_its_own() -> None:
    from aiokafka import TopicPartition

    in_flight = dispatcher_handlers.InFlight(bound_seconds=0.1)
    assert in_flight.owns([0, 5])  # before the first assignment: not known, not refused
    await in_flight.on_partitions_assigned([TopicPartition(topics.SEND_REQUESTED, p)
                                            for p in (0, 1, 2)])
    assert in_flight.owns([0, 2]) and not in_flight.owns([0, 3])
    async with in_flight.busy():  # a batch in flight: the revocation waits (bounded) for it
        await in_flight.on_partitions_revoked([TopicPartition(topics.SEND_REQUESTED, 2)])
        assert in_flight.owns([0, 1]) and not in_flight.owns([2])


class _Conn:
    """Stands for a pooled connection: the erasure consumer only passes it on."""


class _Pool:
    def __init__(self) -> None:
        self.conn = _Conn()

    def acquire(self) -> Any:
        pool = self

        class _Acquired:
            async def __aenter__(self) -> _Conn:
                return pool.conn

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Acquired()


async def test_the_shared_erasure_consumer_hands_decoded_events_to_the_services_sql() -> None:
    pool = _Pool()
    calls: list[tuple[Any, list[RecipientsErased]]] = []

    async def erase(conn: Any, events: Any) -> int:
        calls.append((conn, list(events)))
        return len(events)

    broker = KafkaBroker()
    broker.include_router(erasure.kafka_router(pool, erase, service="svc",  # type: ignore[arg-type]
                                               description="test"))
    parked: list[bytes] = []

    @broker.subscriber(topics.dlq(topics.ERASURES))
    async def dlq(msg: KafkaMessage) -> None:
        parked.append(msg.body)

    event = RecipientsErased(organisation_id=uuid.uuid4(), recipients=[
        ErasedRecipient(campaign_id=uuid.uuid4(), recipient_id=7)])
    async with TestKafkaBroker(broker) as br:
        await br.publish(event.to_bytes(), topics.ERASURES, key=b"k")
        await br.publish(b"not an erasure", topics.ERASURES, key=b"k")

    assert calls == [(pool.conn, [event])]
    assert parked == [b"not an erasure"]
    (sub,) = [s for s in broker.subscribers if topics.ERASURES in s.topic_names]
    assert sub.group_id == "sendout-svc-erasures"


def test_each_services_erasure_consumer_has_its_own_group_and_sql() -> None:
    pool: Any = None
    groups = {sub.group_id for module in (tracker_erasure, dispatcher_erasure)
              for sub in module.kafka_router(pool).subscribers}
    assert groups == {"sendout-tracker-erasures", "sendout-dispatcher-erasures"}


def test_a_key_goes_to_the_partition_kafkas_default_partitioner_picks() -> None:
    import random

    from aiokafka.partitioner import DefaultPartitioner

    rng = random.Random(17)
    keys = [rng.randbytes(rng.randrange(0, 40)) for _ in range(2_000)]
    for count in (1, 3, 12, 50):
        partitions = list(range(count))
        partition_of = key_partitioner(set(partitions))
        assert [partition_of(k) for k in keys] == [
            DefaultPartitioner()(k, partitions, partitions) for k in keys]
        assert {partition_of(None) for _ in range(200)} <= set(partitions)


async def test_publish_raw_goes_through_the_publisher_in_the_memory_broker() -> None:
    broker = make_broker("localhost:9092", client_id="memory")
    publisher = broker.publisher("bulk")
    got: list[tuple[bytes | None, bytes]] = []

    @broker.subscriber("bulk", decoder=raw_body)
    async def receive(msg: KafkaMessage) -> None:
        (record,) = records_of(msg)
        got.append((record.key or None, record.value))  # the fake makes no key b""

    async with TestKafkaBroker(broker):
        assert bulk_producer(publisher) is None
        await publish_raw(publisher, [(b"k1", b"one"), (None, b"two"), (b"k1", b"three")])

    assert got == [(b"k1", b"one"), (None, b"two"), (b"k1", b"three")]
