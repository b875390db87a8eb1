"""Gauges read from elsewhere, on the real stack: consumer lag from a consumer's own positions
(Kafka), and the per-campaign gauges from the tracker's projection (PostgreSQL)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from services.tracker import service
from services.tracker.metrics import CampaignGauges
from shared.observability import LagMonitor, measure_lag
from tests.conftest import Stack
from tests.factories import outcome, started

pytestmark = pytest.mark.integration


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def _topic(stack: Stack, partitions: int) -> str:
    name = f"test-lag-{uuid.uuid4()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def test_lag_is_end_offset_minus_committed_per_assigned_partition(stack: Stack) -> None:
    topic = await _topic(stack, 2)
    group = f"test-lag-group-{uuid.uuid4()}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka)
    await producer.start()
    try:
        for _ in range(10):
            await producer.send_and_wait(topic, b"x", partition=0)
        for _ in range(5):
            await producer.send_and_wait(topic, b"x", partition=1)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    try:
        consumer.assign([tp0, tp1])
        await consumer.commit({tp0: 4})
        # Partition 1 was never committed: counted from the consumer's position (earliest).
        assert await measure_lag([(group, consumer)]) == {(group, topic, 0): 6,
                                                         (group, topic, 1): 5}

        monitor = LagMonitor(SimpleNamespace(subscribers=[  # type: ignore[arg-type]
            SimpleNamespace(group_id=group, consumer=consumer),
            SimpleNamespace(group_id=None, consumer=consumer),  # broadcast: no lag
        ]))
        await monitor.update()
        assert gauge("sendout_consumer_lag_records", group=group, topic=topic,
                     partition="0") == 6
        await consumer.commit({tp0: 10, tp1: 5})
        await monitor.update()
        assert gauge("sendout_consumer_lag_records", group=group, topic=topic,
                     partition="0") == 0
        assert gauge("sendout_consumer_lag_records", group=group, topic=topic,
                     partition="1") == 0

        # A partition this process no longer has loses its series.
        consumer.assign([tp0])
        await monitor.update()
        assert gauge("sendout_consumer_lag_records", group=group, topic=topic,
                     partition="1") is None
        await monitor.stop()
        assert gauge("sendout_consumer_lag_records", group=group, topic=topic,
                     partition="0") is None
    finally:
        await consumer.stop()


class _Published:
    async def __call__(self, events: list[Any]) -> None:
        pass


async def test_campaign_gauges_exist_while_a_campaign_is_in_flight(
    tracker_pool: asyncpg.Pool,
) -> None:
    cid = uuid.uuid4()
    topic = f"test-outcomes-{uuid.uuid4()}"
    gauges = CampaignGauges(tracker_pool)
    await service.apply_lifecycle(tracker_pool, [started(cid, 5)], _Published())
    await service.apply_outcomes(
        tracker_pool, topic,
        [(SimpleNamespace(partition=0, offset=i), outcome(cid, i, s))
         for i, s in enumerate(["completed", "failed", "skipped"])], _Published())

    now = await gauges.update()
    assert now[(str(cid), "email")] == (2, 3)
    assert gauge("sendout_campaign_pending_messages", campaign_id=str(cid), channel="email") == 2
    assert gauge("sendout_campaign_settled_messages", campaign_id=str(cid), channel="email") == 3
    assert gauges.shown(cid)

    record = SimpleNamespace(partition=0, offset=10)
    await service.apply_outcomes(
        tracker_pool, topic,
        [(record, outcome(cid, 3)), (SimpleNamespace(partition=0, offset=11), outcome(cid, 4))],
        _Published())
    await gauges.update()
    # Completed: its series are gone (only campaigns in flight have one).
    assert not gauges.shown(cid)
    assert gauge("sendout_campaign_pending_messages", campaign_id=str(cid),
                 channel="email") is None
    assert gauge("sendout_campaign_settled_messages", campaign_id=str(cid),
                 channel="email") is None
