"""The tracker's own series: per campaign in flight, its pending and settled messages by
channel (from the progress projection); a campaign's series go once it is done."""

from __future__ import annotations

import contextlib
import uuid

import asyncpg

from shared.metrics import CAMPAIGN_PENDING, CAMPAIGN_SETTLED

Key = tuple[str, str]  # (campaign id, channel)


class CampaignGauges:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._shown: set[Key] = set()

    async def update(self) -> dict[Key, tuple[int, int]]:
        """{(campaign, channel): (pending, settled)} of the campaigns sending or aborting whose
        totals are known; series of the others removed."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT c.campaign_id, ch.channel, ch.total,
                       ch.completed + ch.failed + ch.skipped AS settled
                FROM campaigns c JOIN campaign_channels ch USING (campaign_id)
                WHERE c.state IN ('sending', 'aborting') AND ch.total IS NOT NULL
                """
            )
        now: dict[Key, tuple[int, int]] = {}
        for r in rows:
            key = (str(r["campaign_id"]), r["channel"])
            pending = max(0, r["total"] - r["settled"])
            now[key] = (pending, r["settled"])
            CAMPAIGN_PENDING.labels(*key).set(pending)
            CAMPAIGN_SETTLED.labels(*key).set(r["settled"])
        for key in self._shown - set(now):
            for gauge in (CAMPAIGN_PENDING, CAMPAIGN_SETTLED):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
        self._shown = set(now)
        return now

    def shown(self, campaign_id: uuid.UUID) -> bool:
        return any(c == str(campaign_id) for c, _ in self._shown)
