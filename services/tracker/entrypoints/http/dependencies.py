"""What routes take through `Depends`: the running tracker that bootstrap.py puts on
`app.state.tracker`, its pool, the settings, and the caller. Tests replace them with
`app.dependency_overrides`; importing a route module needs none of them. All are async: a
plain function would cost every request a trip to the thread pool."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from services.tracker.bootstrap import Tracker
from services.tracker.settings import TrackerSettings
from shared.auth import API_TOKEN, Principal, bearer


async def running(request: Request) -> Tracker:
    """The running tracker (set by the lifespan; absent before it started)."""
    tracker: Tracker = request.app.state.tracker
    return tracker


async def settings(request: Request) -> TrackerSettings:
    """Set when the app is built: no database needed."""
    value: TrackerSettings = request.app.state.settings
    return value


async def pool(tracker: Annotated[Tracker, Depends(running)]) -> asyncpg.Pool:
    return tracker.pool


async def current_user(
    tracker: Annotated[Tracker, Depends(running)],
    credentials: HTTPAuthorizationCredentials | None = Depends(API_TOKEN),
) -> Principal:
    """The caller, from the API token the scheduler issued (401 saying what is wrong); each
    campaign is answered only to users of its organisation."""
    return await bearer(tracker.look_up)(credentials)


Pool = Annotated[asyncpg.Pool, Depends(pool)]
Running = Annotated[Tracker, Depends(running)]
Settings = Annotated[TrackerSettings, Depends(settings)]
Caller = Annotated[Principal, Depends(current_user)]
