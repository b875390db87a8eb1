"""The dispatcher's send-once guard (one delivery row per key, with its outcome) on real
PostgreSQL."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from services.dispatcher import domain, repo
from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.reliability import RetryPolicy
from services.dispatcher.service import (
    AbortRegistry,
    Dispatcher,
    RateLimiter,
)
from tests.factories import send_requested, started

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def _empty_retry_schedule(dispatcher_pool: asyncpg.Pool) -> None:
    """The retry schedule is the process's, not the campaign's: what an earlier test (or run)
    left on it would be sent by this test's dispatcher."""
    async with dispatcher_pool.acquire() as conn:
        await conn.execute("DELETE FROM retries")


class RecordingProvider:
    """A provider double that records every call and fails chosen addresses."""

    def __init__(self, permanent: set[str] = frozenset(), flaky: set[str] = frozenset()) -> None:
        self.calls: list[OutgoingMessage] = []
        self.permanent = permanent
        self.flaky = set(flaky)

    async def send(self, message: OutgoingMessage) -> str:
        self.calls.append(message)
        if message.to in self.permanent:
            raise PermanentProviderError("HTTP 422: landline")
        if message.to in self.flaky:
            self.flaky.discard(message.to)
            raise RetryableProviderError("HTTP 503: busy")
        return f"id-{len(self.calls)}"

    async def close(self) -> None:
        return None


async def settle_retries(d: Dispatcher, within: float = 10.0) -> list[domain.Outcome]:
    """Run the retry schedule until it is empty; the outcomes it published."""
    import asyncio

    published: list[domain.Outcome] = []

    async def publish(outcomes: list[tuple[domain.Outcome, bytes]]) -> None:
        published.extend(o for o, _ in outcomes)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        await d.run_due_retries(publish)
        async with d._pool.acquire() as conn:
            if not await repo.any_scheduled(conn):
                return published
        await asyncio.sleep(0.02)
    raise AssertionError("retries still scheduled")


def _dispatcher(
    pool: asyncpg.Pool, provider: RecordingProvider, aborts: AbortRegistry | None = None
) -> Dispatcher:
    return Dispatcher(pool, {"email": provider, "sms": provider},
                      aborts=aborts or AbortRegistry(), concurrency=10,
                      rate_limiter=RateLimiter(0),
                      retry_policy=RetryPolicy(base_seconds=0.05, deadline_seconds=0.6))


async def _campaign(pool: asyncpg.Pool) -> uuid.UUID:
    cid = uuid.uuid4()
    async with pool.acquire() as conn:
        await repo.save_template(conn, started(cid, 10))
    return cid


