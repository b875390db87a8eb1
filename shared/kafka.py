"""Kafka plumbing shared by the services: broker construction, batch decoding, publishing a
batch without awaiting each record, bounded redelivery of a failing batch, and dead-lettering
records that can never be processed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, TypedDict, TypeVar
from weakref import WeakSet

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
)
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from faststream.kafka.publisher.usecase import DefaultPublisher
from faststream.message import StreamMessage
from pydantic import TypeAdapter, ValidationError

from shared import topics, tracing
from shared.metrics import (
    BATCH_SECONDS,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    EVENTS_PUBLISHED,
    REDELIVERIES,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


# The producer's settings, the broker's and the bulk producer's alike. acks="all": an
# acknowledged publish survives a broker failover. Not idempotent: after a broker restart
# aiokafka's idempotent producer can meet OutOfOrderSequenceNumber, which ends its sender for
# good (every later publish of the process fails) — seen in the fault suite's Kafka restart.
# Without it a producer retry may write a record twice; every consumer here counts a key once,
# and aiokafka keeps one request in flight per broker connection, so a partition's order holds.
class ProducerOptions(TypedDict):
    acks: Literal["all"]
    enable_idempotence: bool
    linger_ms: int
    max_batch_size: int
    compression_type: None


PRODUCER_OPTIONS: ProducerOptions = {
    "acks": "all",
    "enable_idempotence": False,
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": None,
}


RUNNING_BROKERS: WeakSet[Broker] = WeakSet()
"""Brokers whose bulk producer runs: where `publish_raw` looks for a publisher's."""


class Broker(KafkaBroker):
    """A KafkaBroker that also runs a plain aiokafka producer, with the same settings, for
    `publish_raw`: FastStream 0.7 has no public accessor for the producer behind its
    publishers. Started before the subscribers (they publish from their first batch) and
    stopped after them (they publish until their last).

    The in-memory test broker (TestKafkaBroker) replaces `start` and `stop`: no producer runs,
    and `publish_raw` goes through the publishers.
    """

    def __init__(self, bootstrap_servers: str, client_id: str) -> None:
        super().__init__(
            bootstrap_servers,
            client_id=client_id,
            **PRODUCER_OPTIONS,
            graceful_timeout=30.0,
            # Into the service's JSON logs; per-message lines only at DEBUG (one per batch is
            # still too many at a million recipients).
            logger=logging.getLogger("faststream"),
            log_level=logging.DEBUG,
        )
        self.bulk_servers = bootstrap_servers
        self.bulk_client_id = client_id
        self.bulk_producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self.bulk_producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bulk_servers,
                                        client_id=self.bulk_client_id, **PRODUCER_OPTIONS)
            await producer.start()
            self.bulk_producer = producer
            RUNNING_BROKERS.add(self)
        try:
            await super().start()
        except BaseException:
            await self.stop_bulk_producer()
            raise

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        finally:
            await self.stop_bulk_producer()

    async def stop_bulk_producer(self) -> None:
        """Send what it holds, then stop it."""
        producer, self.bulk_producer = self.bulk_producer, None
        RUNNING_BROKERS.discard(self)
        if producer is not None:
            await producer.stop()


def make_broker(bootstrap_servers: str, client_id: str) -> Broker:
    return Broker(bootstrap_servers, client_id)


def records_of(message: KafkaMessage) -> Sequence[ConsumerRecord[Any, Any]]:
    """The consumed records behind a (batch) message, with topic, partition and offset."""
    raw = message.raw_message
    return raw if isinstance(raw, (tuple, list)) else (raw,)


async def raw_body(message: StreamMessage[Any]) -> Any:
    """Decoder that leaves bodies as bytes: handlers decode each record with its own schema."""
    return message.body


