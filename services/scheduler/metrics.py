"""The scheduler's own series: campaigns by state (read from its database)."""

from __future__ import annotations

import asyncpg

from services.scheduler.campaigns.model import State
from shared.metrics import CAMPAIGNS

STATES = tuple(State)


async def count_campaigns(pool: asyncpg.Pool) -> dict[str, int]:
    """Set `sendout_campaigns{state}` for every state (0 for none) and return the counts."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM campaigns GROUP BY state")
    counts = {state: 0 for state in STATES} | {r["state"]: r["n"] for r in rows}
    for state, n in counts.items():
        CAMPAIGNS.labels(state).set(n)
    return counts
