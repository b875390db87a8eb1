"""Running a service: one process serving HTTP (FastAPI + uvicorn) and consuming Kafka
(FastStream), with `/health` and Prometheus `/metrics` on every service.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import uvicorn
from fastapi import APIRouter, FastAPI, Response
from faststream.kafka import KafkaBroker
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.settings import CommonSettings

HealthCheck = Callable[[], Awaitable[dict[str, str]]]
S = TypeVar("S")


def ops_router(checks: dict[str, HealthCheck]) -> APIRouter:
    """`/health` runs each named check; any failure answers 503 naming it."""
    router = APIRouter(tags=["ops"])

    @router.get("/health")
    async def health(response: Response) -> dict[str, object]:
        results: dict[str, object] = {}
        ok = True
        for name, check in checks.items():
            try:
                results[name] = await check()
            except Exception as exc:  # a health check reports, it must not raise
                ok = False
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        response.status_code = 200 if ok else 503
        return {"status": "ok" if ok else "unhealthy", "checks": results}

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def deferred_checks(
    app: FastAPI, attribute: str, names: tuple[str, ...] = ("database", "kafka")
) -> dict[str, HealthCheck]:
    """Checks that ask the running service on `app.state.<attribute>` (its `checks`); before
    it runs, each fails, so /health answers 503. The app is built without a database."""

    def deferred(name: str) -> HealthCheck:
        async def check() -> dict[str, str]:
            running = getattr(app.state, attribute)
            result: dict[str, str] = await running.checks[name]()
            return result

        return check

    return {name: deferred(name) for name in names}


def serving_lifespan(
    running: Callable[[S], AbstractAsyncContextManager[Any]], settings: S, attribute: str
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """An app's lifespan: the service that `running(settings)` starts, on
    `app.state.<attribute>` while the app serves."""

    @asynccontextmanager
    async def serve(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings) as service:
            setattr(app.state, attribute, service)
            try:
                yield
            finally:
                delattr(app.state, attribute)

    return serve


def run(app: FastAPI, settings: CommonSettings) -> None:
    settle_heap()
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def settle_heap() -> None:
    """Take what is alive once the code is imported out of the cyclic garbage collector's
    sight, and let it run less often.

    A consumed batch of thousands of records allocates objects that live until the batch is
    done, so they are promoted, and every full collection walked them together with every
    module, class and function object of FastAPI, FastStream, pydantic and aiokafka:
    profiles of the dispatcher showed it in whichever line happened to allocate next.
    Nothing here creates cycles it relies on the collector for, and reference counting still
    frees everything else at once.

    The collector still runs, once `YOUNG_OBJECTS` container objects have been allocated and
    not freed (a collection walks the young objects still alive, so its cost is bounded by
    a batch's live objects whatever the threshold: fewer collections, less CPU). With a
    tenth of this (7,000), collections took 14% of the dispatcher's busy time at full speed
    (a native profile, 400,000 recipients); cyclic garbage waits at most that long.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, gen1, gen2)


YOUNG_OBJECTS = 100_000


def standard_checks(pool: asyncpg.Pool, broker: KafkaBroker) -> dict[str, HealthCheck]:
    """The database and the broker answer."""

    async def database() -> dict[str, str]:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        return {"status": "ok"}

    async def kafka() -> dict[str, str]:
        if not await broker.ping(timeout=2.0):
            raise RuntimeError("broker not reachable")
        return {"status": "ok"}

    return {"database": database, "kafka": kafka}