class ConsumerOptions(TypedDict):
    """Subscriber options shared by several subscribers; typed, so that `subscriber(**options)`
    matches FastStream's batch overload (a `dict[str, Any]` leaves the subscriber untyped)."""

    ack_policy: AckPolicy
    auto_offset_reset: Literal["latest", "earliest"]
    batch: Literal[True]
    decoder: Callable[[StreamMessage[object]], Awaitable[object]]


BATCH_CONSUMER: ConsumerOptions = {
    # Offsets are committed only after the handler returned (its effects are durable); on an
    # exception the batch is rewound and redelivered.
    "ack_policy": AckPolicy.NACK_ON_ERROR,
    "auto_offset_reset": "earliest",
    "batch": True,
    "decoder": raw_body,
}


# No group: every process gets every record, from the moment it starts (signals every
# instance must act on itself: aborts, opt-outs, acknowledgements). Nothing to commit: a
# restarted process reloads what it must know from its own tables.
BROADCAST_CONSUMER: ConsumerOptions = {
    "ack_policy": AckPolicy.ACK_FIRST,
    "auto_offset_reset": "latest",
    "batch": True,
    "decoder": raw_body,
}


@dataclass(frozen=True)
class BadRecord:
    record: ConsumerRecord[Any, Any]
    error: str
    """`<exception type>: <message>`, at most 2,000 characters."""
    attempts: int = 1
    """How many times processing it was tried (1 for a record that could not be decoded)."""


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


Decoder = TypeAdapter[T] | Callable[[bytes], T]


def decode_records(
    records: Iterable[ConsumerRecord[Any, Any]], adapter: Decoder[T]
) -> tuple[list[tuple[ConsumerRecord[Any, Any], T]], list[BadRecord]]:
    """Decode each record on its own, so one poison record cannot block its batch.

    `adapter`: a pydantic TypeAdapter, or a function of the record's bytes (shared.wire) that
    raises pydantic's ValidationError (or ValueError) for what it refuses."""
    decode = adapter.validate_json if isinstance(adapter, TypeAdapter) else adapter
    good: list[tuple[ConsumerRecord[Any, Any], T]] = []
    bad: list[BadRecord] = []
    for record in records:
        try:
            good.append((record, decode(record.value)))
        except (ValidationError, ValueError, TypeError) as exc:
            bad.append(BadRecord(record, error_text(exc)))
    return good, bad


_JSON_HEADERS = [("content-type", b"application/json")]


def bulk_producer(publisher: DefaultPublisher) -> AIOKafkaProducer | None:
    """The running bulk producer of the broker that declared `publisher`; None in the
    in-memory test broker, or for a broker that is not a `Broker`."""
    for broker in RUNNING_BROKERS:
        if broker.bulk_producer is not None and publisher in broker.publishers:
            return broker.bulk_producer
    return None


class Serialisable(Protocol):
    """An event of shared.events: it knows its own wire form."""

    def to_bytes(self) -> bytes: ...


async def publish_all(
    publisher: DefaultPublisher,
    items: Sequence[tuple[bytes | None, Serialisable]],
    *,
    service: str,
) -> None:
    """Publish every (key, event) and return once the broker acknowledged all of them."""
    await publish_encoded(publisher, [(key, event.to_bytes()) for key, event in items],
                          service=service)


