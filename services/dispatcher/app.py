"""The dispatcher's HTTP app: its health and metrics. Built without a database: bootstrap.py
starts the dispatcher (providers, consumers, loops) in the app's lifespan and puts it on
`app.state.dispatcher`, where the health checks find it."""

from __future__ import annotations

from fastapi import FastAPI

from services.dispatcher import bootstrap
from services.dispatcher.bootstrap import MIGRATIONS as MIGRATIONS
from services.dispatcher.settings import DispatcherSettings
from shared.observability import HttpMetrics
from shared.service import deferred_checks, ops_router


def create_app(settings: DispatcherSettings | None = None) -> FastAPI:
    settings = settings or DispatcherSettings()
    app = FastAPI(title="Sendout dispatcher", lifespan=bootstrap.lifespan(settings))
    app.state.settings = settings
    app.include_router(ops_router(deferred_checks(app, "dispatcher")))
    app.add_middleware(HttpMetrics, service="dispatcher")
    return app

