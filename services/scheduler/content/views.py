"""What the API shows of senders and templates: reads straight from the scheduler's tables,
shaped as the answers' JSON (the read side; changes go through the use cases)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.scheduler.adapters.repositories import AsyncpgContent


async def senders(pool: asyncpg.Pool, organisation_id: uuid.UUID) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await AsyncpgContent(conn).senders_of(organisation_id)
    return [{**dict(r), "id": str(r["id"])} for r in rows]


async def templates(pool: asyncpg.Pool, organisation_id: uuid.UUID) -> list[dict[str, Any]]:
    """The organisation's templates, each at its latest version."""
    async with pool.acquire() as conn:
        rows = await AsyncpgContent(conn).templates_of(organisation_id)
    return [{**dict(r), "id": str(r["id"])} for r in rows]
