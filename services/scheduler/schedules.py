"""The schedule loop: starts scheduled campaigns when their time comes.

Schedules live in PostgreSQL, so they survive restarts; every replica runs this loop and a due
campaign is claimed with `FOR UPDATE SKIP LOCKED`, so it fires exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from services.scheduler import repo
from services.scheduler.adapters.uow import AsyncpgUnitOfWork
from services.scheduler.campaigns import use_cases
from services.scheduler.fanout import FanoutRunner

log = logging.getLogger(__name__)


class ScheduleLoop:
    def __init__(self, pool: asyncpg.Pool, fanout: FanoutRunner, poll_seconds: float) -> None:
        self._pool = pool
        self._fanout = fanout
        self._poll = poll_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="schedule-loop")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                fired = await use_cases.fire_due(AsyncpgUnitOfWork(self._pool), self._fanout)
                for campaign_id in fired:
                    log.info("scheduled campaign started", extra={"campaign_id": str(campaign_id)})
                async with self._pool.acquire() as conn:
                    due_in = await repo.next_due_in(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Nothing is lost: the schedule stays in the database; try again shortly.
                log.exception("schedule loop failed; retrying")
                due_in = None
            # Wake up at the next due time, but at least every poll interval: a campaign
            # scheduled meanwhile (possibly by another replica) is due soon too.
            await asyncio.sleep(max(0.0, min(self._poll, due_in if due_in is not None else 1e9)))
