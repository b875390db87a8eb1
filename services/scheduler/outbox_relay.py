"""The transactional outbox's relay: publishes committed outbox rows to Kafka, in id order,
through the service's declared FastStream publishers, then deletes them.

- Woken at once by the inserting transaction's NOTIFY (delivered at its commit), with a poll
  as a fallback (a notification lost with a dropped connection, rows left by a crash).
- One relay at a time across the scheduler's replicas: whoever holds the session advisory lock
  on its own connection. If that process dies, its connection and lock go with it, and another
  replica's relay takes over at its next attempt.
- At least once: a row is deleted only after Kafka acknowledged it, so a crash in between
  publishes it again. Each event carries its own event id (or, for send requests, a stable
  one), and consumers apply an event id once.
- A row Kafka can never take (larger than a record may be) is moved to `outbox_parked` with
  the reason instead of being sent: it must not hold back every event behind it, nor be
  offered to the producer (a batch the broker refuses leaves the idempotent producer's
  sequence numbers out of order for every later send). `outbox.add` refuses such records
  already; this guards rows written otherwise.
- Ordering: rows are read by id and published in that order; a transaction that got an id
  earlier but committed later is published when it commits. Events of one campaign are written
  under its row lock, so their ids follow their commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import asyncpg
from faststream.kafka.publisher.usecase import DefaultPublisher
from prometheus_client import Histogram

from services.scheduler.outbox import CHANNEL, record_size_error
from shared.db import Conn
from shared.kafka import publish_encoded

log = logging.getLogger(__name__)

LOCK_KEY = int.from_bytes(hashlib.sha256(b"outbox-relay:scheduler").digest()[:8], "big",
                          signed=True)

OUTBOX_LAG = Histogram(
    "sendout_outbox_lag_seconds",
    "From an outbox row's insert to Kafka's acknowledgement of it (includes the rest of its "
    "transaction)",
    ["service"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class OutboxRelay:
    def __init__(
        self,
        connect: Connect,
        publishers: Mapping[str, DefaultPublisher],
        *,
        service: str,
        poll_seconds: float = 1.0,
        batch_size: int = 500,
        retry_seconds: float = 1.0,
        lock_key: int = LOCK_KEY,
    ) -> None:
        self._connect = connect
        self._publishers = publishers
        self._service = service
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._retry_seconds = retry_seconds
        self._lock_key = lock_key
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.holds_lock = False

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Publish what is committed already (within `drain_seconds`), then stop. Rows left
        (Kafka unreachable, or written from now on) are published by the next relay."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_seconds)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing is lost: unpublished rows stay in the table until Kafka takes them.
                log.exception("outbox relay interrupted; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._retry_seconds)

    async def _session(self) -> None:
        conn = await self._connect()
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                # Another replica relays; take over if it goes away. (Not listening: only a
                # stop wakes this early.)
                if self._stopping.is_set():
                    return
                self._wake.clear()
                await self._sleep()
            self.holds_lock = True
            await conn.add_listener(CHANNEL, self._notified)
            while True:
                self._wake.clear()
                if await self._relay_once(conn):
                    continue
                if self._stopping.is_set():
                    return
                await self._sleep()
        finally:
            self.holds_lock = False
            try:
                # Closing the connection releases the lock and the listener.
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _sleep(self) -> bool:
        """Until woken or the poll interval passed; True if stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
        return self._stopping.is_set()

    async def _relay_once(self, conn: Conn) -> int:
        """Publish and delete the oldest rows; how many there were."""
        rows = await conn.fetch(
            "SELECT id, topic, key, value, created_at FROM outbox ORDER BY id LIMIT $1",
            self._batch_size,
        )
        if not rows:
            return 0
        started = time.perf_counter()
        parked: list[tuple[asyncpg.Record, str]] = []
        sendable: list[asyncpg.Record] = []
        for r in rows:
            error = record_size_error(r["key"], r["value"])
            if error is None:
                sendable.append(r)
            else:
                parked.append((r, error))
        # Runs of one topic at a time, in id order: each run is one acknowledged publish.
        for topic, run in itertools.groupby(sendable, key=lambda r: r["topic"]):
            publisher = self._publishers.get(topic)
            if publisher is None:
                raise LookupError(f"outbox row for topic {topic!r}, which has no publisher")
            await publish_encoded(publisher, [(r["key"], r["value"]) for r in run],
                                  service=self._service)
        now = datetime.now(UTC)
        for r in rows:
            OUTBOX_LAG.labels(self._service).observe((now - r["created_at"]).total_seconds())
        delete = ("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        if parked:
            async with conn.transaction():
                await self._park(conn, parked)
                await conn.execute(*delete)
        else:
            await conn.execute(*delete)
        log.debug("outbox rows relayed",
                  extra={"rows": len(rows), "last_id": rows[-1]["id"],
                         "publish_ms": round(1000 * (time.perf_counter() - started), 1)})
        return len(rows)

    async def _park(self, conn: Conn,
                    parked: list[tuple[asyncpg.Record, str]]) -> None:
        for r, error in parked:
            log.error("outbox row parked: Kafka cannot take it",
                      extra={"outbox_id": r["id"], "topic": r["topic"],
                             "bytes": len(r["value"]), "error": error})
        await conn.executemany(
            """
            INSERT INTO outbox_parked (id, topic, key, value, created_at, error)
            VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING
            """,
            [(r["id"], r["topic"], r["key"], r["value"], r["created_at"], error)
             for r, error in parked],
        )
