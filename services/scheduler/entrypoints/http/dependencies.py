"""What routes take through `Depends`: the running scheduler that bootstrap.py puts on
`app.state.scheduler`, a unit of work, the settings, and the caller. Tests replace them with
`app.dependency_overrides`; importing a route module needs none of them. All are async: a
plain function would cost every request a trip to the thread pool."""

from __future__ import annotations

import uuid
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials

from services.scheduler.bootstrap import Scheduler
from services.scheduler.campaigns.unit_of_work import FanOut, UnitOfWork
from services.scheduler.content.unit_of_work import UnitOfWork as ContentUnitOfWork
from services.scheduler.identity.unit_of_work import UnitOfWork as IdentityUnitOfWork
from services.scheduler.opt_outs.unit_of_work import UnitOfWork as OptOutsUnitOfWork
from services.scheduler.settings import SchedulerSettings
from shared.auth import API_TOKEN, Principal, bearer, same_secret, unauthorized


async def running(request: Request) -> Scheduler:
    """The running scheduler (set by the lifespan; absent before it started)."""
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


async def settings(request: Request) -> SchedulerSettings:
    """Set when the app is built: no database needed."""
    value: SchedulerSettings = request.app.state.settings
    return value


async def pool(scheduler: Annotated[Scheduler, Depends(running)]) -> asyncpg.Pool:
    return scheduler.pool


async def unit_of_work(scheduler: Annotated[Scheduler, Depends(running)]) -> UnitOfWork:
    return scheduler.uow()


async def identity_unit_of_work(
    scheduler: Annotated[Scheduler, Depends(running)],
) -> IdentityUnitOfWork:
    return scheduler.uow()


async def content_unit_of_work(
    scheduler: Annotated[Scheduler, Depends(running)],
) -> ContentUnitOfWork:
    return scheduler.uow()


async def opt_outs_unit_of_work(
    scheduler: Annotated[Scheduler, Depends(running)],
) -> OptOutsUnitOfWork:
    return scheduler.uow()


async def fanout(scheduler: Annotated[Scheduler, Depends(running)]) -> FanOut:
    return scheduler.fanout


async def region(config: Annotated[SchedulerSettings, Depends(settings)]) -> str:
    """Phone numbers without a country code are read as numbers of this region."""
    return config.default_phone_region


async def current_user(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(API_TOKEN)
) -> Principal:
    """The caller, from their API token (401 saying what is wrong)."""
    scheduler: Scheduler = request.app.state.scheduler
    return await bearer(scheduler.look_up)(credentials)


async def organisation(principal: Annotated[Principal, Depends(current_user)]) -> uuid.UUID:
    """The caller's organisation: everything they see or change is its."""
    return principal.organisation_id


async def admin(
    config: Annotated[SchedulerSettings, Depends(settings)],
    x_sendout_admin_token: str | None = Header(default=None),
) -> None:
    """Whoever holds SENDOUT_ADMIN_TOKEN (404 when administration is disabled)."""
    if not config.admin_token:
        raise HTTPException(404, "administration is disabled (no SENDOUT_ADMIN_TOKEN)")
    if not x_sendout_admin_token or not same_secret(x_sendout_admin_token, config.admin_token):
        raise unauthorized("the admin token is required: X-Sendout-Admin-Token")


Pool = Annotated[asyncpg.Pool, Depends(pool)]
Uow = Annotated[UnitOfWork, Depends(unit_of_work)]
IdentityUow = Annotated[IdentityUnitOfWork, Depends(identity_unit_of_work)]
ContentUow = Annotated[ContentUnitOfWork, Depends(content_unit_of_work)]
OptOutsUow = Annotated[OptOutsUnitOfWork, Depends(opt_outs_unit_of_work)]
Fanout = Annotated[FanOut, Depends(fanout)]
Settings = Annotated[SchedulerSettings, Depends(settings)]
Region = Annotated[str, Depends(region)]
Running = Annotated[Scheduler, Depends(running)]
Caller = Annotated[Principal, Depends(current_user)]
Organisation = Annotated[uuid.UUID, Depends(organisation)]
ADMIN = [Depends(admin)]
