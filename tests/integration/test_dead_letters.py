"""Bounded redelivery and the DLQ CLI against the real Kafka: a FastStream group consumer as
the services declare them (BATCH_CONSUMER), whose handler fails on chosen records."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from devtools.dlq import partitions_of
from shared import topics
from shared.kafka import BATCH_CONSUMER, Backoff, ensure_topics, make_broker, process_bounded
from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.integration

FAST = Backoff(first_transient=0.05, first_error=0.05, cap=0.2)
Item = tuple[ConsumerRecord[Any, Any], dict[str, Any]]


async def _topic(stack: Stack, partitions: int = 2) -> str:
    name = f"test.dlq-{uuid.uuid4().hex[:8]}.v1"
    await ensure_topics(stack.kafka, [name], partitions)
    return name


async def _produce(stack: Stack, topic: str, items: Sequence[tuple[bytes, bytes]],
                   headers: Sequence[tuple[str, bytes]] = ()) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka)
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key, headers=list(headers))
    finally:
        await producer.stop()


async def _partitions(stack: Stack, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
    await admin.start()
    try:
        return await partitions_of(admin, topic)
    finally:
        await admin.close()


async def _all_records(stack: Stack, topic: str) -> list[ConsumerRecord[Any, Any]]:
    tps = await _partitions(stack, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[ConsumerRecord[Any, Any]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def _committed_everything(stack: Stack, group: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka)
    await admin.start()
    await consumer.start()
    try:
        tps = await partitions_of(admin, topic)
        end = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return all(committed[tp].offset == end[tp] for tp in tps)
    finally:
        await consumer.stop()
        await admin.close()


async def _eventually(check: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def _consuming(
    stack: Stack, topic: str, group: str, handler: Callable[[Sequence[Item]], Awaitable[None]],
    max_attempts: int,
) -> AsyncIterator[None]:
    broker = make_broker(stack.kafka, client_id=f"test-{group}")

    @broker.subscriber(topic, group_id=group, max_records=100, **BATCH_CONSUMER)
    async def on_records(body: list[bytes], msg: KafkaMessage, br: KafkaBroker) -> None:
        await process_bounded(msg, br, json.loads, handler, service="test",
                              max_attempts=max_attempts, backoff=FAST)

    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


def _items(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"key-{i}".encode(), json.dumps({"n": i}).encode()) for i in range(n)]


async def test_the_one_record_that_keeps_failing_goes_to_the_dlq_and_the_others_are_processed(
    stack: Stack,
) -> None:
    topic, group = await _topic(stack), f"test-{uuid.uuid4().hex[:8]}"
    done: set[int] = set()
    failures_of_seven = 0

    async def handler(good: Sequence[Item]) -> None:
        nonlocal failures_of_seven
        ns = [v["n"] for _, v in good]
        if 7 in ns:
            failures_of_seven += 1
            raise KeyError("no template for record 7")
        done.update(ns)

    await _produce(stack, topic, _items(40))
    gen = _consuming(stack, topic, group, handler, max_attempts=3)
    await gen.__anext__()
    try:
        async def settled() -> bool:
            return (done == set(range(40)) - {7}
                    and await _committed_everything(stack, group, topic))
        await _eventually(settled)
    finally:
        await gen.aclose()

    parked = await _all_records(stack, topics.dlq(topic))
    assert [(r.key, r.value) for r in parked] == [(b"key-7", b'{"n": 7}')]
    headers = {k: v.decode() for k, v in parked[0].headers}
    assert headers["x-error"] == "KeyError: 'no template for record 7'"
    assert headers["x-source-topic"] == topic and headers["x-service"] == "test"
    sources = await _all_records(stack, topic)
    source = next(r for r in sources if r.key == b"key-7")
    assert (headers["x-source-partition"], headers["x-source-offset"]) == (
        str(source.partition), str(source.offset))
    # Three failed deliveries of its batch, then bisection tried it alone (at least once).
    assert failures_of_seven >= 4


async def test_a_database_outage_is_waited_out_and_dead_letters_nothing(stack: Stack) -> None:
    topic, group = await _topic(stack), f"test-{uuid.uuid4().hex[:8]}"
    done: set[int] = set()
    outages = 6  # more than max_attempts

    async def handler(good: Sequence[Item]) -> None:
        nonlocal outages
        if outages:
            outages -= 1
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        done.update(v["n"] for _, v in good)

    await _produce(stack, topic, _items(20))
    gen = _consuming(stack, topic, group, handler, max_attempts=2)
    await gen.__anext__()
    try:
        async def settled() -> bool:
            return done == set(range(20)) and await _committed_everything(stack, group, topic)
        await _eventually(settled)
    finally:
        await gen.aclose()
    assert outages == 0
    assert await _all_records(stack, topics.dlq(topic)) == []


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.dlq", "--bootstrap", stack.kafka, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_the_cli_lists_dead_letters_and_replays_each_once(stack: Stack) -> None:
    topic = await _topic(stack, partitions=1)
    dlq = topics.dlq(topic)
    for i in range(2):
        await _produce(stack, dlq, [(f"key-{i}".encode(), f'{{"n": {i}}}'.encode())], headers=[
            ("x-error", f"ValueError: bad {i}".encode()), ("x-error-type", b"ValueError"),
            ("x-attempts", b"5"), ("x-service", b"tracker"), ("x-source-topic", topic.encode()),
            ("x-source-partition", b"0"), ("x-source-offset", str(40 + i).encode())])

    listed = _cli(stack, "list", "--topic", topic)
    assert listed.returncode == 0, listed.stderr
    assert f"== {dlq}: 2 record(s), 2 not replayed" in listed.stdout
    assert f"{dlq} 0:1\n  from   {topic} 0:41\n  error  ValueError: bad 1 [tracker, 5 attempts]" \
        in listed.stdout
    assert "  key    key-0\n  bytes  {\"n\": 0}" in listed.stdout

    dry = _cli(stack, "replay", "--topic", dlq, "--offset", "0:1", "--dry-run")
    assert dry.returncode == 0 and "would replay" in dry.stdout
    assert await _all_records(stack, topic) == []

    one = _cli(stack, "replay", "--topic", dlq, "--offset", "0:1")
    assert one.returncode == 0, one.stderr
    assert f"replayed {dlq} 0:1 -> {topic}" in one.stdout
    replayed = await _all_records(stack, topic)
    assert [(r.key, r.value) for r in replayed] == [(b"key-1", b'{"n": 1}')]
    assert dict(replayed[0].headers)["x-replayed-from"] == f"{dlq}:0:1".encode()

    twice = _cli(stack, "replay", "--topic", dlq, "--offset", "1")
    assert twice.returncode == 1 and "already replayed" in twice.stderr

    rest = _cli(stack, "replay", "--topic", topic, "--all")
    assert rest.returncode == 0, rest.stderr
    assert "1 record(s) replayed" in rest.stdout and f"{dlq} 0:0 ->" in rest.stdout
    assert sorted(r.key for r in await _all_records(stack, topic)) == [b"key-0", b"key-1"]

    nothing = _cli(stack, "replay", "--topic", topic, "--all")
    assert "0 record(s) replayed" in nothing.stdout
    assert len(await _all_records(stack, topic)) == 2
    assert "2 record(s), 0 not replayed" in _cli(stack, "list", "--topic", topic).stdout

    again = _cli(stack, "replay", "--topic", topic, "--offset", "0:0", "--again")
    assert again.returncode == 0 and len(await _all_records(stack, topic)) == 3

    missing = _cli(stack, "replay", "--topic", topic, "--offset", "0:9")
    assert missing.returncode == 1 and "no record at" in missing.stderr

    unknown = f"test.none-{uuid.uuid4().hex[:8]}"
    refused = _cli(stack, "list", "--topic", unknown)
    assert refused.returncode == 1 and f"no topic {unknown}.dlq" in refused.stderr
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
    await admin.start()
    try:
        assert f"{unknown}.dlq" not in await admin.list_topics()  # not auto-created by asking
    finally:
        await admin.close()
