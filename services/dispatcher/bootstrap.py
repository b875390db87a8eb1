"""Dispatcher wiring: settings → pool → migrations → providers (the registry below) → renderer
and the dispatcher → broker, publishers and subscribers → the retry and pruning loops; what the
HTTP app needs of it is `RunningDispatcher`, on `app.state.dispatcher`.

Nothing here runs at import time: `running(settings)` builds and starts everything, and stops
it in the reverse order. The HTTP app (app.py) is built without any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.usecase import DefaultPublisher

from services.dispatcher import erasure, metrics, repo
from services.dispatcher.domain import Outcome
from services.dispatcher.entrypoints import kafka
from services.dispatcher.failover import FailoverProvider
from services.dispatcher.limiter import AdaptiveLimiter
from services.dispatcher.providers import HttpProvider, NoopProvider, Provider, SmtpProvider
from services.dispatcher.reliability import CircuitBreaker, RetryPolicy
from services.dispatcher.rendering import Renderer
from services.dispatcher.service import (
    AbortRegistry,
    Dispatcher,
    OptOutRegistry,
    RateLimiter,
)
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.smtp import LeanSmtpProvider, SmtpOptions
from services.dispatcher.twilio import TwilioProvider
from shared import db, topics
from shared.events import Channel
from shared.kafka import ensure_topics, instance_client_id, make_broker, publish_encoded
from shared.observability import LagMonitor
from shared.service import HealthCheck, serving_lifespan, standard_checks
from shared.wire import outcome_records

MIGRATIONS = Path(__file__).parent / "migrations"


CHANNEL_PROVIDERS: dict[Channel, frozenset[str]] = {
    "email": frozenset({"noop", "http", "smtp"}),
    "sms": frozenset({"noop", "http", "twilio"}),
}


def _chain_names(settings: DispatcherSettings, channel: Channel) -> list[str]:
    """The names set for a channel's chain, or its one provider's name."""
    chain = settings.email_providers if channel == "email" else settings.sms_providers
    if chain.strip():
        return [n.strip() for n in chain.split(",") if n.strip()]
    single = settings.email_provider if channel == "email" else settings.sms_provider
    return [settings.provider or single]


def provider_chain(settings: DispatcherSettings, channel: Channel) -> list[str]:
    """The providers of a channel, first choice first (one, unless a chain is set)."""
    names = _chain_names(settings, channel)
    unknown = [n for n in names if n not in CHANNEL_PROVIDERS[channel]]
    if unknown:
        raise ValueError(f"{channel} providers: {unknown} unknown; one of "
                         f"{sorted(CHANNEL_PROVIDERS[channel])}")
    if len(set(names)) != len(names):
        raise ValueError(f"{channel} providers: {names} names one twice")
    return names


def provider_names(settings: DispatcherSettings) -> dict[Channel, str]:
    """The provider label of each channel's metrics: its adapter, or its chain (`twilio,http`)."""
    return {channel: ",".join(provider_chain(settings, channel))
            for channel in ("email", "sms")}


def build_providers(settings: DispatcherSettings) -> dict[Channel, Provider]:
    """One provider per channel: an adapter, or a failover chain of them. An adapter named
    for both channels (`http`) is one instance: one pool of connections, one health. Each
    adapter is timed and counted under its own name (services/dispatcher/metrics.py)."""
    built: dict[str, Provider] = {}

    def adapter(name: str) -> Provider:
        if name not in built:
            built[name] = metrics.MeteredProvider(_adapter(settings, name), name)
        return built[name]

    providers: dict[Channel, Provider] = {}
    for channel in ("email", "sms"):
        names = provider_chain(settings, channel)
        if len(names) == 1:
            providers[channel] = adapter(names[0])
        else:
            providers[channel] = FailoverProvider(
                [(name, adapter(name)) for name in names],
                errors=settings.failover_errors,
                window_seconds=settings.failover_window_seconds,
                pause_seconds=settings.failover_pause_seconds,
                doubt_errors=settings.failover_doubt_errors,
            )
    return providers


def adapters_of(providers: dict[Channel, Provider]) -> list[Provider]:
    """Every adapter once (chains' members included): what to close at the end."""
    found: dict[int, Provider] = {}
    for provider in providers.values():
        members = provider.members if isinstance(provider, FailoverProvider) else [provider]
        for member in members:
            found.setdefault(id(member), member)
    return list(found.values())


