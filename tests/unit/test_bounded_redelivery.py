"""Bounded redelivery of a failing batch (shared.kafka.process_bounded), with plain fakes for
the consumed message and the broker: no network. Each delivery is one call; a raised error
stands for FastStream rewinding the batch and delivering it again."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    RecordTooLargeError,
)

from shared import kafka
from shared.kafka import Backoff, is_transient, process_bounded

NO_PAUSE = Backoff(first_transient=0, first_error=0, cap=0)
TOPIC = "t.v1"
Item = tuple[ConsumerRecord[Any, Any], dict[str, Any]]


@pytest.fixture(autouse=True)
def _fresh_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "_FAILURES", kafka._Failures())


def _record(offset: int, value: bytes, partition: int = 0) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, f"k{offset}".encode(), value, None,
                          2, len(value), ())


def _batch(*values: int | bytes, partition: int = 0, first: int = 100) -> Any:
    records = tuple(
        _record(first + i, v if isinstance(v, bytes) else json.dumps({"n": v}).encode(),
                partition)
        for i, v in enumerate(values)
    )
    return type("Message", (), {"raw_message": records})()


@dataclass
class FakeBroker:
    published: list[tuple[bytes, str, bytes, dict[str, str]]] = field(default_factory=list)

    async def publish(self, value: bytes, topic: str, *, key: bytes, headers: dict[str, str],
                      no_confirm: bool) -> None:
        self.published.append((value, topic, key, headers))


def _decode(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


@dataclass
class Handler:
    """Processes a batch of {"n": ...}; raises for the numbers in `poison` (a ValueError), and
    for the next `outages` calls (the given transient error)."""

    poison: set[int] = field(default_factory=set)
    outages: int = 0
    outage: Exception = field(default_factory=lambda: ConnectionRefusedError("db down"))
    done: list[int] = field(default_factory=list)
    calls: int = 0

    async def __call__(self, good: Sequence[Item]) -> None:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise self.outage
        ns = [v["n"] for _, v in good]
        bad = self.poison.intersection(ns)
        if bad:
            raise ValueError(f"cannot handle {sorted(bad)}")
        self.done.extend(ns)


async def _deliver_until_acknowledged(
    message: Any, broker: FakeBroker, handler: Handler, *, max_attempts: int = 3,
    limit: int = 50,
) -> list[Exception]:
    """Deliver the batch again for as long as it raises; the errors that rewound it."""
    rewound: list[Exception] = []
    for _ in range(limit):
        try:
            await process_bounded(message, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                                  max_attempts=max_attempts, backoff=NO_PAUSE)
            return rewound
        except Exception as exc:
            rewound.append(exc)
    raise AssertionError(f"still failing after {limit} deliveries")


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
    asyncpg.exceptions.PostgresConnectionError("x"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.InterfaceError("pool is closed"),
    asyncpg.exceptions.InterfaceError("connection is closed"),
    ConnectionRefusedError(111, "Connect call failed"),
    OSError("Network is unreachable"),
    TimeoutError(),
    KafkaConnectionError("broker down"),
    KafkaTimeoutError(),
    NotLeaderForPartitionError(),
    # A producer's sequence lost in a broker restart: never the records' fault.
    OutOfOrderSequenceNumber(),
    ExceptionGroup("several", [ValueError("x"), ConnectionResetError()]),
], ids=lambda e: type(e).__name__)
def test_infrastructure_errors_are_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bad value"),
    KeyError("template"),
    ZeroDivisionError(),
    asyncpg.exceptions.UniqueViolationError("duplicate key"),
    asyncpg.exceptions.DataError("invalid input for query argument $1"),
    asyncpg.exceptions.InterfaceError("the server expects 2 arguments, 1 was passed"),
    RecordTooLargeError(),
    MessageSizeTooLargeError(),
    ExceptionGroup("several", [ValueError("x"), KeyError("y")]),
], ids=lambda e: type(e).__name__)
def test_errors_of_the_records_or_the_code_are_not_transient(exc: Exception) -> None:
    assert not is_transient(exc)


def test_the_pause_doubles_up_to_the_cap() -> None:
    b = Backoff()
    assert [b.pause(n, transient=True) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert [b.pause(n, transient=False) for n in range(1, 4)] == [0.25, 0.5, 1]
    assert b.pause(100_000, transient=True) == 30


async def test_a_poison_record_goes_to_the_dlq_after_max_attempts_and_the_rest_is_processed(
) -> None:
    broker, handler = FakeBroker(), Handler(poison={3})
    message = _batch(0, 1, 2, 3, 4, 5, 6, 7)

    rewound = await _deliver_until_acknowledged(message, broker, handler, max_attempts=3)

    assert [type(e) for e in rewound] == [ValueError, ValueError]  # attempts 1 and 2
    assert sorted(set(handler.done)) == [0, 1, 2, 4, 5, 6, 7]
    assert len(broker.published) == 1
    value, topic, key, headers = broker.published[0]
    assert (value, topic, key) == (b'{"n": 3}', "t.v1.dlq", b"k103")
    assert headers["x-error"] == "ValueError: cannot handle [3]"
    assert headers["x-error-type"] == "ValueError"
    assert headers["x-attempts"] == "4"  # three with its batch, one alone
    assert headers["x-service"] == "test"
    assert (headers["x-source-topic"], headers["x-source-partition"],
            headers["x-source-offset"]) == ("t.v1", "0", "103")


async def test_bisection_finds_every_poison_record_among_many() -> None:
    broker, handler = FakeBroker(), Handler(poison={5, 17, 18, 63})
    message = _batch(*range(64))

    await _deliver_until_acknowledged(message, broker, handler, max_attempts=2)

    parked = sorted(json.loads(v)["n"] for v, *_ in broker.published)
    assert parked == [5, 17, 18, 63]
    assert sorted(set(handler.done)) == sorted(set(range(64)) - {5, 17, 18, 63})
    # Bisecting, not one call per record.
    assert handler.calls < 64


async def test_a_single_record_batch_is_dead_lettered_after_exactly_max_attempts() -> None:
    broker, handler = FakeBroker(), Handler(poison={9})
    rewound = await _deliver_until_acknowledged(_batch(9), broker, handler, max_attempts=5)
    assert len(rewound) == 4 and handler.calls == 5
    assert broker.published[0][3]["x-attempts"] == "5"


async def test_transient_errors_are_retried_without_limit_and_never_dead_lettered() -> None:
    broker, handler = FakeBroker(), Handler(outages=12)
    rewound = await _deliver_until_acknowledged(_batch(1, 2, 3), broker, handler,
                                                max_attempts=2)
    assert len(rewound) == 12 and all(isinstance(e, OSError) for e in rewound)
    assert broker.published == []
    assert handler.done == [1, 2, 3]


async def test_a_transient_error_while_isolating_redelivers_and_isolation_resumes() -> None:
    broker = FakeBroker()
    handler = Handler(poison={2})
    message = _batch(0, 1, 2, 3)
    for _ in range(2):  # max_attempts=3: two counted failures
        with pytest.raises(ValueError):
            await process_bounded(message, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                                  max_attempts=3, backoff=NO_PAUSE)
    # The third failure starts the bisection; the database goes away in the middle of it.
    calls = handler.calls

    async def flaky(good: Sequence[Item]) -> None:
        if handler.calls == calls + 1:  # the first half, once
            handler.calls += 1
            raise asyncpg.exceptions.ConnectionDoesNotExistError("closed")
        await handler(good)

    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await process_bounded(message, broker, _decode, flaky, service="test",  # type: ignore[arg-type]
                              max_attempts=3, backoff=NO_PAUSE)
    assert broker.published == []
    # Redelivered: isolated straight away, no further attempt counted against it.
    await process_bounded(message, broker, _decode, flaky, service="test",  # type: ignore[arg-type]
                          max_attempts=3, backoff=NO_PAUSE)
    assert [json.loads(v)["n"] for v, *_ in broker.published] == [2]
    assert broker.published[0][3]["x-attempts"] == "4"
    assert {0, 1, 3} <= set(handler.done)


async def test_a_success_forgets_the_failures_of_its_batch() -> None:
    broker, handler = FakeBroker(), Handler(poison={1})
    message = _batch(0, 1)
    for _ in range(2):
        with pytest.raises(ValueError):
            await process_bounded(message, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                                  max_attempts=3, backoff=NO_PAUSE)
    handler.poison = set()  # fixed (e.g. what it waited for arrived)
    await process_bounded(message, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                          max_attempts=3, backoff=NO_PAUSE)
    handler.poison = {1}
    # Failing again from the same offsets starts from one: two more rewinds before the DLQ.
    rewound = await _deliver_until_acknowledged(message, broker, handler, max_attempts=3)
    assert len(rewound) == 2


async def test_a_redelivery_with_other_partitions_keeps_the_count_of_the_failing_one() -> None:
    broker, handler = FakeBroker(), Handler(poison={7})
    mixed = type("Message", (), {"raw_message": (
        *_batch(7, partition=0).raw_message, *_batch(8, partition=1, first=50).raw_message)})()
    with pytest.raises(ValueError):
        await process_bounded(mixed, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                              max_attempts=2, backoff=NO_PAUSE)
    # This time the consumer fetched partition 0 alone, from the same offset.
    await process_bounded(_batch(7, partition=0), broker, _decode, handler, service="test",  # type: ignore[arg-type]
                          max_attempts=2, backoff=NO_PAUSE)
    assert [h["x-source-offset"] for *_, h in broker.published] == ["100"]


async def test_undecodable_records_are_dead_lettered_once_however_often_the_batch_is_retried(
) -> None:
    broker, handler = FakeBroker(), Handler(outages=3)
    await _deliver_until_acknowledged(_batch(1, b"{nope", b"[]", 2), broker, handler)
    assert [(v, h["x-attempts"]) for v, _, _, h in broker.published] == [
        (b"{nope", "1"), (b"[]", "1")]
    assert "ValueError" in broker.published[1][3]["x-error"]
    assert handler.done == [1, 2]


async def test_a_batch_of_only_undecodable_records_does_not_call_the_handler() -> None:
    broker, handler = FakeBroker(), Handler()
    await process_bounded(_batch(b"x"), broker, _decode, handler, service="test",  # type: ignore[arg-type]
                          backoff=NO_PAUSE)
    assert handler.calls == 0 and len(broker.published) == 1


async def test_bisection_processes_the_parts_that_succeed_in_offset_order() -> None:
    """Consumers that keep a per-partition watermark (the tracker) rely on it."""
    broker, handler = FakeBroker(), Handler(poison={3, 12})
    succeeded: list[list[int]] = []

    async def recording(good: Sequence[Item]) -> None:
        before = len(handler.done)
        await handler(good)
        succeeded.append(handler.done[before:])

    message = type("Message", (), {"raw_message": (
        *_batch(*range(8), partition=0).raw_message,
        *_batch(*range(10, 16), partition=1).raw_message)})()
    await _deliver_until_acknowledged(message, broker, recording, max_attempts=1)  # type: ignore[arg-type]

    order = [n for part in succeeded for n in part]
    assert order == [0, 1, 2, 4, 5, 6, 7, 10, 11, 13, 14, 15]
    assert sorted(json.loads(v)["n"] for v, *_ in broker.published) == [3, 12]


async def test_a_deliberate_redelivery_is_neither_a_failure_nor_paused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`Redeliver` (a stopping dispatcher leaving its batch): rewound at once, without the
    infrastructure warning or its pause, and not counted towards the batch's failures."""
    slow = Backoff(first_transient=30, first_error=30, cap=30)
    handler = Handler(outages=3, outage=kafka.Redeliver("stopping"))
    message, broker = _batch(1, 2), FakeBroker()
    for _ in range(3):
        with pytest.raises(kafka.Redeliver):
            await asyncio.wait_for(
                process_bounded(message, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                                max_attempts=1, backoff=slow),
                timeout=5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await process_bounded(message, broker, _decode, handler, service="test",  # type: ignore[arg-type]
                          max_attempts=1, backoff=slow)
    assert handler.done == [1, 2] and broker.published == []
    assert kafka._FAILURES.of(kafka._starts("test", message.raw_message)).errors == 0
