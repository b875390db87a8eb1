"""Bulk publishing (shared.kafka.publish_raw) on real Kafka: through the broker's own
producer, each keyed record on the partition Kafka's default partitioner gives its key."""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from shared.kafka import bulk_producer, ensure_topics, make_broker, publish_raw
from tests.conftest import Stack

pytestmark = pytest.mark.integration


async def test_publish_raw_sends_keyed_records_to_their_default_partition(stack: Stack) -> None:
    topic = f"it-bulk-{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.kafka, [topic], 4)
    broker = make_broker(stack.kafka, client_id="it-bulk")
    publisher = broker.publisher(topic)
    keyed = [(uuid.uuid4().bytes, f"v{i}".encode()) for i in range(500)]
    keyless = [(None, f"n{i}".encode()) for i in range(20)]
    await broker.start()
    try:
        assert bulk_producer(publisher) is not None
        await publish_raw(publisher, [*keyed, *keyless])
    finally:
        await broker.stop()
    assert bulk_producer(publisher) is None

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got: dict[bytes, tuple[bytes | None, int]] = {}
    try:
        deadline = time.monotonic() + 15
        while len(got) < len(keyed) + len(keyless) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.update({r.value: (r.key, r.partition) for r in records})
    finally:
        await consumer.stop()

    partitions = [0, 1, 2, 3]
    assert {value: got[value] for _, value in keyed} == {
        value: (key, DefaultPartitioner()(key, partitions, partitions)) for key, value in keyed}
    assert {got[value][0] for _, value in keyless} == {None}
