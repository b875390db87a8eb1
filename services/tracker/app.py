"""The tracker's HTTP app: its route modules, input guard, OpenAPI completion and metrics.
Built without a database: bootstrap.py starts the tracker in the app's lifespan and puts it on
`app.state.tracker`, where the routes' dependencies find it."""

from __future__ import annotations

from fastapi import FastAPI

from services.tracker import bootstrap
from services.tracker.bootstrap import MIGRATIONS as MIGRATIONS
from services.tracker.entrypoints import http
from services.tracker.settings import TrackerSettings
from shared import http_input, openapi
from shared.observability import HttpMetrics
from shared.service import deferred_checks, ops_router


def create_app(settings: TrackerSettings | None = None) -> FastAPI:
    settings = settings or TrackerSettings()
    app = FastAPI(title="Sendout tracker", lifespan=bootstrap.lifespan(settings))
    app.state.settings = settings
    for router in http.ROUTERS:
        app.include_router(router)
    app.include_router(ops_router(deferred_checks(app, "tracker")))
    # Receipts are the only body the tracker takes: at most 1000 of them, well under 1 MiB.
    http_input.install(app, default_limit=http_input.DEFAULT_BODY_LIMIT)
    openapi.install(app, signed=http.SIGNED_PATHS, extra=http.OTHER_ERRORS)
    # Outermost (added last): requests the input guard refuses are measured too.
    app.add_middleware(HttpMetrics, service="tracker", webhooks={"/receipts": "receipts"})
    return app

