"""Tracker domain: progress arithmetic and completion. No I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.events import CampaignCompleted

# Deterministic so that a completion re-detected after a redelivery has the same event id.
_COMPLETED_NS = uuid.UUID("3b8f8d7e-4f0a-4b0e-9a55-2f7c2e6d9c01")


@dataclass(frozen=True)
class Progress:
    campaign_id: uuid.UUID
    total: int | None
    completed: int
    failed: int
    skipped: int
    state: str

    @property
    def pending(self) -> int | None:
        if self.total is None:
            return None
        return self.total - self.completed - self.failed - self.skipped

    @property
    def is_done(self) -> bool:
        return self.pending is not None and self.pending <= 0

    def view(self) -> dict[str, Any]:
        return {
            "campaign_id": str(self.campaign_id),
            # Before the `started` event arrives the total is not known yet.
            "state": self.state if self.total is not None else "starting",
            "total": self.total,
            "pending": self.pending,
            "completed": self.completed,
            "failed": self.failed,
            "skipped": self.skipped,
        }


def completion_event(p: Progress) -> CampaignCompleted:
    return CampaignCompleted(
        event_id=uuid.uuid5(_COMPLETED_NS, str(p.campaign_id)),
        campaign_id=p.campaign_id,
        completed=p.completed,
        failed=p.failed,
        skipped=p.skipped,
    )