def _limiter(settings: DispatcherSettings) -> tuple[int, AdaptiveLimiter | None]:
    """An HTTP provider's cap on calls in flight, and its adaptive limiter if on."""
    cap = settings.provider_max_concurrency or settings.concurrency
    if not settings.provider_adaptive_concurrency:
        return cap, None
    return cap, AdaptiveLimiter(maximum=cap, initial=settings.provider_initial_concurrency)


def _http(settings: DispatcherSettings) -> Provider:
    cap, limiter = _limiter(settings)
    return HttpProvider(settings.provider_url, timeout=settings.provider_timeout_seconds,
                        max_connections=cap, limiter=limiter)


def _twilio(settings: DispatcherSettings) -> Provider:
    token = settings.twilio_auth_token
    cap, limiter = _limiter(settings)
    return TwilioProvider(
        settings.twilio_base_url, settings.twilio_account_sid,
        token.get_secret_value() if token else "",
        from_number=settings.twilio_from,
        messaging_service_sid=settings.twilio_messaging_service_sid,
        status_callback=settings.twilio_status_callback,
        timeout=settings.provider_timeout_seconds,
        max_connections=cap,
        limiter=limiter,
    )


def _adapter(settings: DispatcherSettings, name: str) -> Provider:
    return ADAPTERS[name](settings)


def build_smtp(settings: DispatcherSettings) -> Provider:
    if settings.smtp_client == "aiosmtplib":
        return SmtpProvider(
            settings.smtp_host, settings.smtp_port, connections=settings.smtp_connections,
            timeout=settings.provider_timeout_seconds, username=settings.smtp_username,
            password=settings.smtp_password, starttls=settings.smtp_starttls,
        )
    return LeanSmtpProvider(SmtpOptions(
        settings.smtp_host, settings.smtp_port, timeout=settings.provider_timeout_seconds,
        username=settings.smtp_username, password=settings.smtp_password,
        starttls=settings.smtp_starttls, use_tls=settings.smtp_tls,
        local_hostname=settings.smtp_local_hostname, pipelining=settings.smtp_pipelining,
    ), connections=settings.smtp_connections)


# The provider registry: a name (as the settings use it) → how to build that adapter from the
# settings. A new provider is its module plus a line here and in CHANNEL_PROVIDERS.
ADAPTERS: dict[str, Callable[[DispatcherSettings], Provider]] = {
    "noop": lambda _settings: NoopProvider(),
    "http": _http,
    "smtp": build_smtp,
    "twilio": _twilio,
}


def build_breakers(
    settings: DispatcherSettings, providers: dict[Channel, Provider]
) -> dict[Channel, CircuitBreaker]:
    """One breaker per provider (one serving both channels is one provider's health)."""
    by_provider: dict[int, CircuitBreaker] = {}
    return {
        channel: by_provider.setdefault(id(provider), CircuitBreaker(
            window_seconds=settings.breaker_window_seconds,
            min_calls=settings.breaker_min_calls,
            failure_ratio=settings.breaker_failure_ratio,
            open_seconds=settings.breaker_open_seconds,
            max_open_seconds=settings.breaker_max_open_seconds,
        ))
        for channel, provider in providers.items()
    }


async def stop_between_rounds(
    task: asyncio.Task[None], dispatcher: Dispatcher, bound_seconds: float
) -> None:
    dispatcher.stopping = True
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(task), bound_seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@dataclass
class RunningDispatcher:
    """What the HTTP app needs of a running dispatcher: its health checks."""

    pool: asyncpg.Pool
    settings: DispatcherSettings
    dispatcher: Dispatcher
    checks: dict[str, HealthCheck] = field(default_factory=dict)


@dataclass
class _Publishers:
    outcomes: DefaultPublisher
    lifecycle: DefaultPublisher


def _declare_publishers(broker: KafkaBroker) -> _Publishers:
    """Declared once, so the AsyncAPI document shows them."""
    return _Publishers(
        outcomes=broker.publisher(
            topics.OUTCOMES,
            description="Sent / failed / skipped, in batches of one campaign's (or one alone), "
            "keyed by campaign id.",
        ),
        lifecycle=broker.publisher(
            topics.CAMPAIGN_LIFECYCLE, description="Abort acknowledgements, keyed by campaign id."
        ),
    )