async def publish_encoded(
    publisher: DefaultPublisher, items: Sequence[tuple[bytes | None, bytes]], *, service: str
) -> None:
    """`publish_raw`, counted."""
    if not items:
        return
    await publish_raw(publisher, items)
    EVENTS_PUBLISHED.labels(service, publisher.topic).inc(len(items))


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (what the default partitioner hashes keys with), at a fifth of the cost
    of aiokafka's pure-Python one: one key per record of a million made that a tenth of the
    fan-out's CPU. tests/unit/test_wire.py compares the two."""
    length = len(data)
    m = 0x5BD1E995
    h = 0x9747B28C ^ length
    tail = length & ~3
    for i in range(0, tail, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def key_partitioner(partitions: Iterable[int]) -> Callable[[bytes | None], int]:
    """The partition of a record's key among the topic's `partitions`, as aiokafka's (and
    Kafka's) default partitioner picks it: murmur2 of the key over the partitions in id order,
    each key hashed once per call; a record without a key on a partition chosen at random."""
    ordered = sorted(partitions)
    count = len(ordered)
    seen: dict[bytes, int] = {}

    def partition_of(key: bytes | None) -> int:
        if key is None:
            # The default partitioner prefers a partition with a leader; which have one is not
            # public, and a partition without is waited for like any other.
            return random.choice(ordered)
        partition = seen.get(key)
        if partition is None:
            partition = seen[key] = ordered[(murmur2(key) & 0x7FFFFFFF) % count]
        return partition

    return partition_of


async def publish_raw(
    publisher: DefaultPublisher, items: Sequence[tuple[bytes | None, bytes]]
) -> None:
    """Publish pre-serialized (key, value) records on the publisher's topic; return once the
    broker acknowledged all of them.

    FastStream's per-record publish (command object, middlewares, codec, one future per record)
    cost more CPU than building the records, so records go to the broker's bulk producer
    (`Broker`) as one record batch per partition and batch-full, through aiokafka's public
    `create_batch` / `send_batch`; keys pick the partition as the default partitioner would
    (Kafka's murmur2). The publisher stays declared, so AsyncAPI still documents it.
    """
    if not items:
        return
    topic = publisher.topic
    headers_of = _trace_headers(topic)
    producer = bulk_producer(publisher)
    if producer is None:
        await _publish_one_by_one(publisher, items, headers_of)
        return
    partition_of = key_partitioner(await producer.partitions_for(topic))
    by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for key, value in items:
        by_partition.setdefault(partition_of(key), []).append((key, value))
    futures = []
    for partition, records in by_partition.items():
        futures.extend(await _send_partition(producer, topic, partition, records, headers_of))
    await asyncio.gather(*futures)


async def _publish_one_by_one(
    publisher: DefaultPublisher,
    items: Sequence[tuple[bytes | None, bytes]],
    headers_of: Callable[[bytes | None], list[tuple[str, bytes]]],
) -> None:
    """Through the publisher itself (the in-memory test broker, which has no bulk producer)."""
    futures = [await publisher.publish(
                   value, key=key, no_confirm=True,
                   headers={k: v.decode() for k, v in headers_of(key)})
               for key, value in items]
    await asyncio.gather(*(f for f in futures if f is not None))


async def _send_partition(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: Sequence[tuple[bytes | None, bytes]],
    headers_of: Callable[[bytes | None], list[tuple[str, bytes]]],
) -> list[asyncio.Future[Any]]:
    """One partition's records as record batches, each sent when full; their futures."""
    futures = []
    batch = producer.create_batch()
    for key, value in records:
        headers = headers_of(key)
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"record of {len(value)} bytes exceeds the batch size")
    futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


def _trace_headers(topic: str) -> Callable[[bytes | None], list[tuple[str, bytes]]]:
    """Each record's headers: JSON, and its trace (`traceparent`, shared/tracing.py) — on a
    topic keyed by campaign id the campaign's, else the current one's; one span per key and
    publish."""
    keyed = topic in topics.CAMPAIGN_KEYED
    if not keyed:
        header = tracing.record_header(None, False)
        fixed = _JSON_HEADERS if header is None else [*_JSON_HEADERS, header]
        return lambda key: fixed
    seen: dict[bytes | None, list[tuple[str, bytes]]] = {}

    def headers_of(key: bytes | None) -> list[tuple[str, bytes]]:
        headers = seen.get(key)
        if headers is None:
            header = tracing.record_header(key, True)
            headers = seen[key] = _JSON_HEADERS if header is None else [*_JSON_HEADERS, header]
        return headers

    return headers_of


