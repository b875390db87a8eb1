"""Tracker domain: progress arithmetic and completion. No I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.events import CampaignCompleted
from shared.reasons import SkipReason

# Deterministic so that a completion re-detected after a redelivery has the same event id.
_COMPLETED_NS = uuid.UUID("3b8f8d7e-4f0a-4b0e-9a55-2f7c2e6d9c01")
COUNTERS = ("completed", "failed", "skipped")
REASON_STATUSES = ("failed", "skipped", "not_delivered")


@dataclass(frozen=True)
class Reasons:
    """How many recipients failed, were skipped, or were not delivered, per reason."""

    by_status: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[list[Any]]) -> Reasons:
        by_status: dict[str, dict[str, int]] = {}
        for status, reason, n in rows:
            by_status.setdefault(status, {})[reason or "unknown"] = int(n)
        return cls(by_status)

    def of(self, status: str) -> dict[str, int]:
        return dict(sorted(self.by_status.get(status, {}).items()))

    def __add__(self, other: Reasons) -> Reasons:
        merged: dict[str, dict[str, int]] = {}
        for part in (self, other):
            for status, reasons in part.by_status.items():
                into = merged.setdefault(status, {})
                for reason, n in reasons.items():
                    into[reason] = into.get(reason, 0) + n
        return Reasons(merged)


@dataclass(frozen=True)
class Counts:
    total: int | None
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    # Receipts refine `completed`: delivered + not_delivered <= completed (receipts lag).
    delivered: int = 0
    not_delivered: int = 0
    reasons: Reasons = field(default_factory=Reasons)

    @property
    def pending(self) -> int | None:
        if self.total is None:
            return None
        return self.total - self.completed - self.failed - self.skipped

    def view(self) -> dict[str, Any]:
        skipped = self.reasons.of("skipped")
        return {"total": self.total, "pending": self.pending, "completed": self.completed,
                "failed": self.failed, "skipped": self.skipped,
                # The seed's "opted out" counter: skipped because the address opted out.
                "opted_out": skipped.get(SkipReason.OPTED_OUT, 0),
                "delivered": self.delivered, "not_delivered": self.not_delivered,
                "reasons": {status: self.reasons.of(status) for status in REASON_STATUSES}}


@dataclass(frozen=True)
class Progress:
    campaign_id: uuid.UUID
    state: str
    started: bool
    channels: dict[str, Counts] = field(default_factory=dict)
    organisation_id: uuid.UUID | None = None

    @property
    def counts(self) -> Counts:
        return Counts(
            total=self._total,
            completed=sum(c.completed for c in self.channels.values()),
            failed=sum(c.failed for c in self.channels.values()),
            skipped=sum(c.skipped for c in self.channels.values()),
            delivered=sum(c.delivered for c in self.channels.values()),
            not_delivered=sum(c.not_delivered for c in self.channels.values()),
            reasons=sum((c.reasons for c in self.channels.values()), Reasons()),
        )

    @property
    def _total(self) -> int | None:
        """Known once started and every channel's total is known."""
        totals = [c.total for c in self.channels.values()]
        if not self.started or None in totals:
            return None
        return sum(t for t in totals if t is not None)

    @property
    def is_done(self) -> bool:
        pending = self.counts.pending
        return pending is not None and pending <= 0

    @property
    def final_state(self) -> str:
        return "aborted" if self.state == "aborting" else "completed"

    def view(self) -> dict[str, Any]:
        return {
            "campaign_id": str(self.campaign_id),
            # Before the `started` event arrives the total is not known yet.
            "state": self.state if self.started else "starting",
            **self.counts.view(),
            "by_channel": {name: c.view() for name, c in sorted(self.channels.items())},
        }


def completion_event(p: Progress) -> CampaignCompleted:
    counts = p.counts
    return CampaignCompleted(
        event_id=uuid.uuid5(_COMPLETED_NS, str(p.campaign_id)),
        campaign_id=p.campaign_id,
        completed=counts.completed,
        failed=counts.failed,
        skipped=counts.skipped,
    )
