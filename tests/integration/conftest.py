from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.dispatcher import app as dispatcher_app
from services.scheduler import app as scheduler_app
from services.scheduler import repo as scheduler_repo
from services.tracker import app as tracker_app
from shared import db
from tests.conftest import Stack

pytestmark = pytest.mark.integration

_SERVICES = {
    "scheduler": (scheduler_app.MIGRATIONS, scheduler_repo.init_connection),
    "dispatcher": (dispatcher_app.MIGRATIONS, None),
    "tracker": (tracker_app.MIGRATIONS, None),
}


async def _pool(stack: Stack, service: str) -> asyncpg.Pool:
    migrations, init = _SERVICES[service]
    pool = await db.create_pool(stack.database_url, service, max_size=4, init=init)
    await db.migrate(pool, service, migrations)
    return pool


@pytest.fixture(scope="session")
async def tracker_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await _pool(stack, "tracker")
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def dispatcher_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await _pool(stack, "dispatcher")
    yield pool
    await pool.close()
