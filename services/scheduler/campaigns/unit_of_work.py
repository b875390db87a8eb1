"""What the campaign use cases need of storage: a unit of work (one transaction) holding the
campaign repository and the outbox. The asyncpg implementation is in
services/scheduler/adapters/uow.py; tests use a fake (tests/unit/fake_scheduler_uow.py).

Used as `async with uow: ...; await uow.commit()`: leaving the block without `commit()`
(a refusal, an error) rolls everything back, the outbox's records included.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

from services.scheduler.campaigns.model import Campaign, Kind, State
from services.scheduler.domain import RecipientRow, Sender, SenderIn, TemplateIn, TemplateVersion
from shared import wire
from shared.auth import Principal

# The user who acted, or the name of the service that did ("scheduler", "tracker").
Actor = Principal | str
# (topic, key, value): a Kafka record to be (services/scheduler/outbox.py).
OutboxRecord = tuple[str, bytes | None, bytes]


@dataclass(frozen=True)
class RecipientsFit:
    """Whether a campaign's recipients can fill its template: how many it has (its target
    lists' voters included), and those that lack a variable the template uses."""

    recipients: int
    variables: set[str] = field(default_factory=set)
    missing: int = 0
    missing_ids: list[int] = field(default_factory=list)


class CampaignRepository(Protocol):
    async def add_sender(self, sender: SenderIn, organisation_id: uuid.UUID) -> Sender: ...

    async def sender(self, sender_id: uuid.UUID, organisation_id: uuid.UUID) -> Sender | None:
        """The organisation's sender (None: another's, or none)."""

    async def add_template(
        self, template: TemplateIn, organisation_id: uuid.UUID
    ) -> TemplateVersion: ...

    async def latest_template(
        self, template_id: uuid.UUID, organisation_id: uuid.UUID
    ) -> TemplateVersion | None:
        """The organisation's template at its latest version (None: another's, or none)."""

    async def add(
        self, *, name: str, kind: Kind, channels: Sequence[str], sender_id: uuid.UUID,
        template: TemplateVersion, organisation_id: uuid.UUID,
    ) -> uuid.UUID:
        """A new draft campaign; its id."""

    async def add_recipients(
        self, campaign_id: uuid.UUID, rows: Sequence[RecipientRow]
    ) -> int: ...

    async def voter(
        self, organisation_id: uuid.UUID, voter_id: int
    ) -> Mapping[str, Any] | None:
        """The organisation's voter (None: another's, or none), as the voters table holds it
        (opted_out, first_name, last_name, email, phone, preferred_language, attributes)."""

    async def get(
        self, campaign_id: uuid.UUID, organisation_id: uuid.UUID | None = None,
        *, share: bool = False,
    ) -> Campaign | None:
        """The campaign, row-locked until the unit of work ends (FOR UPDATE; `share`: FOR
        SHARE); with `organisation_id`, None unless it is that organisation's."""

    async def claim_due(self, limit: int) -> list[Campaign]:
        """Scheduled campaigns whose time came, locked; other replicas skip them."""

    async def recipients_fit(self, campaign_id: uuid.UUID) -> RecipientsFit: ...

    async def snapshot_lists(self, campaign_id: uuid.UUID) -> int:
        """Copy the voters of the campaign's target lists into its recipients."""

    async def start_sending(self, campaign_id: uuid.UUID) -> int:
        """Store `sending`, fixing the total and the started event's id; the total."""

    async def set_scheduled(self, campaign_id: uuid.UUID, at: datetime) -> None: ...

    async def set_draft(self, campaign_id: uuid.UUID) -> None: ...

    async def set_aborting(self, campaign_id: uuid.UUID) -> None: ...

    async def set_abort_pending(self, campaign_id: uuid.UUID, pending: int) -> None: ...

    async def end(self, campaign_id: uuid.UUID) -> None:
        """Store `completed`, with a last fan-out pass to come."""

    async def finish(
        self, campaign_id: uuid.UUID, state: State, counts: dict[str, Any]
    ) -> None: ...

    async def total(self, campaign_id: uuid.UUID) -> int: ...

    async def clear_presses(self, campaign_id: uuid.UUID) -> None: ...

    async def pressed_count(self, campaign_id: uuid.UUID) -> int: ...

    async def release_senders(self, campaign_ids: Sequence[uuid.UUID]) -> None: ...

    async def claim_sender(
        self, user_id: uuid.UUID, campaign_id: uuid.UUID
    ) -> tuple[bool, uuid.UUID | None]:
        """(True, campaign) if this made the user its sender; else (False, the campaign the
        user is sending from already)."""

    async def is_sender(self, user_id: uuid.UUID, campaign_id: uuid.UUID) -> bool: ...

    async def press(
        self, campaign_id: uuid.UUID, recipient_id: int, user_id: uuid.UUID
    ) -> tuple[Mapping[str, Any] | None, bool]:
        """Mark SEND pressed: (recipient, True) the first time, (recipient, False) after,
        (None, False) if there is no such recipient."""

    async def context(self, campaign_id: uuid.UUID) -> wire.CampaignContext:
        """The templates and sender each of the campaign's send requests carries."""

    async def opted_out(
        self, organisation_id: uuid.UUID, addresses: Sequence[str]
    ) -> set[str]: ...

    async def wait_for_fanout_pass(self, campaign_id: uuid.UUID) -> None:
        """Wait for a fan-out pass in flight, and keep the next from starting until the unit
        of work ends."""

    async def first_time(self, event_id: uuid.UUID) -> bool:
        """Record a consumed event; False if it was already (events are applied once)."""

    async def audit(
        self, campaign_id: uuid.UUID, action: str, actor: Actor, details: dict[str, Any]
    ) -> None: ...


class UnitOfWork(Protocol):
    # Read-only here, so that an implementation may name its own repository's class.
    @property
    def campaigns(self) -> CampaignRepository: ...

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def add_to_outbox(self, records: Sequence[OutboxRecord]) -> int | None:
        """Records to publish once this unit of work commits, in order; the last one's id."""

    async def relayed(self, outbox_id: int | None) -> bool:
        """Whether the outbox record was published (and removed) already."""

    async def commit(self) -> None: ...


class FanOut(Protocol):
    """Starts (or resumes) a campaign's fan-out in the background; idempotent."""

    def kick(self, campaign_id: uuid.UUID) -> None: ...
