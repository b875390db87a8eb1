"""One message's trouble stays its own, on real PostgreSQL: claims before calls, in-doubt keys,
the abort gate, the retry schedule and the breaker."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import msgspec
import pytest

from services.dispatcher import repo
from services.dispatcher.providers import OutgoingMessage, RetryableProviderError
from services.dispatcher.reliability import CircuitBreaker, RetryPolicy
from services.dispatcher.service import AbortRegistry, Dispatcher, RateLimiter
from tests.factories import send_requested, started
from tests.integration.test_dispatcher_claims import RecordingProvider, settle_retries

pytestmark = pytest.mark.integration

SPANS = [(0, 100, 149)]


@pytest.fixture(autouse=True)
async def _empty_retry_schedule(dispatcher_pool: asyncpg.Pool) -> None:
    async with dispatcher_pool.acquire() as conn:
        await conn.execute("DELETE FROM retries")


async def _campaign(pool: asyncpg.Pool, body: str = "Hi {{ first_name }}") -> uuid.UUID:
    cid = uuid.uuid4()
    async with pool.acquire() as conn:
        await repo.save_template(conn, started(cid, 10, body=body))
    return cid


def _dispatcher(pool: asyncpg.Pool, provider: object, **kw: object) -> Dispatcher:
    options: dict[str, object] = {
        "aborts": AbortRegistry(), "concurrency": 10, "rate_limiter": RateLimiter(0),
        "retry_policy": RetryPolicy(base_seconds=0.01, cap_seconds=0.05, deadline_seconds=30),
        "instance": f"test-{uuid.uuid4().hex[:6]}",
    }
    options.update(kw)
    return Dispatcher(pool, {"email": provider, "sms": provider}, **options)  # type: ignore[arg-type]


def _unique_spans() -> list[tuple[int, int, int]]:
    # Partitions numbered past any real topic's, so that tests do not see each other's spans.
    base = 1_000 + uuid.uuid4().int % 1_000_000
    return [(base, 0, 49)]


async def _leave_claims(
    pool: asyncpg.Pool, cid: uuid.UUID, ids: list[int], spans: list[tuple[int, int, int]],
    *, age_seconds: float,
) -> None:
    """What a dispatcher leaves behind when it dies mid-call: claims, no outcomes."""
    async with pool.acquire() as conn:
        await repo.claim(conn, uuid.uuid4(), [(cid, "email", ids)], owner="gone", spans=spans)
        await conn.execute(
            "UPDATE claims SET claimed_at = now() - make_interval(secs => $2) "
            "WHERE campaign_id = $1", cid, age_seconds)


async def test_a_key_claimed_by_a_process_that_died_is_reported_in_doubt_never_sent_again(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    spans = _unique_spans()
    batch = [send_requested(cid, i, f"d{i}@example.org") for i in range(1, 5)]
    await _leave_claims(dispatcher_pool, cid, [1, 2], spans, age_seconds=3600)
    provider = RecordingProvider()
    outcomes = await _dispatcher(dispatcher_pool, provider).dispatch(batch, spans=spans)
    by_id = {o.recipient_id: (o.status, o.reason) for o in outcomes}
    assert by_id == {1: ("failed", "in_doubt"), 2: ("failed", "in_doubt"),
                     3: ("completed", None), 4: ("completed", None)}
    assert sorted(c.to for c in provider.calls) == ["d3@example.org", "d4@example.org"]


async def test_in_doubt_keys_are_sent_again_with_the_same_key_where_chosen(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    spans = _unique_spans()
    req = send_requested(cid, 1, "again@example.org")
    await _leave_claims(dispatcher_pool, cid, [1], spans, age_seconds=3600)
    provider = RecordingProvider()
    d = _dispatcher(dispatcher_pool, provider, resend_in_doubt=True)
    [o] = await d.dispatch([req], spans=spans)
    assert o.status == "completed"
    assert [c.idempotency_key for c in provider.calls] == [str(req.event_id)]


async def test_a_key_another_live_dispatcher_claimed_is_waited_for_and_reported_as_it_ended(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    from services.dispatcher import domain

    cid = await _campaign(dispatcher_pool)
    spans = _unique_spans()
    req = send_requested(cid, 1, "busy@example.org")
    await _leave_claims(dispatcher_pool, cid, [1], spans, age_seconds=0)
    provider = RecordingProvider()
    task = asyncio.create_task(_dispatcher(dispatcher_pool, provider).dispatch([req], spans=spans))
    await asyncio.sleep(0.8)
    assert not task.done()
    elsewhere = domain.sent(req, "sent-elsewhere")
    async with dispatcher_pool.acquire() as conn:
        await repo.record_outcomes(conn, [(req, elsewhere, elsewhere.to_bytes())])
    [o] = await asyncio.wait_for(task, 5)
    assert o.provider_message_id == "sent-elsewhere"
    assert provider.calls == []


class HeldProvider(RecordingProvider):
    """Each call waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.called = asyncio.Event()

    async def send(self, message: OutgoingMessage) -> str:
        self.called.set()
        await self.go.wait()
        return await super().send(message)


