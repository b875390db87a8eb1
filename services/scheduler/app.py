"""The scheduler's HTTP app: its route modules, input guard, OpenAPI completion and metrics.
Built without a database: bootstrap.py starts the scheduler in the app's lifespan and puts it
on `app.state.scheduler`, where the routes' dependencies find it."""

from __future__ import annotations

from fastapi import FastAPI

from services.scheduler import bootstrap, domain
from services.scheduler.bootstrap import MIGRATIONS as MIGRATIONS
from services.scheduler.entrypoints import http
from services.scheduler.settings import SchedulerSettings
from shared import http_errors, http_input, openapi
from shared.auth import LookUp, scope_bearer
from shared.observability import HttpMetrics
from shared.service import deferred_checks, ops_router


def create_app(settings: SchedulerSettings | None = None) -> FastAPI:
    settings = settings or SchedulerSettings()
    app = FastAPI(title="Sendout scheduler", lifespan=bootstrap.lifespan(settings))
    app.state.settings = settings
    for router in http.ROUTERS:
        app.include_router(router)
    app.include_router(ops_router(deferred_checks(app, "scheduler")))

    def look_up() -> LookUp | None:
        scheduler = getattr(app.state, "scheduler", None)
        return scheduler.look_up if scheduler is not None else None

    http_errors.install(
        app, not_found=domain.NotFound, conflict=domain.Conflict, invalid=domain.Invalid
    )
    http_input.install(app, http.BODY_LIMITS, authenticate=scope_bearer(look_up))
    openapi.install(app, conflicts=http.may_conflict, signed=http.SIGNED_PATHS,
                    extra=http.OTHER_ERRORS)
    # Outermost (added last): requests the input guard refuses are measured too.
    app.add_middleware(HttpMetrics, service="scheduler",
                       webhooks={"/organisations/{organisation_id}/inbound-sms": "inbound_sms"})
    return app

