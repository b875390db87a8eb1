"""A gauge refreshed in the background: an async reading run every few seconds (a database
query, a broker request), whose failure is logged and retried rather than raised."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Poller:
    def __init__(self, name: str, read: Callable[[], Awaitable[object]], interval: float) -> None:
        self.name = name
        self._read = read
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                # Bounded: a reading that hangs (a broker request without an answer) is
                # abandoned and tried again, rather than leaving the gauge silently stale.
                await asyncio.wait_for(self._read(), max(10.0, 3 * self._interval))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # measured again at the next interval
                log.warning("%s not measured: %s", self.name, exc)
            await asyncio.sleep(self._interval)