async def test_a_batch_taken_over_mid_send_claims_nothing_more_and_no_message_goes_twice(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    """A rebalance moved the partition while its old owner was mid-batch, and the old owner
    kept going: the new owner's attempt fences it. The old one finishes the call it had
    claimed and claims nothing more; the new one waits for that call's outcome and sends the
    rest, once."""
    from services.dispatcher.service import BatchSuperseded

    cid = await _campaign(dispatcher_pool)
    spans = _unique_spans()
    batch = [send_requested(cid, i, f"t{i}@example.org") for i in range(1, 5)]
    old_provider, new_provider = HeldProvider(), RecordingProvider()
    # One call at a time: the old owner claims one message per step.
    old = asyncio.create_task(_dispatcher(dispatcher_pool, old_provider, concurrency=1)
                              .dispatch(batch, spans=spans))
    await asyncio.wait_for(old_provider.called.wait(), 5)
    new = asyncio.create_task(_dispatcher(dispatcher_pool, new_provider).dispatch(
        batch, spans=spans))
    await asyncio.sleep(0.5)  # registered, superseding the old attempt; waiting for key 1
    assert not new.done()
    old_provider.go.set()
    with pytest.raises(BatchSuperseded):
        await asyncio.wait_for(old, 5)
    outcomes = await asyncio.wait_for(new, 10)
    assert [c.to for c in old_provider.calls] == ["t1@example.org"]
    assert sorted(c.to for c in new_provider.calls) == [f"t{i}@example.org" for i in (2, 3, 4)]
    assert {o.recipient_id: o.status for o in outcomes} == {i: "completed" for i in range(1, 5)}


async def test_a_stopping_dispatcher_finishes_its_calls_in_flight_and_leaves_the_rest(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    """SIGTERM mid-batch (`stopping`): the call in flight ends and is recorded, nothing more
    of the batch is claimed, and the batch's next attempt (the partition's next owner) sends
    the rest, each message once. The stop does not wait for the rest of a long batch."""
    from services.dispatcher.service import BatchLeft

    cid = await _campaign(dispatcher_pool)
    spans = _unique_spans()
    batch = [send_requested(cid, i, f"s{i}@example.org") for i in range(1, 5)]
    old_provider, new_provider = HeldProvider(), RecordingProvider()
    old_dispatcher = _dispatcher(dispatcher_pool, old_provider, concurrency=1)
    old = asyncio.create_task(old_dispatcher.dispatch(batch, spans=spans))
    await asyncio.wait_for(old_provider.called.wait(), 5)
    old_dispatcher.stopping = True
    old_provider.go.set()
    with pytest.raises(BatchLeft):
        await asyncio.wait_for(old, 5)
    assert [c.to for c in old_provider.calls] == ["s1@example.org"]
    outcomes = await asyncio.wait_for(
        _dispatcher(dispatcher_pool, new_provider).dispatch(batch, spans=spans), 10)
    assert sorted(c.to for c in new_provider.calls) == [f"s{i}@example.org" for i in (2, 3, 4)]
    assert {o.recipient_id: o.status for o in outcomes} == {i: "completed" for i in range(1, 5)}


async def test_an_outcome_recorded_elsewhere_during_the_call_stays_and_the_step_goes_on(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    """The step's plain insert meets a key recorded meanwhile: the step runs again the careful
    way, the first outcome stays, and the batch's other outcomes are recorded."""
    from services.dispatcher import domain

    cid = await _campaign(dispatcher_pool)
    batch = [send_requested(cid, i, f"e{i}@example.org") for i in (1, 2)]

    class RecordsElsewhere(RecordingProvider):
        async def send(self, message: OutgoingMessage) -> str:
            if message.to == "e1@example.org":
                elsewhere = domain.sent(batch[0], "sent-elsewhere")
                async with dispatcher_pool.acquire() as conn:
                    await repo.record_outcomes(conn, [(batch[0], elsewhere,
                                                       elsewhere.to_bytes())])
            return await super().send(message)

    await _dispatcher(dispatcher_pool, RecordsElsewhere(), concurrency=1).dispatch(batch)
    async with dispatcher_pool.acquire() as conn:
        stored = await repo.recorded_outcomes(conn, [domain.dedupe_key(r) for r in batch])
    assert stored[domain.dedupe_key(batch[0])].provider_message_id == "sent-elsewhere"
    assert stored[domain.dedupe_key(batch[1])].status == "completed"


async def test_an_attempt_superseded_before_its_first_claim_sends_nothing(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    spans = _unique_spans()
    first, later = uuid.uuid4(), uuid.uuid4()
    async with dispatcher_pool.acquire() as conn:
        await repo.ensure_gates(conn, [cid])
        assert await repo.register_batch(conn, first, owner="old", spans=spans) == []
        # Another consumer's attempt at overlapping offsets of the same partition.
        overlapping = [(spans[0][0], spans[0][2], spans[0][2] + 10)]
        assert await repo.register_batch(conn, later, owner="new", spans=overlapping) == [first]
        refused = await repo.step(conn, claims=[(cid, "email", [1, 2])], batch_id=first,
                                  owner="old")
        taken = await repo.step(conn, claims=[(cid, "email", [3])], batch_id=later,
                                owner="new")
        assert refused == repo.Step(set(), True)
        assert taken == repo.Step({cid}, False)
        assert await repo.claims_of(conn, [first]) == {}
        # Attempts at other offsets or partitions are not fenced.
        elsewhere = [(spans[0][0], spans[0][2] + 11, spans[0][2] + 20),
                     (spans[0][0] + 1, spans[0][1], spans[0][2])]
        assert await repo.register_batch(conn, uuid.uuid4(), owner="x", spans=elsewhere) == []


async def test_after_the_abort_gate_closes_no_message_is_claimed_and_claims_before_it_count(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    d = _dispatcher(dispatcher_pool, provider)
    await d.dispatch([send_requested(cid, i, f"g{i}@example.org") for i in (1, 2)])
    await _leave_claims(dispatcher_pool, cid, [3], _unique_spans(), age_seconds=0)  # in flight
    async with dispatcher_pool.acquire() as conn:
        await repo.close_gate(conn, cid)
        assert await repo.sent_or_in_flight(conn, cid) == 3
    # A dispatcher that never heard of the abort (its registry is empty) still sends nothing.
    outcomes = await _dispatcher(dispatcher_pool, provider).dispatch(
        [send_requested(cid, i, f"g{i}@example.org") for i in (4, 5)])
    assert {(o.status, o.reason) for o in outcomes} == {("skipped", "aborted")}
    assert len(provider.calls) == 2
    async with dispatcher_pool.acquire() as conn:
        assert await repo.sent_or_in_flight(conn, cid) == 3  # the aborted skips are not "sent"


async def test_a_message_whose_send_raises_fails_alone(dispatcher_pool: asyncpg.Pool) -> None:
    class Surprising(RecordingProvider):
        async def send(self, message: OutgoingMessage) -> str:
            if message.to == "odd@example.org":
                raise ValueError("a library's surprise")
            return await super().send(message)

    cid = await _campaign(dispatcher_pool)
    outcomes = await _dispatcher(dispatcher_pool, Surprising()).dispatch(
        [send_requested(cid, 1, "odd@example.org"), send_requested(cid, 2, "fine@example.org")])
    by_id = {o.recipient_id: (o.status, o.reason) for o in outcomes}
    assert by_id == {1: ("failed", "send_error: ValueError"), 2: ("completed", None)}


async def test_a_failing_template_fails_its_own_messages_and_no_other_campaign(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    poison = await _campaign(dispatcher_pool, body="{{ 1/0 }}")
    fine = await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    outcomes = await _dispatcher(dispatcher_pool, provider).dispatch(
        [send_requested(poison, 1, "p@example.org"), send_requested(fine, 1, "f@example.org")])
    by_campaign = {o.campaign_id: o for o in outcomes}
    assert by_campaign[poison].status == "failed"
    assert (by_campaign[poison].reason or "").startswith("template_error")
    assert by_campaign[fine].status == "completed"
    assert [c.to for c in provider.calls] == ["f@example.org"]


async def test_a_lost_database_connection_while_recording_is_waited_out_not_resent(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    provider = RecordingProvider()
    d = _dispatcher(dispatcher_pool, provider)
    real = repo.step
    failures = [2]

    async def flaky_write(*args: object, **kw: object) -> set[uuid.UUID]:
        # Both failures hit a step that records outcomes of calls the provider accepted.
        if failures[0] and kw.get("outcomes"):
            failures[0] -= 1
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")
        return await real(*args, **kw)  # type: ignore[arg-type]

    batch = [send_requested(cid, i, f"w{i}@example.org") for i in range(1, 4)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(repo, "step", flaky_write)
        outcomes = await d.dispatch(batch)
    assert failures == [0]
    assert {o.status for o in outcomes} == {"completed"} and len(provider.calls) == 3
    again = await _dispatcher(dispatcher_pool, provider).dispatch(batch)
    assert len(provider.calls) == 3
    assert sorted(o.provider_message_id or "" for o in again) == sorted(
        o.provider_message_id or "" for o in outcomes)


async def test_a_provider_down_trips_the_breaker_messages_wait_and_all_go_once_after(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    class Outage(RecordingProvider):
        down = True
        accepted: dict[str, int]

        async def send(self, message: OutgoingMessage) -> str:
            self.calls.append(message)
            if self.down:
                raise RetryableProviderError("HTTP 503: down")
            self.accepted[message.idempotency_key] = (
                self.accepted.get(message.idempotency_key, 0) + 1)
            return f"id-{len(self.calls)}"

    cid = await _campaign(dispatcher_pool)
    provider = Outage()
    provider.accepted = {}
    breaker = CircuitBreaker(min_calls=5, open_seconds=0.2, max_open_seconds=0.4)
    d = _dispatcher(dispatcher_pool, provider, breakers={"email": breaker, "sms": breaker},
                    concurrency=1)
    batch = [send_requested(cid, i, f"o{i}@example.org") for i in range(1, 41)]
    assert await d.dispatch(batch) == []  # nothing failed: everything waits
    assert breaker.state == "open"
    assert len(provider.calls) < 10  # the breaker stopped the calls, not the batch's end
    # Still down for a while: probes fail, nothing fails for good.
    published: list[object] = []

    async def publish(outcomes: list[tuple[object, bytes]]) -> None:
        published.extend(outcomes)

    until = time.monotonic() + 1.0
    while time.monotonic() < until:
        await d.run_due_retries(publish)
        await asyncio.sleep(0.05)
    assert published == []
    provider.down = False
    outcomes = await settle_retries(d, within=20)
    assert sorted(o.recipient_id for o in outcomes) == list(range(1, 41))
    assert {o.status for o in outcomes} == {"completed"}
    assert max(provider.accepted.values()) == 1


async def test_a_retry_waits_at_least_the_providers_retry_after(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    class Busy(RecordingProvider):
        async def send(self, message: OutgoingMessage) -> str:
            self.calls.append(message)
            if len(self.calls) == 1:
                raise RetryableProviderError("HTTP 429: slow down", retry_after=1.0)
            return "ok"

    cid = await _campaign(dispatcher_pool)
    provider = Busy()
    d = _dispatcher(dispatcher_pool, provider)
    before = time.time()
    assert await d.dispatch([send_requested(cid, 1, "r@example.org")]) == []
    async with dispatcher_pool.acquire() as conn:
        due = await conn.fetchval(
            "SELECT extract(epoch FROM due_at) FROM retries WHERE campaign_id = $1", cid)
    assert float(due) >= before + 1.0
    [o] = await settle_retries(d)
    assert o.status == "completed" and len(provider.calls) == 2


async def test_a_request_carrying_its_campaign_is_sent_before_any_started_event(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    from services.dispatcher import domain
    from shared import wire

    cid = uuid.uuid4()  # no `started` event stored for it
    context = msgspec.convert(started(cid, 1).context().model_dump(), wire.CampaignContext)
    provider = RecordingProvider(flaky={"first@example.org"})
    d = _dispatcher(dispatcher_pool, provider)
    outcomes = await d.dispatch_encoded(
        [send_requested(cid, 1, "first@example.org"), send_requested(cid, 2, "b@example.org")],
        contexts={cid: domain.template_from_context(cid, context)})
    assert [o.recipient_id for o, _ in outcomes] == [2]
    assert provider.calls[0].subject == "Subject for Ada"
    # The retry schedule renders it too, from the context the dispatcher stored, in another
    # process (a dispatcher that never saw the record).
    [o] = await settle_retries(_dispatcher(dispatcher_pool, provider))
    assert (o.recipient_id, o.status) == (1, "completed")


async def test_old_batches_are_forgotten_with_their_spans_and_claims(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    cid = await _campaign(dispatcher_pool)
    old_spans, new_spans = _unique_spans(), _unique_spans()
    old, new = uuid.uuid4(), uuid.uuid4()
    async with dispatcher_pool.acquire() as conn:
        await repo.claim(conn, old, [(cid, "email", [1])], owner="a", spans=old_spans)
        await repo.claim(conn, new, [(cid, "email", [2])], owner="a", spans=new_spans)
        for table, column in (("batches", "created_at"), ("batch_spans", "created_at"),
                              ("claims", "claimed_at")):
            await conn.execute(f"UPDATE {table} SET {column} = now() - interval '8 days' "
                               "WHERE batch_id = $1", old)
        assert await repo.prune_batches(conn, 7 * 86400) >= 1
        assert await repo.claims_of(conn, [old]) == {}
        assert set(await repo.claims_of(conn, [new])) == {(cid, 2, "email")}
        # The old positions are free: a new attempt there finds nothing earlier.
        assert await repo.register_batch(conn, uuid.uuid4(), owner="b", spans=old_spans) == []
        assert await repo.register_batch(conn, uuid.uuid4(), owner="b",
                                         spans=new_spans) == [new]


async def test_an_opt_out_heard_mid_batch_stops_the_messages_not_called_yet(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    from services.dispatcher.service import OptOutRegistry

    cid = await _campaign(dispatcher_pool)
    async with dispatcher_pool.acquire() as conn:
        org = (await repo.load_templates(conn, [cid]))[cid].organisation_id
    opt_outs = OptOutRegistry()

    class OptsOutTheNext(RecordingProvider):
        async def send(self, message: OutgoingMessage) -> str:
            opt_outs.add({(org, "o2@example.org")})  # heard while this call is under way
            return await super().send(message)

    provider = OptsOutTheNext()
    outcomes = await _dispatcher(dispatcher_pool, provider, concurrency=1,
                                 opt_outs=opt_outs).dispatch(
        [send_requested(cid, i, f"o{i}@example.org") for i in (1, 2)])
    assert [c.to for c in provider.calls] == ["o1@example.org"]
    assert {o.recipient_id: (o.status, o.reason) for o in outcomes} == {
        1: ("completed", None), 2: ("skipped", "opted_out")}


async def test_after_an_outage_of_instant_refusals_slow_calls_still_go_side_by_side(
    dispatcher_pool: asyncpg.Pool,
) -> None:
    """Refusals answer at once; were they taken for the provider's speed, a worker would take
    many calls in a row afterwards and one slow call would wait behind another."""
    cid = await _campaign(dispatcher_pool)

    class DownThenSlow(RecordingProvider):
        down = True

        async def send(self, message: OutgoingMessage) -> str:
            if self.down:
                raise RetryableProviderError("connection refused")
            await asyncio.sleep(0.1)
            return await super().send(message)

    provider = DownThenSlow()
    d = _dispatcher(dispatcher_pool, provider, concurrency=10,
                    breakers={"email": CircuitBreaker(min_calls=10_000)})
    await d.dispatch([send_requested(cid, i, f"s{i}@example.org") for i in range(1, 51)])
    provider.down = False
    started = time.monotonic()
    outcomes = await d.dispatch(
        [send_requested(cid, i, f"s{i}@example.org") for i in range(100, 140)])
    took = time.monotonic() - started
    assert {o.status for o in outcomes} == {"completed"}
    # 40 calls of 0.1 s, 10 at a time: about 0.4 s; one after another they take 4 s.
    assert took < 2.5, took
