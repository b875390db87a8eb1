"""Scheduler wiring: settings → pool → migrations → broker and publishers → outbox relay, fan-out
and loops → the dependencies the entry points use (`Scheduler`, on `app.state.scheduler`).

Nothing here runs at import time: `running(settings)` builds and starts everything, and stops
it in the reverse order. The HTTP app (app.py) is built without any of it, so its routes and
OpenAPI document exist without a database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from services.scheduler import auth, metrics, repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns.aborts import AbortAcks
from services.scheduler.campaigns.unit_of_work import FanOut
from services.scheduler.campaigns.use_cases import ListDispatchers
from services.scheduler.entrypoints import kafka
from services.scheduler.fanout import FanoutRunner
from services.scheduler.identity import use_cases as identity
from services.scheduler.identity.model import FailureLimiter
from services.scheduler.outbox_relay import OutboxRelay
from services.scheduler.schedules import ScheduleLoop
from services.scheduler.settings import SchedulerSettings
from shared import db, topics, tracing, webhooks, wire
from shared.auth import LookUp
from shared.events import ApiTokenIssued, ApiTokenRevoked, CampaignStarted
from shared.kafka import (
    ensure_topics,
    group_instances,
    make_broker,
    publish_all,
    publish_encoded,
)
from shared.metrics import FANOUT_MESSAGES
from shared.observability import LagMonitor
from shared.pollers import Poller
from shared.service import HealthCheck, serving_lifespan, standard_checks

MIGRATIONS = Path(__file__).parent / "migrations"
DISPATCHER_GROUP = "sendout-dispatcher"
INBOUND_SMS_MAX_SKEW_SECONDS = 300


@dataclass
class Scheduler:
    """What the entry points need of a running scheduler: storage (a unit of work per use
    case, or the pool for reads), the fan-out to kick, the abort acknowledgements, and the
    caller's identity."""

    pool: asyncpg.Pool
    settings: SchedulerSettings
    fanout: FanOut
    acks: AbortAcks
    list_dispatchers: ListDispatchers
    look_up: LookUp
    inbound_nonces: webhooks.NonceStore
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    # Failed sign-ins per login, and per client address (generous: a console in front of the
    # API is one client address for all its users).
    sign_ins: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(limit=5, window=300))
    client_sign_ins: FailureLimiter = field(
        default_factory=lambda: FailureLimiter(limit=200, window=300))

    def uow(self) -> AsyncpgUnitOfWork:
        """A fresh unit of work: one per use case call."""
        return AsyncpgUnitOfWork(self.pool)


@dataclass
class _Publishers:
    requests: Any
    lifecycle: Any
    opt_outs: Any
    identity: Any
    erasures: Any

    def all(self) -> tuple[Any, ...]:
        return (self.lifecycle, self.opt_outs, self.identity, self.requests, self.erasures)


def _declare_publishers(broker: KafkaBroker) -> _Publishers:
    """Declared once, so the AsyncAPI document shows them."""
    return _Publishers(
        requests=broker.publisher(
            topics.SEND_REQUESTED,
            description="Recipients and channels to send, in batches of one campaign's "
            "(or one alone), keyed by the (first) recipient id.",
        ),
        lifecycle=broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Campaign lifecycle, keyed by campaign id."
        ),
        opt_outs=broker.publisher(
            topics.OPT_OUTS, description="Addresses opted out, keyed by organisation id."
        ),
        identity=broker.publisher(
            topics.IDENTITY, description="API tokens issued and revoked, keyed by token hash."
        ),
        erasures=broker.publisher(
            topics.ERASURES, description="Recipients whose voter's personal data was erased, "
            "keyed by organisation id: every service blanks its copies."
        ),
    )