async def _dispatcher(
    pool: asyncpg.Pool, settings: DispatcherSettings, providers: dict[Channel, Provider],
    renderer: Renderer,
) -> tuple[Dispatcher, AbortRegistry, OptOutRegistry]:
    """The dispatcher, with the aborts and opt-outs stored so far."""
    aborts, opt_outs = AbortRegistry(), OptOutRegistry()
    async with pool.acquire() as conn:
        aborts.add(await repo.aborted_campaigns(conn))
        aborts.add(await repo.aborted_gates(conn))
        opt_outs.add(await repo.all_opt_outs(conn))
    dispatcher = Dispatcher(
        pool,
        providers,
        aborts=aborts,
        opt_outs=opt_outs,
        concurrency=settings.concurrency,
        rate_limiter=RateLimiter(settings.rate_limit_per_second),
        instance=settings.instance_id,
        retry_policy=RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds,
                                 settings.retry_deadline_seconds),
        breakers=build_breakers(settings, providers),
        claim_lease_seconds=settings.claim_lease_seconds,
        resend_in_doubt=settings.resend_in_doubt,
        publish_at=settings.outcome_publish_at,
        publish_after=settings.outcome_publish_after_seconds,
        renderer=renderer,
    )
    return dispatcher, aborts, opt_outs


def _renderer(settings: DispatcherSettings) -> Renderer:
    """Untrusted templates render in worker processes, with a time and an output limit per
    message; text-and-variable templates render inline."""
    return Renderer(time_limit_seconds=settings.render_time_limit_seconds,
                    max_output_chars=settings.render_max_output_chars,
                    workers=settings.render_workers,
                    memory_limit_mb=settings.render_memory_limit_mb)


async def _close_all(providers: dict[Channel, Provider]) -> None:
    for provider in adapters_of(providers):
        await provider.close()


@asynccontextmanager
async def running(settings: DispatcherSettings) -> AsyncIterator[RunningDispatcher]:
    """The dispatcher's adapters and loops, started; stopped (in reverse) when the block ends."""
    async with AsyncExitStack() as stack:
        pool = await db.create_pool(
            settings.database_url, "dispatcher", max_size=settings.db_pool_max,
            generic_plans=True, session_state=False,
        )
        stack.push_async_callback(pool.close)
        await db.migrate(pool, "dispatcher", MIGRATIONS)
        providers = build_providers(settings)
        stack.push_async_callback(_close_all, providers)
        renderer = _renderer(settings)
        await renderer.start()
        stack.push_async_callback(renderer.close)
        dispatcher, aborts, opt_outs = await _dispatcher(pool, settings, providers, renderer)
        await ensure_topics(
            settings.kafka_bootstrap_servers, topics.ALL, settings.kafka_partitions
        )
        # The client id names this instance: the scheduler waits for each member's abort
        # acknowledgement.
        broker = make_broker(
            settings.kafka_bootstrap_servers,
            client_id=instance_client_id("dispatcher", settings.instance_id),
        )
        pubs = _declare_publishers(broker)
        outcome_counter = metrics.OutcomeCounter(provider_names(settings))
        broker.include_router(
            kafka.kafka_router(
                pool, dispatcher, aborts, opt_outs, pubs.outcomes, pubs.lifecycle,
                instance=settings.instance_id, max_records=settings.batch_max_records,
                outcome_batch_size=settings.outcome_batch_size, consumers=settings.consumers,
                rebalance_seconds=settings.drain_seconds,
                outcome_counter=outcome_counter,
            )
        )
        broker.include_router(erasure.kafka_router(pool))
        await broker.start()
        stack.push_async_callback(broker.stop)
        lag = LagMonitor(broker, interval=settings.metrics_interval_seconds)
        lag.start()
        stack.push_async_callback(lag.stop)

        async def publish_outcomes(outcomes: list[tuple[Outcome, bytes]]) -> None:
            outcome_counter.count(outcomes)
            await publish_encoded(
                pubs.outcomes, outcome_records(outcomes, settings.outcome_batch_size),
                service="dispatcher",
            )

        retries = asyncio.create_task(dispatcher.retry_forever(publish_outcomes),
                                      name="retry-schedule")
        pruning = asyncio.create_task(
            dispatcher.prune_forever(settings.claim_retention_hours * 3600), name="prune")
        stack.callback(pruning.cancel)
        # The retry round in progress is settled first (bounded: a call that does not end
        # is left to its claim, which goes stale and is reported in doubt).
        stack.push_async_callback(stop_between_rounds, retries, dispatcher,
                                  settings.drain_seconds)
        yield RunningDispatcher(pool=pool, settings=settings, dispatcher=dispatcher,
                                checks=standard_checks(pool, broker))


def lifespan(
    settings: DispatcherSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the running dispatcher on `app.state.dispatcher` while it serves."""
    return serving_lifespan(running, settings, "dispatcher")