async def test_a_request_delivered_twice_is_sent_once_and_reported_the_same(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    d = _dispatcher(dispatcher_pool, provider)
    batch = [send_requested(cid, i, f"v{i}@example.org") for i in range(1, 6)]
    first = await d.dispatch(batch + batch[:2])  # duplicates inside a batch, too
    second = await _dispatcher(dispatcher_pool, provider).dispatch(batch)
    assert len(provider.calls) == 5
    assert sorted((o.recipient_id, o.status, o.provider_message_id) for o in first) == sorted(
        (o.recipient_id, o.status, o.provider_message_id) for o in second
    )


async def test_outcomes_map_provider_answers_and_missing_addresses(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    provider = RecordingProvider(permanent={"dead@example.org"}, flaky={"flaky@example.org"})
    d = _dispatcher(dispatcher_pool, provider)
    outcomes = await d.dispatch([
        send_requested(cid, 1, "ok@example.org"),
        send_requested(cid, 2, "dead@example.org"),
        send_requested(cid, 3, "flaky@example.org"),
        send_requested(cid, 4, None),
        send_requested(cid, 5, None, skip_reason="invalid_address"),
    ])
    by_id = {o.recipient_id: o for o in outcomes}
    assert 3 not in by_id  # on the retry schedule after its first (retryable) failure
    by_id.update({o.recipient_id: o for o in await settle_retries(d)})
    assert (by_id[1].status, by_id[2].status, by_id[3].status, by_id[4].status) == (
        "completed", "failed", "completed", "skipped")
    assert by_id[2].reason == "HTTP 422: landline"
    assert by_id[4].reason == "missing_address"
    assert (by_id[5].status, by_id[5].reason) == ("skipped", "invalid_address")
    assert [c.to for c in provider.calls].count("flaky@example.org") == 2
    assert "None" not in {c.to for c in provider.calls}
    assert provider.calls[0].body == "Hi Ada" and provider.calls[0].subject == "Subject for Ada"


async def test_retries_running_out_fail_with_the_last_reason(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    class Down(RecordingProvider):
        async def send(self, message: OutgoingMessage) -> str:
            self.calls.append(message)
            raise RetryableProviderError("HTTP 503: busy")

    cid = await _campaign(dispatcher_pool)
    provider = Down()
    d = _dispatcher(dispatcher_pool, provider)
    assert await d.dispatch([send_requested(cid, 1)]) == []
    [o] = await settle_retries(d)
    assert o.status == "failed" and "attempts: HTTP 503" in (o.reason or "")
    assert o.reason.startswith("gave up after")
    assert len(provider.calls) >= 2


async def test_a_request_for_an_unknown_campaign_waits_for_its_template_on_the_schedule(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    provider = RecordingProvider()
    d = _dispatcher(dispatcher_pool, provider)
    cid = uuid.uuid4()
    ok = send_requested(await _campaign(dispatcher_pool), 1)
    # Its neighbour's campaign is known: the batch does not fail, only the unknown one waits.
    outcomes = await d.dispatch([send_requested(cid, 1), ok])
    assert [o.recipient_id for o in outcomes] == [1] and outcomes[0].campaign_id == ok.campaign_id
    assert len(provider.calls) == 1
    async with dispatcher_pool.acquire() as conn:
        await repo.save_template(conn, started(cid, 1))
    [late] = await settle_retries(d)
    assert (late.campaign_id, late.status) == (cid, "completed")
    assert len(provider.calls) == 2


async def test_concurrent_migrations_apply_each_file_once(dispatcher_pool: asyncpg.Pool) -> None:
    import asyncio

    from services.dispatcher.bootstrap import MIGRATIONS
    from shared import db

    schema = f"mig_{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(*(db.migrate(dispatcher_pool, schema, MIGRATIONS)
                                     for _ in range(3)))
    assert sorted(len(r) for r in results) == [0, 0, len(list(MIGRATIONS.glob("*.sql")))]
    async with dispatcher_pool.acquire() as conn:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_no_provider_call_starts_for_an_aborted_campaign(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    aborts = AbortRegistry()
    aborts.add({cid})
    outcomes = await _dispatcher(dispatcher_pool, provider, aborts).dispatch(
        [send_requested(cid, i, f"a{i}@example.org") for i in range(1, 4)]
    )
    assert provider.calls == []
    assert {(o.status, o.reason) for o in outcomes} == {("skipped", "aborted")}
    async with dispatcher_pool.acquire() as conn:
        assert await repo.settled_count(conn, cid) == 3


async def test_each_channel_goes_to_its_own_provider(dispatcher_pool: asyncpg.Pool) -> None:
    cid = uuid.uuid4()
    async with dispatcher_pool.acquire() as conn:
        await repo.save_template(conn, started(cid, 1, channels=("email", "sms")))
    email, sms = RecordingProvider(), RecordingProvider()
    d = Dispatcher(dispatcher_pool, {"email": email, "sms": sms}, aborts=AbortRegistry(),
                   concurrency=5, rate_limiter=RateLimiter(0))
    await d.dispatch([send_requested(cid, 1, "a@example.org"),
                      send_requested(cid, 1, "+4520123456", channel="sms")])
    assert [(c.channel, c.to, c.subject) for c in email.calls] == [
        ("email", "a@example.org", "Subject for Ada")]
    assert [(c.channel, c.to, c.sender, c.subject) for c in sms.calls] == [
        ("sms", "+4520123456", "Office", None)]


async def test_a_delivery_row_left_without_an_outcome_is_sent_again_and_then_settled(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    """A row claimed before its provider call by an older version, whose process then died:
    sent again (same idempotency key), and the row gets the outcome."""
    cid = await _campaign(dispatcher_pool)
    req = send_requested(cid, 1, "a@example.org")
    async with dispatcher_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO deliveries (campaign_id, recipient_id, channel, request_id) "
            "VALUES ($1, 1, 'email', $2)", cid, req.event_id)
    provider = RecordingProvider()
    [first] = await _dispatcher(dispatcher_pool, provider).dispatch([req])
    [again] = await _dispatcher(dispatcher_pool, provider).dispatch([req])
    assert [c.idempotency_key for c in provider.calls] == [str(req.event_id)]
    assert first.status == again.status == "completed"
    assert first.provider_message_id == again.provider_message_id
    async with dispatcher_pool.acquire() as conn:
        assert await repo.settled_count(conn, cid) == 1


async def test_the_first_outcome_recorded_for_a_message_stays(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    req = send_requested(cid, 1, "a@example.org")
    provider = RecordingProvider()
    # Two dispatchers that both missed the other's record (a rebalance mid-batch) race.
    one, two = _dispatcher(dispatcher_pool, provider), _dispatcher(dispatcher_pool, provider)
    [a] = await one.dispatch([req])
    async with dispatcher_pool.acquire() as conn:
        late = domain.sent(req, "late")
        await repo.record_outcomes(conn, [(req, late, late.to_bytes())])
    [b] = await two.dispatch([req])
    assert b.provider_message_id == a.provider_message_id != "late"


async def test_outcomes_published_are_those_recorded_and_a_failed_record_fails_the_batch(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    d = _dispatcher(dispatcher_pool, provider)
    published: list[bytes] = []

    async def publish(outcomes: list[tuple[domain.Outcome, bytes]]) -> None:
        published.extend(data for _, data in outcomes)

    batch = [send_requested(cid, i, f"p{i}@example.org") for i in range(1, 4)]
    await d.dispatch_encoded(batch[:1], publish)  # settled before the next batch
    returned = await d.dispatch_encoded(batch, publish)
    assert [data for _, data in returned] == published[1:]
    async with dispatcher_pool.acquire() as conn:
        stored = await conn.fetch(
            "SELECT outcome::text AS o FROM deliveries WHERE campaign_id = $1", cid)
    assert sorted(r["o"].encode() for r in stored) == sorted(published[1:])
    assert len(provider.calls) == 3

    # Recording fails (the database refuses the rows): the batch fails, to be redelivered.
    async def refuse(*args: object, **kw: object) -> None:
        raise asyncpg.PostgresError("refused")

    failing = _dispatcher(dispatcher_pool, RecordingProvider())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repo, "step", refuse)
        with pytest.raises(asyncpg.PostgresError):
            await failing.dispatch_encoded([send_requested(cid, 9, "p9@example.org")], publish)


async def test_settled_keys_are_found_among_runs_and_gaps_of_recipient_ids(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    """The lookup reads ranges of ids: keys recorded inside, between and next to the runs of
    a batch are told apart exactly, per campaign and channel."""
    cid, other = await _campaign(dispatcher_pool), await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    recorded = [send_requested(cid, i, f"r{i}@example.org") for i in (3, 5, 40, 1000)]
    recorded.append(send_requested(cid, 7, "+4520000007", channel="sms"))
    recorded.append(send_requested(other, 4, "o4@example.org"))
    await _dispatcher(dispatcher_pool, provider).dispatch(recorded)
    provider.calls.clear()

    # Ids 1-10 (one run, gaps of one), 36-44, then 990-999 and 1001: 1000 lies between runs
    # and was recorded, but is not asked for; 7 was recorded for SMS only.
    asked = [send_requested(cid, i, f"r{i}@example.org")
             for i in [*range(1, 11), *range(36, 45), *range(990, 1000), 1001]]
    outcomes = await _dispatcher(dispatcher_pool, provider).dispatch(asked)
    sent_again = sorted(int(c.to.removeprefix("r").split("@")[0]) for c in provider.calls)
    assert sent_again == sorted({r.recipient_id for r in asked} - {3, 5, 40})
    assert len(outcomes) == len(asked)


async def test_a_batch_with_a_key_recorded_meanwhile_records_the_others_and_keeps_the_first(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    batch = [send_requested(cid, i, f"m{i}@example.org") for i in range(1, 4)]
    early = domain.sent(batch[1], "recorded-meanwhile")
    async with dispatcher_pool.acquire() as conn:
        await repo.record_outcomes(conn, [(batch[1], early, early.to_bytes())])
        # The batch's own outcomes, one of them for the key recorded meanwhile: the copy
        # straight into the table fails on it, and the batch is inserted the careful way.
        mine = [(r, domain.sent(r, f"mine-{r.recipient_id}")) for r in batch]
        await repo.record_outcomes(conn, [(r, o, o.to_bytes()) for r, o in mine])
        stored = {r["recipient_id"]: r["outcome"] for r in await conn.fetch(
            "SELECT recipient_id, outcome->>'provider_message_id' AS outcome FROM deliveries "
            "WHERE campaign_id = $1", cid)}
    assert stored == {1: "mine-1", 2: "recorded-meanwhile", 3: "mine-3"}


def test_claimed_ids_are_stored_as_runs_of_exactly_those_ids() -> None:
    assert repo.runs_of([5, 6, 7, 9, 10, 3, 4, 12]) == [[5, 7], [9, 10], [3, 4], [12, 12]]
    assert repo.runs_of([]) == []


async def test_claims_are_read_back_exactly_from_runs_and_from_rows_of_the_older_form(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    campaign_id = uuid.uuid4()
    batch_id = uuid.uuid4()
    async with dispatcher_pool.acquire() as conn:
        taken = await repo.claim(conn, batch_id, [(campaign_id, "email", [1, 2, 3, 7, 8])],
                                 owner="test", spans=[(9_900, 1, 1)])
        assert taken == {campaign_id}
        # A row written by the version that kept every id in an array.
        await conn.execute(
            "INSERT INTO claims (batch_id, campaign_id, channel, recipient_ids, claimed_by) "
            "VALUES ($1, $2, 'sms', $3, 'old')", batch_id, campaign_id, [4, 11])
        claimed = await repo.claims_of(conn, [batch_id])
        in_flight = await repo.sent_or_in_flight(conn, campaign_id)
    assert sorted((rid, ch) for _, rid, ch in claimed) == [
        (1, "email"), (2, "email"), (3, "email"), (4, "sms"), (7, "email"), (8, "email"),
        (11, "sms")]
    assert in_flight == 7  # claimed, none settled yet