async def dead_letter(broker: KafkaBroker, bad: Sequence[BadRecord], *, service: str) -> None:
    """Park records that can never be processed on `<topic>.dlq`, with the error, and move on.

    The original bytes and key are kept as they were, so a fixed consumer can replay them.
    """
    futures = []
    for item in bad:
        rec = item.record
        log.error(
            "record dead-lettered",
            extra={"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                   "error": item.error, "attempts": item.attempts},
        )
        futures.append(
            await broker.publish(
                rec.value,
                topics.dlq(rec.topic),
                key=rec.key,
                headers={
                    "x-error": item.error,
                    "x-error-type": item.error.split(":", 1)[0],
                    "x-attempts": str(item.attempts),
                    "x-service": service,
                    "x-source-topic": rec.topic,
                    "x-source-partition": str(rec.partition),
                    "x-source-offset": str(rec.offset),
                    # The record's trace goes with it (shared/tracing.py).
                    **{k: v.decode(errors="replace") for k, v in rec.headers or ()
                       if k == tracing.HEADER},
                },
                no_confirm=True,
            )
        )
        DEAD_LETTERS.labels(service, rec.topic).inc()
    await asyncio.gather(*(f for f in futures if f is not None))


async def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int) -> None:
    """Create the topics (and their DLQs) that do not exist yet.

    Explicit, because a consumer subscribing first would otherwise wait for a producer to
    auto-create the topic, with the broker's default partition count.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="sendout-admin")
    await admin.start()
    try:
        wanted = {n for name in names for n in (name, topics.dlq(name))}
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1,
                     topic_configs={"cleanup.policy": "compact"} if name in topics.COMPACTED
                     else None)
            for name in sorted(wanted - existing)
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another service created it meanwhile
    finally:
        await admin.close()


def instance_client_id(service: str, instance: str) -> str:
    return f"sendout-{service}-{instance}"


async def group_instances(admin: AIOKafkaAdminClient, group_id: str) -> set[str]:
    """Instance ids of a consumer group's live members (client ids `sendout-<svc>-<instance>`).

    Used to know whose acknowledgement to wait for: every member may be consuming.
    """
    responses = await admin.describe_consumer_groups([group_id])
    instances: set[str] = set()
    prefix = group_id + "-"
    for response in responses:
        for group in response.to_object()["groups"]:
            for member in group["members"]:
                client_id: str = member["client_id"]
                if client_id.startswith(prefix):
                    instances.add(client_id.removeprefix(prefix))
    return instances


# Bounded redelivery ---------------------------------------------------------------------------

class Redeliver(Exception):
    """Raised by a batch's processing to have the batch redelivered, deliberately, for a reason
    that is not the records' (a stopping consumer leaving the rest of its batch, an attempt
    taking its batch back): never dead-lettered, not counted as a failure, no pause, and no
    warning of unavailable infrastructure."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    Redeliver,
    asyncpg.exceptions.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.exceptions.CannotConnectNowError,  # starting up or shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    OSError,  # refused, reset, unreachable
    TimeoutError,  # asyncio's as well
    KafkaTimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """An error of the infrastructure (PostgreSQL or Kafka unreachable, restarting, out of
    connections) rather than of the records: their batch is retried for as long as it lasts,
    and never dead-lettered. Anything else counts against the batch."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_transient(e) for e in exc.exceptions)
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # A connection left mid-operation by a lost server ("another operation is in
        # progress"): the connection's failure, not the records'.
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        # "pool is closed", "pool is closing", "connection is closed"; other interface errors
        # (wrong arguments, unsupported types) are the records' or the code's.
        return "closed" in str(exc) or "closing" in str(exc)
    if isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError)):
        return False  # the record's own fault
    # Any other Kafka error met while processing is the broker's or the producer's (a publish
    # of the batch's results), never the records': retried, not dead-lettered.
    return isinstance(exc, KafkaError)


@dataclass(frozen=True)
class Backoff:
    """The pause before a failed batch is redelivered: doubling from `first_*` with each
    failure in a row, at most `cap` seconds."""

    first_transient: float = 1.0
    first_error: float = 0.25
    cap: float = 30.0

    def pause(self, failures: int, *, transient: bool) -> float:
        first = self.first_transient if transient else self.first_error
        return min(self.cap, first * 2.0 ** min(max(failures - 1, 0), 32))


# (service, topic, partition, offset of the batch's first record in that partition)
_Start = tuple[str, str, int, int]


@dataclass(frozen=True)
class _Count:
    errors: int = 0
    transient: int = 0  # in a row


class _Failures:
    """How often the batch starting at a partition's offset failed, in this process. A
    redelivered batch may hold more or fewer partitions than the first delivery: it carries
    the highest count of its partitions' starts. Bounded, oldest forgotten first."""

    def __init__(self, limit: int = 10_000) -> None:
        self.counts: OrderedDict[_Start, _Count] = OrderedDict()
        self.limit = limit

    def of(self, starts: Sequence[_Start]) -> _Count:
        found = [self.counts[s] for s in starts if s in self.counts]
        return _Count(max((c.errors for c in found), default=0),
                      max((c.transient for c in found), default=0))

    def failed(self, starts: Sequence[_Start], *, transient: bool) -> _Count:
        now = self.of(starts)
        new = (_Count(now.errors, now.transient + 1) if transient
               else _Count(now.errors + 1, 0))
        for start in starts:
            self.counts[start] = new
            self.counts.move_to_end(start)
        while len(self.counts) > self.limit:
            self.counts.popitem(last=False)
        return new

    def forget(self, starts: Sequence[_Start]) -> None:
        for start in starts:
            self.counts.pop(start, None)


