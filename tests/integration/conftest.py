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


async def _pool(stack: Stack, service: str, schema: str | None = None) -> asyncpg.Pool:
    migrations, init = _SERVICES[service]
    schema = schema or service
    pool = await db.create_pool(stack.database_url, schema, max_size=4, init=init)
    await db.migrate(pool, schema, migrations)
    return pool


@pytest.fixture(scope="session")
async def tracker_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await _pool(stack, "tracker")
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def dispatcher_pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    # A schema of its own: the dispatcher processes of the e2e tests, running in the same
    # session, work the `dispatcher` schema's retry schedule and would take these tests' rows.
    pool = await _pool(stack, "dispatcher", "dispatcher_itest")
    yield pool
    await pool.close()
