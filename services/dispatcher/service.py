"""Dispatching send requests, one message's trouble its own (services/dispatcher/reliability.py
has the rules): keys seen before are re-reported or waited for, never sent twice; each
message's provider call is claimed before it starts and its outcome recorded as calls complete,
in small groups; a retryable failure goes on the retry schedule; an exception while preparing
or sending one message is that message's outcome. No connection is held across a provider
call."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

import asyncpg
import msgspec

from services.dispatcher import domain, repo
from services.dispatcher.domain import CampaignTemplate, Outcome, Request
from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    Provider,
    RetryableProviderError,
    failover,
)
from services.dispatcher.reliability import (
    CircuitBreaker,
    KeyAction,
    KeyState,
    RetryPolicy,
    decide,
)
from shared import wire
from shared.events import Channel
from shared.kafka import is_transient
from shared.reasons import FailReason, SkipReason

log = logging.getLogger(__name__)
T = TypeVar("T")
Publish = Callable[[list[tuple[Outcome, bytes]]], Coroutine[Any, Any, None]]


class RateLimiter:
    """Token bucket shared by every send of this process (`rate` per second, 0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._rate <= 0:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._rate, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class Registry(Generic[T]):
    """What this process knows to stop for (aborted campaigns, opted-out addresses);
    consulted before every provider call."""

    def __init__(self) -> None:
        self._items: set[T] = set()
        # Changes with every item added: a batch checked against the registry need not check
        # again before each call while it is unchanged.
        self.version = 0

    def add(self, items: AbstractSet[T]) -> None:
        if not items <= self._items:
            self._items |= items
            self.version += 1

    def __contains__(self, item: object) -> bool:
        return item in self._items


AbortRegistry = Registry[uuid.UUID]


class OptOutRegistry(Registry[tuple[uuid.UUID | None, str]]):
    """Opted-out (organisation, address) pairs, also indexed by organisation: a batch looks
    its organisation up once and each message's address in that set."""

    def __init__(self) -> None:
        super().__init__()
        self._by_organisation: dict[uuid.UUID | None, set[str]] = {}

    def add(self, items: AbstractSet[tuple[uuid.UUID | None, str]]) -> None:
        super().add(items)
        for organisation_id, address in items:
            self._by_organisation.setdefault(organisation_id, set()).add(address)

    def addresses(self, organisation_id: uuid.UUID | None) -> set[str] | frozenset[str]:
        return self._by_organisation.get(organisation_id, _NOTHING)


_NOTHING: frozenset[str] = frozenset()
# A request's dedupe key and its campaign, as plain values: a UUID's hash is computed in
# Python on every lookup, its 128-bit integer's in C.
_KEY_OF = operator.attrgetter("campaign_id.int", "recipient_id", "channel")
_CAMPAIGN_OF = operator.attrgetter("campaign_id.int")


def _call_campaign(call: tuple[Request, OutgoingMessage]) -> int:
    return call[0].campaign_id.int


def by_campaign(requests: Sequence[Request]) -> list[tuple[uuid.UUID, list[Request]]]:
    """The requests by campaign, in order of first appearance (a batch's requests come in
    runs of one campaign: one lookup per run, not per request)."""
    groups: dict[int, tuple[uuid.UUID, list[Request]]] = {}
    for key, run in itertools.groupby(requests, _CAMPAIGN_OF):
        items = list(run)
        group = groups.get(key)
        if group is None:
            groups[key] = (items[0].campaign_id, items)
        else:
            group[1].extend(items)
    return list(groups.values())



class Renderer(Protocol):
    """Renders one template for many recipients; each item's result is its text or its error
    (services/dispatcher/rendering.py runs untrusted templates with time and size limits)."""

    async def render_many(
        self, template: str, variables: Sequence[Mapping[str, Any]]
    ) -> Sequence[str | Exception]: ...


class InlineRenderer:
    """Renders in the calling coroutine: for tests of the outcome logic."""

    async def render_many(
        self, template: str, variables: Sequence[Mapping[str, Any]]
    ) -> list[str | Exception]:
        results: list[str | Exception] = []
        for v in variables:
            try:
                results.append(domain.render(template, v))
            except Exception as exc:
                results.append(exc)
        return results


@dataclass(frozen=True)
class Retry:
    """A message to try again at `due` (Unix seconds): its call failed retryably
    (`attempts` calls so far), or its provider's breaker was open, or its campaign's
    template was not known yet."""

    request: Request
    attempts: int
    first_at: float
    due: float
    reason: str


Result = Outcome | Retry


@dataclass(frozen=True)
class _Step:
    """A worker's turn: record the results of its last calls, and claim its next messages."""

    done: list[tuple[Request, Result]]
    claim: list[Request]
Spans = Sequence[tuple[int, int, int]]  # (partition, first offset, last offset)
_WALL = time.time


class GroupCommit(Generic[T]):
    """Items submitted while a write is in progress go together in the next one: a database
    round trip per group of messages, however many workers submit."""

    def __init__(self, write: Callable[[list[T]], Awaitable[Any]]) -> None:
        self._write = write
        self._pending: list[tuple[T, asyncio.Future[Any] | None]] = []
        self._runner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, item: T) -> None:
        """Queue an item, not waiting for its write."""
        self._pending.append((item, None))
        self._kick()

    async def submit(self, item: T) -> Any:
        """Queue an item and wait for its write's answer for it."""
        loop = self._loop
        if loop is None:  # asking for the running loop costs a system call (getpid) each time
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        self._kick()
        return await future

    async def drain(self) -> None:
        while self._runner is not None:
            await asyncio.shield(self._runner)
        if self._failure is not None:
            raise self._failure

    def _kick(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())

    # complexity: the group-commit loop: each waiter's answer or error set inline
    async def _run(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    answer = await self._write([item for item, _ in group])
                except Exception as exc:
                    self._failure = exc
                    for _, future in group:
                        if future is not None and not future.done():
                            future.set_exception(exc)
                    continue
                for item, future in group:
                    if future is not None and not future.done():
                        future.set_result(answer(item) if callable(answer) else answer)
        finally:
            self._runner = None


class Records(Protocol):
    """Where a batch's decisions are recorded: a Recorder, or a plain collection of them."""

    def add(self, req: Request, result: Result) -> None: ...


class Recorder:
    """A batch's results, written in groups as they come (outcomes to `deliveries`, retries to
    the schedule). Outcomes written are published while the batch runs (progress moves), in
    records of `publish_at` outcomes, or fewer once the oldest unpublished one has waited
    `publish_after` seconds: a consumer of outcomes pays per record and per poll, so records
    of a few hundred cost it half as much per outcome as records of a step's few dozen.
    `drain` waits for every write and every publish, which must all be done before the
    batch's offsets commit."""

    def __init__(
        self,
        write: Callable[[list[tuple[Request, Result]]], Awaitable[list[tuple[Outcome, bytes]]]],
        publish: Publish | None,
        *,
        publish_at: int = 500,
        publish_after: float = 0.05,
    ) -> None:
        self._publish = publish
        self._publish_at = publish_at
        self._publish_after = publish_after
        self._commit: GroupCommit[tuple[Request, Result]] = GroupCommit(
            _reporting_to(weakref.ref(self), write))
        self._publishing: list[asyncio.Task[None]] = []
        self._unpublished: list[tuple[Outcome, bytes]] = []
        self._flush: asyncio.TimerHandle | None = None
        self.outcomes: list[tuple[Outcome, bytes]] = []

    def add(self, req: Request, result: Result) -> None:
        self._commit.add((req, result))

    def written(self, outcomes: list[tuple[Outcome, bytes]]) -> None:
        """Outcomes now recorded: kept, and on their way to Kafka."""
        self.outcomes.extend(outcomes)
        if self._publish is None or not outcomes:
            return
        self._unpublished.extend(outcomes)
        if len(self._unpublished) >= self._publish_at:
            self._publish_now()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(
                self._publish_after, self._publish_now)

    def _publish_now(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._unpublished and self._publish is not None:
            outcomes, self._unpublished = self._unpublished, []
            self._publishing.append(asyncio.create_task(self._publish(outcomes)))

    async def drain(self) -> None:
        await self._commit.drain()
        self._publish_now()
        while self._publishing:
            tasks, self._publishing = self._publishing, []
            await asyncio.gather(*tasks)



def _reporting_to(
    recorder: weakref.ref[Recorder],
    write: Callable[[list[tuple[Request, Result]]], Awaitable[list[tuple[Outcome, bytes]]]],
) -> Callable[[list[tuple[Request, Result]]], Awaitable[None]]:
    """A recorder's group write, which hands what it wrote to the recorder. It must not hold
    the recorder itself: a bound method would make a cycle (recorder → group commit → method →
    recorder), and every batch's outcomes would stay in memory until the cyclic garbage
    collector found them — at full speed, a collection every second or so walking 120,000
    young objects and freeing 20,000 (80 to 100 ms each: a tenth of the dispatcher's CPU)."""

    async def write_group(group: list[tuple[Request, Result]]) -> None:
        written = await write(group)
        owner = recorder()
        if owner is not None:
            owner.written(written)

    return write_group


_REQUEST = msgspec.json.Decoder(wire.SendRequested)


class BatchSuperseded(Exception):
    """A later attempt at the batch's records (another consumer, after a rebalance) took it
    over; this attempt's outcomes so far are recorded and published, the rest is not its."""


class BatchLeft(Exception):
    """The process is stopping: the batch's calls in flight finished and were recorded, and
    nothing more of it was claimed. Its records must be redelivered (no offset committed), so
    that their next owner sends the rest once (it finds these claims and outcomes)."""


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        providers: dict[Channel, Provider],
        *,
        aborts: AbortRegistry,
        opt_outs: OptOutRegistry | None = None,
        concurrency: int,
        rate_limiter: RateLimiter,
        instance: str = "dispatcher",
        retry_policy: RetryPolicy | None = None,
        breakers: dict[Channel, CircuitBreaker] | None = None,
        renderer: Renderer | None = None,
        claim_lease_seconds: float = 15.0,
        resend_in_doubt: bool = False,
        publish_at: int = 500,
        publish_after: float = 0.05,
    ) -> None:
        self._pool = pool
        self._publish_at = publish_at
        self._publish_after = publish_after
        self._providers = providers
        self._aborts = aborts
        self._opt_outs = opt_outs if opt_outs is not None else OptOutRegistry()
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._limiter = rate_limiter
        self._instance = instance
        self._policy = retry_policy or RetryPolicy()
        # One breaker per provider: a provider serving both channels is one provider's health.
        by_provider: dict[int, CircuitBreaker] = {}
        self.breakers: dict[str, CircuitBreaker] = {
            channel: (breakers or {}).get(channel)
            or by_provider.setdefault(id(provider), CircuitBreaker())
            for channel, provider in providers.items()
        }
        self._renderer: Renderer = renderer or InlineRenderer()
        self._lease = claim_lease_seconds
        self._resend_in_doubt = resend_in_doubt
        self._templates: dict[uuid.UUID, CampaignTemplate] = {}
        self._taking = asyncio.Lock()
        self._gates: set[uuid.UUID] = set()
        # Moving averages of a provider call's and of a step write's duration.
        self._call_seconds = 0.0
        self._step_seconds = 0.002
        # Set on shutdown: the retry schedule ends its round and takes no more.
        self.stopping = False

    def knows(self, campaign_id: uuid.UUID) -> bool:
        return campaign_id in self._templates

    @property
    def lease_seconds(self) -> float:
        return self._lease

    @property
    def instance(self) -> str:
        return self._instance

    # --- a batch of send requests ---------------------------------------------------------

    async def dispatch(self, requests: Sequence[Request], *, spans: Spans = ()) -> list[Outcome]:
        """Outcomes reported for the batch (re-reported if settled before)."""
        return [o for o, _ in await self.dispatch_encoded(requests, spans=spans)]

    async def dispatch_encoded(
        self,
        requests: Sequence[Request],
        publish: Publish | None = None,
        *,
        spans: Spans = (),
        contexts: Mapping[uuid.UUID, CampaignTemplate] | None = None,
    ) -> list[tuple[Outcome, bytes]]:
        """`dispatch`, each outcome with its JSON (the bytes recorded are the bytes published).

        Every request ends in exactly one of: an outcome recorded and reported; a place on the
        retry schedule (reported when it settles); or — a key claimed by a live owner — the
        wait for that owner's outcome. All is recorded before this returns, so the batch's
        offsets may commit; redelivered, the batch re-reports and sends nothing again.
        `spans`: the Kafka positions the requests came from (a redelivered batch finds its
        earlier claims by them).
        """
        unique = list({_KEY_OF(r): r for r in requests}.values())
        if contexts:
            await self._learn(contexts)
        batch_id = uuid.uuid4()
        reports, fresh, in_doubt = await self._sort_out(unique, spans, batch_id)
        recorder = Recorder(self._write, publish, publish_at=self._publish_at,
                            publish_after=self._publish_after)
        recorder.written([(o, o.to_bytes()) for o in reports])  # reported again, as recorded
        for req in in_doubt:
            recorder.add(req, domain.failed(req, FailReason.IN_DOUBT.value))
        checked = self._stops_version()  # every message is checked while preparing
        calls = await self._prepare_all(fresh, recorder)
        stop = await self._call_all(calls, recorder, batch_id=batch_id, checked=checked)
        if stop == "superseded":
            raise BatchSuperseded(
                "a later attempt at these records took them over: what this one had not "
                "claimed is that attempt's to send")
        if stop == "left":
            raise BatchLeft(
                "stopping: the calls in flight are recorded, the rest of the batch is left to "
                "the partition's next owner")
        return recorder.outcomes

    # complexity: a batch's dedupe decision per key, inline per request (docs/benchmarks.md)
    async def _sort_out(  # noqa: C901
        self, unique: list[Request], spans: Spans, batch_id: uuid.UUID
    ) -> tuple[list[Outcome], list[Request], list[Request]]:
        """Register the attempt (superseding earlier attempts at the same Kafka positions),
        then: (outcomes to report again, requests to send, requests in doubt). Keys claimed
        by a live owner are waited for; keys on the retry schedule are left to it."""
        reports: list[Outcome] = []
        fresh: list[Request] = []
        in_doubt: list[Request] = []
        pending = unique
        waited = 0.0
        earlier: list[uuid.UUID] | None = None
        while True:
            async with self._pool.acquire() as conn:
                if earlier is None:
                    earlier = await repo.register_batch(conn, batch_id, owner=self._instance,
                                                        spans=spans)
                settled, scheduled = await repo.seen_before(conn, pending)
                claimed = await repo.claims_of(conn, earlier)
            if not (settled or scheduled or claimed):  # the common case: nothing seen before
                return reports, fresh + pending, in_doubt
            waiting: list[Request] = []
            for req in pending:
                key = domain.dedupe_key(req)
                action = decide(
                    KeyState(settled=key in settled, claim_age_seconds=claimed.get(key),
                             scheduled=key in scheduled),
                    lease_seconds=self._lease, resend_in_doubt=self._resend_in_doubt,
                )
                if action is KeyAction.REPORT:
                    reports.append(settled[key])
                elif action in (KeyAction.SEND, KeyAction.RESEND):
                    fresh.append(req)
                elif action is KeyAction.WAIT:
                    waiting.append(req)
                elif action is KeyAction.IN_DOUBT:
                    in_doubt.append(req)
            if not waiting:
                return reports, fresh, in_doubt
            # Another consumer is still at these (a rebalance moved the partition while it was
            # mid-batch): its outcomes are coming, or its claims go stale if it died.
            if waited > self._lease * 4:
                raise TimeoutError(f"{len(waiting)} keys claimed elsewhere stay unsettled")
            log.info("waiting for keys another dispatcher claimed",
                     extra={"keys": len(waiting)})
            await asyncio.sleep(0.5)
            waited += 0.5
            pending = waiting

    # --- preparing: everything that can be decided without the provider ------------------

    # complexity: the per-message preparation loop, inline for speed (docs/benchmarks.md)
    async def _prepare_all(
        self, requests: list[Request], recorder: Records
    ) -> list[tuple[Request, OutgoingMessage]]:
        """The messages to send; what is decided without the provider goes to the recorder.
        Templates are rendered per (campaign, channel) in one call of the renderer; a template
        that fails fails its own messages only."""
        groups = by_campaign(requests)
        unknown = await self._ensure_templates({c for c, _ in groups})
        to_render: dict[tuple[uuid.UUID, Channel], list[Request]] = {}
        for campaign_id, reqs in groups:
            self._settle_early(campaign_id, reqs, unknown, recorder, to_render)
        calls: list[tuple[Request, OutgoingMessage]] = []
        for (campaign_id, channel), reqs in to_render.items():
            campaign = self._templates[campaign_id]
            template = campaign.templates.get(channel)
            if template is None:
                for req in reqs:
                    recorder.add(req, domain.failed(
                        req, f"{FailReason.TEMPLATE_ERROR.value}: no {channel} template"))
                continue
            variables = [req.variables for req in reqs]
            bodies = await self._renderer.render_many(template.body, variables)
            subjects: Sequence[str | Exception | None] = (
                await self._renderer.render_many(template.subject, variables)
                if template.subject else [None] * len(reqs)
            )
            sender = campaign.sender_address(channel)
            for req, body, subject in zip(reqs, bodies, subjects, strict=True):
                if isinstance(body, Exception) or isinstance(subject, Exception):
                    problem = body if isinstance(body, Exception) else subject
                    recorder.add(req, domain.failed(req, _template_reason(problem)))
                    continue
                calls.append((req, OutgoingMessage(
                    req.channel, req.address or "", sender, subject, body, req.event_id)))
        return calls

    # complexity: per-message decisions made before the provider, inline per request
    def _settle_early(
        self,
        campaign_id: uuid.UUID,
        reqs: list[Request],
        unknown: set[uuid.UUID],
        recorder: Records,
        to_render: dict[tuple[uuid.UUID, Channel], list[Request]],
    ) -> None:
        """One campaign's requests: what is decided without the provider goes to the recorder
        (aborted, no address, opted out, campaign not known yet), the rest to `to_render`."""
        if campaign_id in self._aborts:
            for req in reqs:
                recorder.add(req, domain.skipped(req, SkipReason.ABORTED))
            return
        if campaign_id in unknown:
            opted_out: set[str] | frozenset[str] = _NOTHING
        else:
            opted_out = self._opt_outs.addresses(self._templates[campaign_id].organisation_id)
        by_channel: dict[Channel, list[Request]] = {}
        for req in reqs:
            address = req.address
            if not address:
                recorder.add(req, domain.skipped(
                    req, req.skip_reason or SkipReason.MISSING_ADDRESS))
            elif campaign_id in unknown:
                # Its campaign's context has not reached this dispatcher (a request of an
                # older producer that overtook its `started` event): scheduled, not the
                # batch's failure.
                now = _WALL()
                recorder.add(req, Retry(req, 0, now, now + 1.0 + random.random(),
                                        "campaign not known yet"))
            elif address in opted_out:
                recorder.add(req, domain.skipped(req, SkipReason.OPTED_OUT))
            else:
                group = by_channel.get(req.channel)
                if group is None:
                    by_channel[req.channel] = [req]
                else:
                    group.append(req)
        for channel, group in by_channel.items():
            to_render.setdefault((campaign_id, channel), []).extend(group)

    async def _ensure_templates(self, campaign_ids: set[uuid.UUID]) -> set[uuid.UUID]:
        """Load the campaigns this process has not seen yet; those still unknown."""
        missing = [c for c in campaign_ids if c not in self._templates]
        if not missing:
            return set()
        async with self._pool.acquire() as conn:
            self._templates.update(await repo.load_templates(conn, missing))
        return {c for c in missing if c not in self._templates}

    async def _learn(self, contexts: Mapping[uuid.UUID, CampaignTemplate]) -> None:
        """Campaign contexts carried by send requests: kept, and stored for the retry schedule
        (which renders without the records)."""
        new = {c: t for c, t in contexts.items() if c not in self._templates}
        if not new:
            return
        async with self._pool.acquire() as conn:
            for template in new.values():
                await repo.save_campaign_template(conn, template)
        self._templates.update(new)

    # --- provider calls -------------------------------------------------------------------

    # complexity: the provider-call loop; its per-message worker is counted in it
    async def _call_all(  # noqa: C901
        self,
        calls: Sequence[tuple[Request, OutgoingMessage]],
        recorder: Recorder,
        *,
        batch_id: uuid.UUID,
        checked: tuple[int, int] = (-1, -1),
    ) -> Literal["superseded", "left"] | None:
        """Each message claimed before its provider call, and its result recorded before its
        worker moves on: a worker's step writes its last calls' results and claims its next
        messages, in one transaction shared with every other worker's step waiting at that
        moment. A worker holds one call slot per message it has claimed and not recorded, so
        those messages — all a crash can leave in doubt — are at most the process's
        concurrency. A worker takes one message per step where calls take longer than a step's
        write, more where they are faster (a no-op provider: up to 64), so that waiting on the
        database is not paid per message.

        "superseded" if a later attempt at the batch superseded this one: its claims were
        refused from then on, and the messages not claimed were left alone (no call, no
        outcome). "left" if the process began stopping (`stopping`) with messages not yet
        claimed: those are left alone the same way, so a stop waits for the calls in flight
        only, never for the rest of a long batch."""
        superseded = left = False
        if calls:
            campaigns = {next(run)[0].campaign_id
                         for _, run in itertools.groupby(calls, _call_campaign)}
            await self._open_gates(campaigns)
            per_step = self._messages_per_step()
            workers = min(-(-len(calls) // per_step), max(1, self._concurrency // per_step))
            steps: GroupCommit[_Step] = GroupCommit(self._step_writer(batch_id, recorder))
            queue = iter(calls)

            # complexity: the per-message provider call, outcomes inline (docs/benchmarks.md)
            async def worker() -> None:  # noqa: C901
                nonlocal superseded, left
                async with self._units(per_step):
                    done: list[tuple[Request, Result]] = []
                    while not superseded and (chunk := list(itertools.islice(queue, per_step))):
                        if self.stopping:
                            left = True  # this chunk and the rest: never claimed here
                            break
                        ready: list[tuple[Request, OutgoingMessage]] = []
                        first_at = _WALL()
                        if self._stops_version() == checked:  # nothing to stop for since
                            ready = chunk
                        else:
                            for req, message in chunk:
                                early = self._precheck(req)
                                if early is None:
                                    ready.append((req, message))
                                else:
                                    recorder.add(req, early)  # no call: nothing waits on it
                        if not ready:
                            continue
                        try:
                            step = await steps.submit(_Step(done, [req for req, _ in ready]))
                        except BaseException:
                            for req, result in done:  # called: their results must be kept
                                recorder.add(req, result)
                            raise
                        done = []
                        if step.superseded:  # the batch's later attempt sends the rest
                            superseded = True
                            break
                        # Aborts known when the claims were taken (the gate saw those too).
                        aborts_seen = self._aborts.version
                        every_campaign = len(step.taken) >= len(campaigns)
                        for req, message in ready:
                            if every_campaign or req.campaign_id in step.taken:
                                done.append((req, await self._call(
                                    req, message, attempts=0, first_at=first_at,
                                    aborts_seen=aborts_seen)))
                            else:  # its campaign was aborted: the gate refused the claim
                                recorder.add(req, domain.skipped(req, SkipReason.ABORTED))
                    if done:
                        await steps.submit(_Step(done, []))

            heartbeat = asyncio.create_task(self._keep_fresh(batch_id))
            try:
                results = await asyncio.gather(*(worker() for _ in range(workers)),
                                               return_exceptions=True)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            # If a claim could not be written, its messages were not sent; what was sent is
            # recorded before the error fails the batch.
            await recorder.drain()
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        await recorder.drain()
        return "superseded" if superseded else "left" if left else None

    def _note_call(self, took: float) -> None:
        """A provider call's duration, into the estimate that sizes workers' turns: calls the
        provider accepted only (a refusal or a paused breaker answers at once, and an outage of
        such answers must not make a worker take 64 slow calls in a row afterwards); a slower
        call is taken at once, a faster one gradually."""
        if took >= self._call_seconds:
            self._call_seconds = took
        else:
            self._call_seconds += (took - self._call_seconds) * 0.1

    async def _open_gates(self, campaign_ids: set[uuid.UUID]) -> None:
        new = [c for c in campaign_ids if c not in self._gates]
        if new:
            async with self._pool.acquire() as conn:
                await repo.ensure_gates(conn, new)
            self._gates.update(new)

    def _messages_per_step(self) -> int:
        """A worker's k calls of a step go one after another: with calls of c seconds and a
        step's write of s, the process sends concurrency / (s + k·c) messages a second, at
        most 10% less than with k = 1 while k·c ≤ s/10 — and each message costs k times less
        waiting (CPU) in the event loop. Providers slower than that get k = 1."""
        if self._call_seconds <= 0:
            return 1
        k = int(0.1 * self._step_seconds / self._call_seconds)
        return max(1, min(64, self._concurrency, k))

    @contextlib.asynccontextmanager
    async def _units(self, n: int) -> AsyncIterator[None]:
        """`n` of the process's call slots, taken together (one taker at a time, so that two
        workers never each hold part of what they wait for)."""
        async with self._taking:
            for _ in range(n):
                await self._slots.acquire()
        try:
            yield
        finally:
            for _ in range(n):
                self._slots.release()

    def _step_writer(
        self, batch_id: uuid.UUID, recorder: Recorder
    ) -> Callable[[list[_Step]], Awaitable[repo.Step]]:
        # complexity: a step's rows built inline per outcome, one statement per step
        async def write(steps: list[_Step]) -> repo.Step:
            results = [d for s in steps for d in s.done]
            outcomes = [(req, r, r.to_bytes()) for req, r in results if not isinstance(r, Retry)]
            retries = [_retry_row(r) for _, r in results if isinstance(r, Retry)]
            groups: dict[tuple[int, str], tuple[uuid.UUID, str, list[int]]] = {}
            for s in steps:
                for req in s.claim:
                    group = groups.get((req.campaign_id.int, req.channel))
                    if group is None:
                        group = groups[req.campaign_id.int, req.channel] = (
                            req.campaign_id, req.channel, [])
                    group[2].append(req.recipient_id)
            result: list[repo.Step] = []

            async def step() -> None:
                async with self._pool.acquire() as conn:
                    result.append(await repo.step(
                        conn, outcomes=outcomes, retries=retries,
                        claims=list(groups.values()),
                        batch_id=batch_id, owner=self._instance))

            started = time.monotonic()
            await self._retrying(step)
            self._step_seconds += (time.monotonic() - started - self._step_seconds) * 0.1
            recorder.written([(r, data) for _, r, data in outcomes])
            return result[-1]

        return write

    def _stops_version(self) -> tuple[int, int]:
        return self._aborts.version, self._opt_outs.version

    def _precheck(self, req: Request) -> Result | None:
        """The last checks before a message is claimed: its outcome if it is not to be sent
        now, else None."""
        if req.campaign_id in self._aborts:
            return domain.skipped(req, SkipReason.ABORTED)
        if (self._templates[req.campaign_id].organisation_id, req.address) in self._opt_outs:
            return domain.skipped(req, SkipReason.OPTED_OUT)
        return None

    async def _call(
        self, req: Request, message: OutgoingMessage, *, attempts: int, first_at: float,
        aborts_seen: int = -1,
    ) -> Result:
        """One message's provider call (claimed, checked); the caller holds its call slot. No
        call while the provider's breaker is open: the message waits on the retry schedule
        (claimed first, so that a takeover of its batch waits for it, then leaves it to the
        schedule). `aborts_seen`: the abort registry's version when the message was claimed
        (no need to look its campaign up again while no abort came since)."""
        breaker = self.breakers[req.channel]
        due: float | None
        if not breaker.allow():
            due = _WALL() + max(breaker.reopen_at - time.monotonic(), 0.0) + random.random()
            reason = "provider paused: circuit open"
            if message.pinned_to:  # still in doubt with that provider: it keeps the mark
                reason = failover.mark(message.pinned_to, reason)
            return Retry(req, attempts, first_at, due, reason)
        await self._limiter.acquire()
        # The last moment to honour an abort.
        if self._aborts.version != aborts_seen and req.campaign_id in self._aborts:
            breaker.cancel_probe()
            return domain.skipped(req, SkipReason.ABORTED)
        started = time.monotonic()
        try:
            provider_id = await self._providers[req.channel].send(message)
        except PermanentProviderError as exc:
            breaker.record(True)
            return domain.failed(req, str(exc))
        except RetryableProviderError as exc:
            breaker.record(False)
            due = self._policy.next_due(attempts + 1, first_at=first_at, now=_WALL(),
                                        retry_after=exc.retry_after)
            if due is None:
                return domain.failed(req, f"gave up after {attempts + 1} attempts: {exc}")
            return Retry(req, attempts + 1, first_at, due, str(exc)[:500])
        except Exception as exc:  # a bug or a library's surprise: this message's failure only
            breaker.cancel_probe()
            log.exception("provider call raised", extra={"campaign_id": str(req.campaign_id)})
            return domain.failed(req, f"{FailReason.SEND_ERROR.value}: {type(exc).__name__}")
        self._note_call(time.monotonic() - started)
        breaker.record(True)
        return domain.sent(req, provider_id)

    async def _keep_fresh(self, batch_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                async with self._pool.acquire() as conn:
                    await repo.refresh_claims(conn, batch_id)
            except Exception:
                log.warning("could not refresh claims", exc_info=True)

    async def _write(self, group: list[tuple[Request, Result]]) -> list[tuple[Outcome, bytes]]:
        """Write a group of results: outcomes to `deliveries`, retries to the schedule, in one
        transaction. Returns the outcomes written, with their JSON."""
        outcomes = [(req, r, r.to_bytes()) for req, r in group if not isinstance(r, Retry)]
        retries = [_retry_row(r) for _, r in group if isinstance(r, Retry)]
        await self._retrying(self._write_group, outcomes, retries)
        return [(r, data) for _, r, data in outcomes]

    async def _write_group(
        self, outcomes: Sequence[tuple[Request, Outcome, bytes]], retries: Sequence[Any]
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if outcomes:
                await repo.record_outcomes(conn, outcomes)
            await repo.schedule_retries(conn, retries)

    async def prune_forever(
        self, retention_seconds: float, *, every_seconds: float = 3600.0
    ) -> None:
        """Forget old batches' registrations, spans and claims, once an interval."""
        while True:
            try:
                async with self._pool.acquire() as conn:
                    pruned = await repo.prune_batches(conn, retention_seconds)
                if pruned:
                    log.info("forgot old batches", extra={"batches": pruned})
            except Exception:
                log.warning("could not prune old batches", exc_info=True)
            await asyncio.sleep(every_seconds)

    # --- the retry schedule ---------------------------------------------------------------

    async def retry_forever(self, publish: Publish, *, idle_seconds: float = 0.5) -> None:
        """Settle due retries as long as the process runs (one round at a time)."""
        while not self.stopping:
            try:
                taken = await self.run_due_retries(publish)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retry round failed; trying again")
                taken = 0
            if not taken and not self.stopping:
                await asyncio.sleep(idle_seconds)

    # complexity: one round of due retries (claim, settle, record, publish), one pass
    async def run_due_retries(self, publish: Publish, *, limit: int = 1000) -> int:
        """One round: claim the due messages of providers whose breaker lets calls go (and
        those an owner left mid-call or unpublished), settle them, publish their outcomes.
        How many were taken."""
        now = time.monotonic()
        channels = [ch for ch, b in self.breakers.items() if b.state == "closed"
                    or now >= b.reopen_at]
        if not channels:
            return 0
        async with self._pool.acquire() as conn:
            rows = await repo.take_due(conn, owner=self._instance, limit=limit,
                                       lease_seconds=self._lease, channels=channels)
        if not rows:
            return 0
        keys = [(r["campaign_id"], r["recipient_id"], r["channel"]) for r in rows]
        heartbeat = asyncio.create_task(self._keep_retries_fresh(keys))
        try:
            results = await self._settle_due(rows)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        outcomes = [(req, r, r.to_bytes()) for req, r in results if not isinstance(r, Retry)]
        retries = [_retry_row(r) for _, r in results if isinstance(r, Retry)]
        rescheduled = {domain.dedupe_key(r.request) for _, r in results if isinstance(r, Retry)}
        settled_keys = [k for k in keys if k not in rescheduled]
        await self._retrying(self._write_retries, outcomes, retries)
        if settled_keys:
            async with self._pool.acquire() as conn:
                recorded = await repo.recorded_outcomes(conn, settled_keys)
            # What is recorded is what is reported (the first outcome recorded for a key).
            await publish([(o, o.to_bytes()) for o in recorded.values()])
            async with self._pool.acquire() as conn:
                await repo.forget_retries(conn, list(recorded))
        return len(rows)

    # complexity: the per-message retry loop and its worker, outcomes handled inline
    async def _settle_due(self, rows: Sequence[asyncpg.Record]) -> list[tuple[Request, Result]]:  # noqa: C901
        results: list[tuple[Request, Result]] = []
        recorder_items: list[tuple[Request, Result]] = []
        fresh: list[Request] = []
        progress: dict[tuple[uuid.UUID, int, str], tuple[int, float]] = {}
        pins: dict[tuple[uuid.UUID, int, str], str] = {}
        keys = [(r["campaign_id"], r["recipient_id"], r["channel"]) for r in rows]
        async with self._pool.acquire() as conn:
            recorded = await repo.recorded_outcomes(conn, keys)
            closed = await repo.aborted_gates_of(conn, list({k[0] for k in keys}))
        self._aborts.add(closed)
        for row, key in zip(rows, keys, strict=True):
            if row["was"] == "settled" or key in recorded:
                continue  # recorded already: reported from the record
            req: Request = _REQUEST.decode(row["request"])
            if row["was"] == "sending" and not self._resend_in_doubt:
                # Its owner stopped mid-call: the call may have reached the provider.
                results.append((req, domain.failed(req, FailReason.IN_DOUBT.value)))
                continue
            fresh.append(req)
            progress[key] = (row["attempts"], row["first_at"])
            # Left in doubt with one provider of a failover chain: its retries go there only.
            pin = failover.pinned_to(row["last_reason"])
            if pin:
                pins[key] = pin

        class _Collect:
            def add(self, req: Request, result: Result) -> None:
                recorder_items.append((req, result))

        calls = await self._prepare_all(fresh, _Collect())
        for req, result in recorder_items:
            if isinstance(result, Retry):  # still not known: keep its first attempt time
                key = domain.dedupe_key(req)
                attempts, first_at = progress[key]
                reason = result.reason
                if key in pins:
                    reason = failover.mark(pins[key], reason)
                result = self._reschedule(req, attempts, first_at, reason)
            results.append((req, result))
        queue = iter(calls)

        async def worker() -> None:
            async with self._slots:
                for req, message in queue:
                    key = domain.dedupe_key(req)
                    attempts, first_at = progress[key]
                    if key in pins:
                        message.pinned_to = pins[key]
                    early = self._precheck(req)
                    results.append((req, early if early is not None else await self._call(
                        req, message, attempts=attempts, first_at=first_at)))

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, len(calls)))))
        return results

    def _reschedule(self, req: Request, attempts: int, first_at: float, reason: str) -> Result:
        due = self._policy.next_due(max(attempts, 1), first_at=first_at, now=_WALL())
        if due is None:
            return domain.failed(req, f"gave up after {attempts} attempts: {reason}")
        return Retry(req, attempts, first_at, due, reason)

    async def _keep_retries_fresh(self, keys: Sequence[tuple[uuid.UUID, int, str]]) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                async with self._pool.acquire() as conn:
                    await repo.refresh_retries(conn, keys, self._instance)
            except Exception:
                log.warning("could not refresh retries", exc_info=True)

    async def _write_retries(
        self, outcomes: Sequence[tuple[Request, Outcome, bytes]], retries: Sequence[Any]
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.settle_retries(conn, outcomes)
            await repo.schedule_retries(conn, retries)

    async def _retrying(self, write: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a write until it succeeds: a lost connection (a database restart) is waited
        out; a provider accepted some of what it records."""
        delay = 0.5
        while True:
            try:
                await write(*args)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("could not record outcomes; trying again", exc_info=exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _template_reason(problem: BaseException | str | None) -> str:
    text = str(problem)
    prefix = FailReason.TEMPLATE_ERROR.value
    return text[:1000] if text.startswith(prefix) else f"{prefix}: {text}"[:1000]


def _retry_row(r: Retry) -> tuple[uuid.UUID, int, str, str, int, datetime, datetime, str | None]:
    req = r.request
    return (req.campaign_id, req.recipient_id, req.channel, req.to_bytes().decode(), r.attempts,
            datetime.fromtimestamp(r.first_at, UTC), datetime.fromtimestamp(r.due, UTC),
            r.reason)
