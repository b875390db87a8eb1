"""The scheduler's transactional outbox on real PostgreSQL and Kafka: only committed events
are published, once each, in order; the relay resumes after a restart, one relay at a time;
the use cases write their events with their state change; and what the relay adds to an
event's latency.

Each test module run has a schema of its own (the scheduler's migrations applied to it) and
Kafka topics of its own (the relay's publishers for the real topic names publish there), so a
scheduler running meanwhile (the e2e tests') neither sees these rows nor these records.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker

from services.scheduler import app as scheduler_app
from services.scheduler import auth, domain, fanout, outbox
from services.scheduler import repo as scheduler_repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.aborts import AbortAcks
from services.scheduler.opt_outs import use_cases as opt_outs
from services.scheduler.outbox_relay import OutboxRelay
from shared import db, events, topics, wire
from shared.auth import Principal
from shared.kafka import ensure_topics, make_broker, publish_encoded
from tests.conftest import Stack

pytestmark = pytest.mark.integration

SCHEMA = f"it_outbox_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(stack.database_url, SCHEMA, max_size=4,
                                init=scheduler_repo.init_connection)
    await db.migrate(pool, SCHEMA, scheduler_app.MIGRATIONS)
    yield pool
    await pool.execute(f'DROP SCHEMA "{SCHEMA}" CASCADE')
    await pool.close()


@pytest.fixture
def connect(stack: Stack) -> Callable[[], Awaitable[asyncpg.Connection]]:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(stack.database_url,
                                     server_settings={"search_path": f"{SCHEMA}, public"})
    return connect


class Kafka:
    """A started broker with a publisher per real topic name, each publishing to a topic of
    this test's own; and a reader of those topics."""

    def __init__(self, stack: Stack, broker: KafkaBroker, names: dict[str, str]) -> None:
        self.stack = stack
        self.broker = broker
        self.names = names
        self.publishers = {real: broker.publisher(mine) for real, mine in names.items()}
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, count: int, within: float = 15.0) -> list[tuple[str, bytes, bytes]]:
        """The next `count` records of the test's topics, as (real topic, key, value)."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                *self.names.values(), bootstrap_servers=self.stack.kafka,
                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                fetch_max_wait_ms=50)
            await self._consumer.start()
        real = {mine: name for name, mine in self.names.items()}
        got: list[tuple[str, bytes, bytes]] = []
        deadline = time.monotonic() + within
        while len(got) < count and time.monotonic() < deadline:
            batches = await self._consumer.getmany(timeout_ms=50)
            for records in batches.values():
                got += [(real[r.topic], r.key, r.value) for r in records]
        return got

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


@pytest.fixture
async def kafka(stack: Stack) -> AsyncIterator[Kafka]:
    tag = uuid.uuid4().hex[:8]
    # One partition each: one order to check.
    names = {real: f"it-outbox-{tag}-{real}" for real in topics.ALL}
    await ensure_topics(stack.kafka, names.values(), 1)
    broker = make_broker(stack.kafka, client_id=f"it-outbox-{tag}")
    k = Kafka(stack, broker, names)
    await broker.start()
    yield k
    await k.close()
    await broker.stop()


def _relay(connect: Callable[[], Awaitable[asyncpg.Connection]], kafka: Kafka,
           **kw: Any) -> OutboxRelay:
    lock = int.from_bytes(hashlib.sha256(SCHEMA.encode()).digest()[:8], "big", signed=True)
    return OutboxRelay(connect, kafka.publishers, service="test", lock_key=lock, **kw)


def _aborted() -> outbox.Record:
    return outbox.lifecycle(events.CampaignAborted(campaign_id=uuid.uuid4()))


async def _rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox"))


async def test_only_committed_events_are_published_once_each_in_order(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka
) -> None:
    relay = _relay(connect, kafka)
    relay.start()
    try:
        first = [_aborted(), _aborted()]
        rolled_back = _aborted()
        last = outbox.opt_out(events.AddressOptedOut(organisation_id=uuid.uuid4(),
                                                     address="+4520000000"))
        async with pool.acquire() as conn:
            async with conn.transaction():
                await outbox.add(conn, first)
            with pytest.raises(RuntimeError, match="changed my mind"):
                async with conn.transaction():
                    await outbox.add(conn, [rolled_back])
                    raise RuntimeError("changed my mind")
            async with conn.transaction():
                await outbox.add(conn, [last])
            with pytest.raises(RuntimeError, match="inside the state change's transaction"):
                await outbox.add(conn, [_aborted()])
        got = await kafka.read(3)
        # In order on each topic (a reader of two topics may interleave them either way).
        assert [g for g in got if g[0] == topics.CAMPAIGN_LIFECYCLE] == first
        assert [g for g in got if g[0] == topics.OPT_OUTS] == [last]
        # Nothing more comes: not the rolled-back one, not a second copy (past a poll).
        assert await kafka.read(1, within=1.5) == []
        assert await _rows(pool) == 0
    finally:
        await relay.stop()


async def test_a_record_kafka_can_never_take_is_refused_when_written() -> None:
    class Conn:
        def is_in_transaction(self) -> bool:
            return True

    huge = (topics.SEND_REQUESTED, b"1", b"x" * (outbox.MAX_RECORD_BYTES + 1))
    with pytest.raises(domain.Invalid, match="cannot be sent: a record of 1000002 bytes"):
        await outbox.add(Conn(), [huge])  # type: ignore[arg-type]


async def test_a_row_kafka_can_never_take_is_parked_unsent_and_holds_back_nothing(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka
) -> None:
    """Written around `outbox.add` (e.g. by an older version): set aside, never offered to
    the producer."""
    before, after = _aborted(), _aborted()
    huge = (topics.CAMPAIGN_LIFECYCLE, b"k", b'{"x": "' + b"y" * 2 * 1024 * 1024 + b'"}')
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, [before])
        await conn.execute("INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3)", *huge)
        await outbox.add(conn, [after])
    relay = _relay(connect, kafka)
    relay.start()
    try:
        assert await kafka.read(2) == [before, after]
        assert await kafka.read(1, within=1.0) == []
        later = [_aborted()]  # the producer is as good as before
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, later)
        assert await kafka.read(1) == later
    finally:
        await relay.stop()
    assert await _rows(pool) == 0
    async with pool.acquire() as conn, conn.transaction():
        parked = await conn.fetch("DELETE FROM outbox_parked RETURNING value, error")
    assert [r["value"] for r in parked] == [huge[2]]
    assert parked[0]["error"].startswith("a record of 2097162 bytes")


async def test_an_unknown_topic_is_refused_when_written() -> None:
    class Conn:
        def is_in_transaction(self) -> bool:
            return True

    with pytest.raises(ValueError, match="no such topic"):
        await outbox.add(Conn(), [("sendout.nope.v1", None, b"{}")])  # type: ignore[arg-type]


async def test_the_relay_resumes_after_a_restart_and_republishes_what_it_did_not_delete(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka
) -> None:
    # Written while no relay runs: kept until one does.
    waiting = [_aborted(), _aborted()]
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, waiting)
    assert await kafka.read(1, within=1.0) == []
    assert await _rows(pool) == 2

    # A relay that dies between Kafka's acknowledgement and the delete (the delete waits on
    # a lock held here; the relay is cancelled meanwhile): the rows stay.
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT * FROM outbox FOR UPDATE")
        relay = _relay(connect, kafka)
        relay.start()
        assert await kafka.read(2) == waiting
        await relay.stop(drain_seconds=0.5)
    assert await _rows(pool) == 2

    # The next relay publishes them again (consumers drop the copies by event id), and
    # deletes them; and goes on with new ones.
    relay = _relay(connect, kafka)
    relay.start()
    try:
        assert await kafka.read(2) == waiting
        more = [_aborted()]
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, more)
        assert await kafka.read(1) == more
        assert await kafka.read(1, within=1.5) == []
        assert await _rows(pool) == 0
    finally:
        await relay.stop()


async def test_one_relay_at_a_time_and_another_takes_over_when_it_stops(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka
) -> None:
    relays = [_relay(connect, kafka, poll_seconds=0.2) for _ in range(2)]
    for relay in relays:
        relay.start()
    try:
        deadline = time.monotonic() + 10
        while not any(r.holds_lock for r in relays):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert [r.holds_lock for r in relays].count(True) == 1
        batch = [_aborted() for _ in range(50)]
        async with pool.acquire() as conn:
            for record in batch:
                async with conn.transaction():
                    await outbox.add(conn, [record])
        assert await kafka.read(50) == batch
        holder = next(r for r in relays if r.holds_lock)
        other = next(r for r in relays if r is not holder)
        await holder.stop()
        later = [_aborted(), _aborted()]
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, later)
        assert await kafka.read(2) == later
        assert other.holds_lock
        assert await kafka.read(1, within=1.0) == []
    finally:
        for relay in relays:
            await relay.stop()


async def test_the_relay_adds_milliseconds_not_a_poll_to_an_events_latency(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka
) -> None:
    """Commit → record readable, against publish → record readable; NOTIFY wakes the relay
    (its poll is a full second here, so a missed wake-up would show as ~0.5 s on average)."""
    relay = _relay(connect, kafka, poll_seconds=1.0)
    relay.start()
    try:
        await asyncio.sleep(0.5)
        await kafka.read(1, within=0.5)  # the reader is assigned its partitions
        direct: list[float] = []
        relayed: list[float] = []
        for _ in range(15):
            record = _aborted()
            started = time.perf_counter()
            await publish_encoded(kafka.publishers[record[0]], [record[1:]], service="test")
            assert await kafka.read(1) == [record]
            direct.append(time.perf_counter() - started)

            record = _aborted()
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await outbox.add(conn, [record])
                committed = time.perf_counter()
            assert await kafka.read(1) == [record]
            relayed.append(time.perf_counter() - committed)
            await asyncio.sleep(0.05)
    finally:
        await relay.stop()
    d, r = statistics.median(direct), statistics.median(relayed)
    print(f"\nmedian publish → readable {1000 * d:.1f} ms; commit → readable through the "
          f"outbox {1000 * r:.1f} ms; added {1000 * (r - d):.1f} ms "
          f"(max {1000 * max(relayed):.1f} ms)")
    assert r - d < 0.1, (direct, relayed)


# The use cases write their events with their state change.

ORG = uuid.uuid4()
ACTOR = Principal(uuid.uuid4(), ORG, "outbox-test")


class _NoFanout:
    def __init__(self) -> None:
        self.kicked: list[uuid.UUID] = []

    def kick(self, campaign_id: uuid.UUID) -> None:
        self.kicked.append(campaign_id)


async def _outbox_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn, conn.transaction():
        return await conn.fetch("DELETE FROM outbox RETURNING topic, key, value")


@pytest.fixture(scope="module")
async def actor(pool: asyncpg.Pool) -> Principal:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO organisations (id, name) VALUES ($1, $2)", ORG,
                           f"outbox-{ORG}")
        user_id = await scheduler_repo.upsert_user(conn, ORG, "outbox-test")
    return Principal(user_id, ORG, "outbox-test")


async def _campaign(pool: asyncpg.Pool, actor: Principal, kind: str, n: int = 1) -> uuid.UUID:
    cmd = domain.CreateCampaign(name="outbox", kind=kind, channels=["email", "sms"],
                                sender=domain.SenderIn(name="Office", email="o@example.org",
                                                       sms_sender_id="Office"),
                                template="Hi {{ first_name }}", subject="Vote")
    cid = await use_cases.create_campaign(AsyncpgUnitOfWork(pool), cmd, actor)
    recipients = [domain.Recipient(email=f"r{i}@example.org", phone=f"+452010{i:04d}",
                                   first_name=f"R{i}") for i in range(n)]
    await use_cases.add_recipients(AsyncpgUnitOfWork(pool), cid, recipients, "DK", actor)
    return cid


async def test_schedule_and_cancel_write_their_events_and_a_refused_one_writes_none(
    pool: asyncpg.Pool, actor: Principal
) -> None:
    await _outbox_rows(pool)
    cid = await _campaign(pool, actor, "mass")
    at = datetime.now(UTC) + timedelta(hours=1)
    await use_cases.schedule(AsyncpgUnitOfWork(pool), cid, at, actor)
    await use_cases.cancel(AsyncpgUnitOfWork(pool), cid, actor)
    with pytest.raises(domain.InvalidTransition):
        # A draft now: refused, and nothing written.
        await use_cases.cancel(AsyncpgUnitOfWork(pool), cid, actor)
    rows = await _outbox_rows(pool)
    assert [(r["topic"], r["key"]) for r in rows] == [(topics.CAMPAIGN_LIFECYCLE, cid.bytes)] * 2
    scheduled, canceled = (events.LIFECYCLE.validate_json(r["value"]) for r in rows)
    assert isinstance(scheduled, events.CampaignScheduled) and scheduled.scheduled_for == at
    assert isinstance(canceled, events.CampaignCanceled) and canceled.campaign_id == cid


async def test_a_peer_to_peer_send_is_written_with_the_press_and_carries_the_campaign(
    pool: asyncpg.Pool, actor: Principal
) -> None:
    await _outbox_rows(pool)
    cid = await _campaign(pool, actor, "p2p")
    await use_cases.start_sending(AsyncpgUnitOfWork(pool), _NoFanout(), cid, actor)  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        [recipient] = await scheduler_repo.p2p_recipients(conn, cid, 0, 10)
    answer = await use_cases.press_send(AsyncpgUnitOfWork(pool), cid, recipient["id"], actor,
                                        batch_size=100)
    again = await use_cases.press_send(AsyncpgUnitOfWork(pool), cid, recipient["id"], actor,
                                       batch_size=100)
    assert (answer["status"], again["status"]) == ("sent", "already sent")
    [row] = await _outbox_rows(pool)  # the second press wrote nothing
    assert row["topic"] == topics.SEND_REQUESTED
    context, requests = wire.decode_send_requests(row["value"])
    assert {r.channel for r in requests} == {"email", "sms"}
    async with pool.acquire() as conn:
        campaign = await scheduler_repo.get_campaign(conn, cid)
    assert context == fanout.campaign_context(campaign)
    assert context is not None and context.organisation_id == ORG
    assert context.templates["sms"].body == "Hi {{ first_name }}"
    assert context.sender.sms_sender_id == "Office"


async def test_every_record_of_a_fan_out_carries_the_campaign_context(
    pool: asyncpg.Pool, actor: Principal
) -> None:
    """What lets a dispatcher send a request that reaches it before the `started` event."""
    cid = await _campaign(pool, actor, "mass", n=5)
    await use_cases.send_now(AsyncpgUnitOfWork(pool), _NoFanout(), cid, actor)  # type: ignore[arg-type]
    started: list[events.CampaignStarted] = []
    records: list[tuple[bytes, bytes]] = []

    async def publish_started(event: events.CampaignStarted) -> None:
        started.append(event)

    async def publish_requests(context: wire.CampaignContext,
                               requests: list[wire.SendRequested]) -> None:
        records.extend(wire.request_records(requests, 3, context))

    assert await fanout.fan_out(pool, cid, publish_started=publish_started,
                                publish_requests=publish_requests, page_size=2)
    decoded = [wire.decode_send_requests(value) for _, value in records]
    assert sum(len(reqs) for _, reqs in decoded) == 10  # 5 recipients, 2 channels
    [event] = started
    for context, _ in decoded:
        assert context is not None
        assert events.CampaignContext.model_validate_json(
            msgspec.json.encode(context)) == event.context()


async def test_an_opt_out_and_a_token_are_written_only_if_their_transaction_commits(
    pool: asyncpg.Pool, actor: Principal
) -> None:
    await _outbox_rows(pool)
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await auth.issue_token(conn, actor)
            raise RuntimeError("rolled back")
    assert await _outbox_rows(pool) == []
    await opt_outs.opt_out(AsyncpgUnitOfWork(pool), ORG, "+4520999999", source="api",
                           keyword=None, region="DK")
    async with pool.acquire() as conn, conn.transaction():
        token = await auth.issue_token(conn, actor)
    rows = await _outbox_rows(pool)
    assert [r["topic"] for r in rows] == [topics.OPT_OUTS, topics.IDENTITY]
    opted = events.OPTED_OUT.validate_json(rows[0]["value"])
    assert (opted.organisation_id, opted.address) == (ORG, "+4520999999")
    issued = events.IDENTITY.validate_json(rows[1]["value"])
    assert isinstance(issued, events.ApiTokenIssued)
    assert rows[1]["key"] == bytes.fromhex(issued.token_hash)
    assert issued.token_hash == auth.hash_token(token).hex()
    assert issued.user_id == actor.user_id


async def _fake_dispatcher(kafka: Kafka, acks: AbortAcks, instance: str,
                           settled: int) -> None:
    """Answers every abort it reads on the (test's) lifecycle topic, as a dispatcher does."""
    while True:
        for topic, _, value in await kafka.read(1, within=0.2):
            event = events.LIFECYCLE.validate_json(value)
            if topic == topics.CAMPAIGN_LIFECYCLE and isinstance(event, events.CampaignAborted):
                acks.acknowledged(events.AbortAcknowledged(
                    campaign_id=event.campaign_id, instance=instance, settled=settled))


async def _sending(pool: asyncpg.Pool, actor: Principal) -> uuid.UUID:
    cid = await _campaign(pool, actor, "mass", n=3)
    await use_cases.send_now(AsyncpgUnitOfWork(pool), _NoFanout(), cid, actor)  # type: ignore[arg-type]
    return cid


@pytest.mark.parametrize("members", [{"d1"}, {"d1", "d2"}], ids=["all answer", "one silent"])
async def test_an_abort_is_answered_after_its_relayed_event_reached_the_dispatchers(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka, actor: Principal, members: set[str]
) -> None:
    cid = await _sending(pool, actor)
    await _outbox_rows(pool)
    relay = _relay(connect, kafka)
    relay.start()
    acks = AbortAcks()
    dispatcher = asyncio.create_task(_fake_dispatcher(kafka, acks, "d1", settled=2))

    async def list_dispatchers() -> set[str]:
        return members

    try:
        started = time.perf_counter()
        answer = await use_cases.abort(AsyncpgUnitOfWork(pool), cid, actor, acks=acks,
                                       list_dispatchers=list_dispatchers, wait_seconds=1.5)
        took = time.perf_counter() - started
    finally:
        dispatcher.cancel()
        await relay.stop()
    assert answer["acknowledged_by"] == ["d1"]
    assert answer["pending"] == 6 - 2  # 3 recipients, 2 channels each, 2 settled
    if members == {"d1"}:
        assert answer["acknowledged"] is True and answer["unresponsive"] == []
        assert "message" not in answer and took < 1.0
    else:
        assert answer["acknowledged"] is False and answer["unresponsive"] == ["d2"]
        assert "d2 did not answer within 1.5 s" in answer["message"]
    async with pool.acquire() as conn:
        row = await scheduler_repo.get_campaign(conn, cid)
        trail = await scheduler_repo.audit_trail(conn, cid)
    assert row is not None and (row["state"], row["abort_pending"]) == ("aborting", 4)
    assert trail[-1]["details"] == answer


async def test_an_abort_nobody_answers_is_not_acknowledged_and_says_so(
    pool: asyncpg.Pool, connect: Any, kafka: Kafka, actor: Principal
) -> None:
    """No live dispatcher (e.g. a hung one dropped from the group), and no relay either: the
    answer says both, and the abort still stands (its event waits in the outbox)."""
    cid = await _sending(pool, actor)
    await _outbox_rows(pool)

    async def nobody() -> set[str]:
        return set()

    answer = await use_cases.abort(AsyncpgUnitOfWork(pool), cid, actor, acks=AbortAcks(),
                                   list_dispatchers=nobody, wait_seconds=0.3)
    assert answer["acknowledged"] is False and answer["pending"] is None
    assert (answer["acknowledged_by"], answer["unresponsive"]) == ([], [])
    assert answer["message"].startswith("no dispatcher answered: the abort is recorded")
    [row] = await _outbox_rows(pool)
    event = events.LIFECYCLE.validate_json(row["value"])
    assert isinstance(event, events.CampaignAborted) and event.campaign_id == cid