_FAILURES = _Failures()

Item = TypeVar("Item", bound=tuple[ConsumerRecord[Any, Any], Any])


def _starts(service: str, records: Sequence[ConsumerRecord[Any, Any]]) -> list[_Start]:
    first: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        first[tp] = min(first.get(tp, r.offset), r.offset)
    return [(service, topic, partition, offset)
            for (topic, partition), offset in sorted(first.items())]


async def _isolate(
    items: Sequence[Item], process: Callable[[Sequence[Item]], Awaitable[None]]
) -> list[tuple[Item, Exception]]:
    """Process `items`; when that fails, bisect: the items that fail alone are returned with
    their error, the others are processed. A transient error goes through."""
    if not items:
        return []
    try:
        await process(items)
        return []
    except Exception as exc:
        if is_transient(exc):
            raise
        return await _halves(items, process, exc)


async def _halves(
    items: Sequence[Item], process: Callable[[Sequence[Item]], Awaitable[None]],
    exc: Exception,
) -> list[tuple[Item, Exception]]:
    if len(items) == 1:
        return [(items[0], exc)]
    mid = len(items) // 2
    return [*await _isolate(items[:mid], process), *await _isolate(items[mid:], process)]


async def process_bounded(
    message: KafkaMessage,
    broker: KafkaBroker,
    adapter: Decoder[T],
    process: Callable[[Sequence[tuple[ConsumerRecord[Any, Any], T]]], Awaitable[None]],
    *,
    service: str,
    max_attempts: int = 5,
    backoff: Backoff = Backoff(),
) -> None:
    """A group consumer's batch (BATCH_CONSUMER), from decoding to the DLQ: call it as the
    whole body of the subscriber.

    Each record is decoded with `adapter`; those that cannot be go to `<topic>.dlq`.
    `process` gets the decoded (record, value) pairs (not called when there are none) and must
    be idempotent: it may see a record again, alone or with others. When it raises:
    - a transient error (`is_transient`): wait (1 s doubling to 30 s, per batch, in a row) and
      re-raise, so the batch is rewound and redelivered (NACK_ON_ERROR) — without limit, never
      to the DLQ;
    - any other: counted for the batch (its partitions' first offsets, in this process); wait
      (0.25 s doubling) and re-raise, until the `max_attempts`-th failure, which instead
      bisects the batch: the records that still fail alone go to `<topic>.dlq` with the error
      (headers x-error, x-error-type, x-attempts, x-service, x-source-topic/-partition/
      -offset; key and bytes as they were), the others are processed. Then this returns, the
      batch is acknowledged, and its partitions move on.
    A transient error while bisecting or dead-lettering redelivers the batch, which is then
    bisected again straight away. Bisecting keeps the batch's order (left half first), so
    within a partition the parts that succeed are processed in offset order, as consumers that
    store a per-partition watermark (the tracker's) need.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    records = records_of(message)
    if not records:
        return
    # Logged under the trace its first record carries (shared/tracing.py).
    started = time.perf_counter()
    with tracing.use(tracing.of_records(records) or tracing.current()):
        await _process_bounded(records, broker, adapter, process, service=service,
                               max_attempts=max_attempts, backoff=backoff)
    BATCH_SECONDS.labels(service, records[0].topic).observe(time.perf_counter() - started)


async def _process_bounded(
    records: Sequence[ConsumerRecord[Any, Any]],
    broker: KafkaBroker,
    adapter: Decoder[T],
    process: Callable[[Sequence[tuple[ConsumerRecord[Any, Any], T]]], Awaitable[None]],
    *,
    service: str,
    max_attempts: int,
    backoff: Backoff,
) -> None:
    topic = records[0].topic
    starts = _starts(service, records)
    good, bad = decode_records(records, adapter)
    try:
        errors = _FAILURES.of(starts).errors
        if errors >= max_attempts:
            failed = await _isolate(good, process)
            attempts = errors + 1  # and once more alone
        else:
            failed = await _first_try(good, process, starts, max_attempts, backoff,
                                      service=service, topic=topic)
            errors = _FAILURES.of(starts).errors
            # A batch of one failed alone every time; in a larger one it was tried alone once.
            attempts = errors if len(good) == 1 else errors + 1
        await dead_letter(
            broker,
            [*bad, *(BadRecord(item[0], error_text(exc), attempts) for item, exc in failed)],
            service=service,
        )
    except Redeliver as exc:
        REDELIVERIES.labels(service, topic, "deliberate").inc()
        log.info("batch redelivered: %s", exc, extra={"topic": topic})
        raise
    except Exception as exc:
        if is_transient(exc):
            failures = _FAILURES.failed(starts, transient=True).transient
            pause = backoff.pause(failures, transient=True)
            REDELIVERIES.labels(service, topic, "transient").inc()
            log.warning(
                "batch failed on unavailable infrastructure; redelivered in %.1f s", pause,
                extra={"topic": topic, "failures_in_a_row": failures,
                       "error": error_text(exc)},
            )
            await asyncio.sleep(pause)
        raise
    _FAILURES.forget(starts)
    EVENTS_CONSUMED.labels(service, topic).inc(len(records))


async def _first_try(
    good: Sequence[Item],
    process: Callable[[Sequence[Item]], Awaitable[None]],
    starts: Sequence[_Start],
    max_attempts: int,
    backoff: Backoff,
    *,
    service: str,
    topic: str,
) -> list[tuple[Item, Exception]]:
    """The whole batch at once; on a non-transient failure, count it, then pause and re-raise
    or, at the last attempt, bisect."""
    if not good:
        return []
    try:
        await process(good)
        return []
    except Exception as exc:
        if is_transient(exc):
            raise
        errors = _FAILURES.failed(starts, transient=False).errors
        if errors < max_attempts:
            pause = backoff.pause(errors, transient=False)
            REDELIVERIES.labels(service, topic, "error").inc()
            log.warning(
                "batch failed (attempt %d of %d); redelivered in %.2f s",
                errors, max_attempts, pause, exc_info=exc,
                extra={"topic": topic, "starts": [s[2:] for s in starts]},
            )
            await asyncio.sleep(pause)
            raise
        log.error(
            "batch failed %d times; isolating the records that fail alone", errors,
            exc_info=exc, extra={"topic": topic, "records": len(good)},
        )
        return await _halves(good, process, exc)