def _fanout(pool: asyncpg.Pool, settings: SchedulerSettings, pubs: _Publishers) -> FanoutRunner:
    """The fan-out's pages are published directly (not through the outbox): each page is
    published before its checkpoint is stored, with stable event ids."""

    async def publish_requests(
        context: wire.CampaignContext, events: list[wire.SendRequested]
    ) -> None:
        records = wire.request_records(events, settings.send_batch_size, context)
        # A page is one campaign's: its records carry the campaign's trace.
        with tracing.use(tracing.for_campaign(events[0].campaign_id) if events else None):
            await publish_encoded(pubs.requests, records, service="scheduler")
        FANOUT_MESSAGES.inc(len(events))

    async def publish_started(event: CampaignStarted) -> None:
        await publish_all(pubs.lifecycle, [(event.campaign_id.bytes, event)],
                          service="scheduler")

    return FanoutRunner(
        pool,
        publish_started=publish_started,
        publish_requests=publish_requests,
        page_size=settings.fanout_page_size,
        rescan_seconds=settings.fanout_rescan_seconds,
    )


def _relay(settings: SchedulerSettings, pubs: _Publishers) -> OutboxRelay:
    """Every other event the scheduler emits is written with its state change, in the same
    transaction (services/scheduler/outbox.py), and published from there after commit."""

    async def relay_connection() -> asyncpg.Connection:
        # Its own connection, outside the pool: it holds the relay's lock and LISTENs.
        return await asyncpg.connect(
            settings.database_url, server_settings={"search_path": "scheduler, public"})

    return OutboxRelay(
        relay_connection,
        {publisher.topic: publisher for publisher in pubs.all()},
        service="scheduler",
        poll_seconds=settings.outbox_poll_seconds,
    )


def _identity_publisher(
    pubs: _Publishers,
) -> Callable[[list[ApiTokenIssued | ApiTokenRevoked]], Any]:
    async def publish_identity(events: list[ApiTokenIssued | ApiTokenRevoked]) -> None:
        keyed = [(bytes.fromhex(e.token_hash), e) for e in events]
        await publish_all(pubs.identity, keyed, service="scheduler")

    return publish_identity


@asynccontextmanager
async def running(settings: SchedulerSettings) -> AsyncIterator[Scheduler]:
    """The scheduler's adapters and loops, started; stopped (in reverse) when the block ends."""
    async with AsyncExitStack() as stack:
        pool = await db.create_pool(
            settings.database_url, "scheduler", max_size=settings.db_pool_max,
            init=repo.init_connection,
        )
        stack.push_async_callback(pool.close)
        await db.migrate(pool, "scheduler", MIGRATIONS)
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        stack.push_async_callback(admin.close)
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="sendout-scheduler")
        pubs = _declare_publishers(broker)
        acks = AbortAcks()
        broker.include_router(kafka.kafka_router(pool, acks))
        relay = _relay(settings, pubs)

        async def list_dispatchers() -> set[str]:
            return await group_instances(admin, DISPATCHER_GROUP)

        fanout = _fanout(pool, settings, pubs)
        schedules = ScheduleLoop(pool, fanout, settings.schedule_poll_seconds)
        await broker.start()
        stack.push_async_callback(broker.stop)
        await identity.publish_all_tokens(AsyncpgUnitOfWork(pool), _identity_publisher(pubs))
        for loop in (
            relay, fanout, schedules,
            LagMonitor(broker, interval=settings.metrics_interval_seconds),
            Poller("campaigns by state", lambda: metrics.count_campaigns(pool),
                   settings.metrics_interval_seconds),
        ):
            loop.start()
            stack.push_async_callback(loop.stop)
        yield Scheduler(
            pool=pool, settings=settings, fanout=fanout, acks=acks,
            list_dispatchers=list_dispatchers, look_up=auth.look_up(pool),
            inbound_nonces=webhooks.NonceStore(pool, INBOUND_SMS_MAX_SKEW_SECONDS),
            checks=standard_checks(pool, broker),
        )


def lifespan(settings: SchedulerSettings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the running scheduler on `app.state.scheduler` while it serves."""
    return serving_lifespan(running, settings, "scheduler")
