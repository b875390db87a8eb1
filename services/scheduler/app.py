"""Scheduler composition root: settings → pool → migrations → broker → loops → HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import Depends, FastAPI

from services.scheduler import (
    auth,
    domain,
    handlers,
    metrics,
    passwords,
    repo,
    service,
    twilio_inbound,
)
from services.scheduler.fanout import FanoutRunner
from services.scheduler.outbox_relay import OutboxRelay
from services.scheduler.schedules import ScheduleLoop
from services.scheduler.service import AbortAcks
from services.scheduler.settings import SchedulerSettings
from services.scheduler.voters import handlers as voters
from shared import db, http_errors, http_input, openapi, topics, tracing, wire
from shared.auth import LookUp, scope_bearer
from shared.events import ApiTokenIssued, ApiTokenRevoked, CampaignStarted
from shared.kafka import (
    ensure_topics,
    group_instances,
    make_broker,
    publish_all,
    publish_encoded,
)
from shared.metrics import FANOUT_MESSAGES
from shared.observability import HttpMetrics, LagMonitor
from shared.pollers import Poller
from shared.service import ops_router, standard_checks

MIGRATIONS = Path(__file__).parent / "migrations"
DISPATCHER_GROUP = "sendout-dispatcher"


def create_app(settings: SchedulerSettings | None = None) -> FastAPI:
    settings = settings or SchedulerSettings()
    started: dict[str, LookUp] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url, "scheduler", max_size=settings.db_pool_max,
            init=repo.init_connection,
        )
        await db.migrate(pool, "scheduler", MIGRATIONS)
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        broker = make_broker(settings.kafka_bootstrap_servers, client_id="sendout-scheduler")
        requests_pub = broker.publisher(
            topics.SEND_REQUESTED,
            description="Recipients and channels to send, in batches of one campaign's "
            "(or one alone), keyed by the (first) recipient id.",
        )
        lifecycle_pub = broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Campaign lifecycle, keyed by campaign id."
        )
        opt_outs_pub = broker.publisher(
            topics.OPT_OUTS, description="Addresses opted out, keyed by organisation id."
        )
        identity_pub = broker.publisher(
            topics.IDENTITY, description="API tokens issued and revoked, keyed by token hash."
        )
        erasures_pub = broker.publisher(
            topics.ERASURES, description="Recipients whose voter's personal data was erased, "
            "keyed by organisation id: every service blanks its copies."
        )
        acks = AbortAcks()
        broker.include_router(handlers.kafka_router(pool, acks))

        # The fan-out's pages are published directly (not through the outbox): each page is
        # published before its checkpoint is stored, with stable event ids.
        async def publish_requests(
            context: wire.CampaignContext, events: list[wire.SendRequested]
        ) -> None:
            records = wire.request_records(events, settings.send_batch_size, context)
            # A page is one campaign's: its records carry the campaign's trace.
            with tracing.use(tracing.for_campaign(events[0].campaign_id) if events else None):
                await publish_encoded(requests_pub, records, service="scheduler")
            FANOUT_MESSAGES.inc(len(events))

        async def publish_started(event: CampaignStarted) -> None:
            await publish_all(lifecycle_pub, [(event.campaign_id.bytes, event)],
                              service="scheduler")

        async def publish_identity(events: list[ApiTokenIssued | ApiTokenRevoked]) -> None:
            keyed = [(bytes.fromhex(e.token_hash), e) for e in events]
            await publish_all(identity_pub, keyed, service="scheduler")

        async def relay_connection() -> asyncpg.Connection:
            # Its own connection, outside the pool: it holds the relay's lock and LISTENs.
            return await asyncpg.connect(
                settings.database_url, server_settings={"search_path": "scheduler, public"})

        # Every other event the scheduler emits is written with its state change, in the same
        # transaction (services/scheduler/outbox.py), and published from there after commit.
        relay = OutboxRelay(
            relay_connection,
            {publisher.topic: publisher
             for publisher in (lifecycle_pub, opt_outs_pub, identity_pub, requests_pub,
                               erasures_pub)},
            service="scheduler",
            poll_seconds=settings.outbox_poll_seconds,
        )

        async def list_dispatchers() -> set[str]:
            return await group_instances(admin, DISPATCHER_GROUP)

        fanout = FanoutRunner(
            pool,
            publish_started=publish_started,
            publish_requests=publish_requests,
            page_size=settings.fanout_page_size,
            rescan_seconds=settings.fanout_rescan_seconds,
        )
        schedules = ScheduleLoop(pool, fanout, settings.schedule_poll_seconds)
        await broker.start()
        await service.publish_all_tokens(pool, publish_identity)
        relay.start()
        fanout.start()
        schedules.start()
        lag = LagMonitor(broker, interval=settings.metrics_interval_seconds)
        lag.start()
        campaigns = Poller("campaigns by state", lambda: metrics.count_campaigns(pool),
                           settings.metrics_interval_seconds)
        campaigns.start()
        deps = handlers.Deps(pool, fanout, acks, list_dispatchers, settings)
        started["look_up"] = auth.look_up(pool)
        user = Depends(auth.require_user(pool))
        app.include_router(handlers.http_router(deps, user))
        app.include_router(voters.http_router(pool, settings.default_phone_region, user))
        app.include_router(passwords.http_router(pool, user))
        app.include_router(twilio_inbound.http_router(
            pool, settings.twilio_auth_token, settings.twilio_public_base_url,
            settings.default_phone_region))
        app.include_router(ops_router(standard_checks(pool, broker)))
        try:
            yield
        finally:
            await campaigns.stop()
            await lag.stop()
            await schedules.stop()
            await fanout.stop()
            await relay.stop()
            await broker.stop()
            await admin.close()
            await pool.close()

    app = FastAPI(title="Sendout scheduler", lifespan=lifespan)
    http_errors.install(
        app, not_found=domain.NotFound, conflict=domain.Conflict, invalid=domain.Invalid
    )
    http_input.install(app, handlers.BODY_LIMITS,
                       authenticate=scope_bearer(lambda: started.get("look_up")))
    openapi.install(app, conflicts=handlers.may_conflict, signed=handlers.SIGNED_PATHS,
                    extra=handlers.OTHER_ERRORS)
    # Outermost (added last): requests the input guard refuses are measured too.
    app.add_middleware(HttpMetrics, service="scheduler",
                       webhooks={"/organisations/{organisation_id}/inbound-sms": "inbound_sms"})
    return app
