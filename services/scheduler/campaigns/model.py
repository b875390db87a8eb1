"""A campaign and its state machine (../shared/DESIGN.md, "Campaign states"). No I/O.

```
draft ──send now──▶ sending ──nothing pending (tracker)──▶ completed
  │  ▲                 │
  │  └──cancel──┐      ├──abort──▶ aborting ──nothing pending (tracker)──▶ aborted
  └─schedule─▶ scheduled ──time reached──▶ sending
                 └──time reached, P2P, nobody pressed SEND──▶ completed
P2P: draft | scheduled | sending ──End Campaign──▶ completed
```

"Fanning out" is not a state of its own: a `sending` (or `aborting`) campaign is fanned out
until its checkpoint says done. "Ended" neither: an ended peer-to-peer campaign is
`completed`, and is fanned out once more to report those nobody pressed SEND for.

Each transition checks the current state (`InvalidTransition`, HTTP 409, if it does not
apply), moves the campaign and returns the events it causes: lifecycle events for the outbox
(`CampaignScheduled`, `CampaignCanceled`, `CampaignAborted`) and what the use case has to
carry out (`SendingStarted`, `Ended`, `FanOutDue`, `Finished`).

The rules of peer to peer (the seed's, ../shared/seeds/002_*), carried out by the use cases
(start sending, press SEND, end):

- non-scheduled campaign: SEND sends at once;
- scheduled campaign, before its time: SEND queues; the queued go out when the time comes;
- after the time: SEND sends at once; recipients nobody pressed SEND for are never messaged;
- one user sends one campaign at a time (the database's primary key decides, not a check);
- End Campaign needs the typed word END; the campaign is completed; those already SENT still
  go (a scheduled campaign ended before its time sends to nobody);
- opted-out recipients are never messaged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from services.scheduler.errors import Invalid, InvalidTransition
from shared.events import CampaignAborted, CampaignCanceled, CampaignScheduled
from shared.reasons import SkipReason


class State(StrEnum):
    """A campaign's state, as stored (`campaigns.state`, checked by the database too)."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    ABORTING = "aborting"
    ABORTED = "aborted"
    COMPLETED = "completed"

    @property
    def finished(self) -> bool:
        """Nothing more is sent for the campaign (its snapshots may be erased at once)."""
        return self in FINISHED


FINISHED = frozenset({State.COMPLETED, State.ABORTED})
# Not yet started: a campaign that sends nobody until it starts (and may change its lists).
UNSTARTED = frozenset({State.DRAFT, State.SCHEDULED})


class Kind(StrEnum):
    MASS = "mass"
    INDIVIDUAL = "individual"
    # Peer to peer: a user presses SEND per recipient.
    P2P = "p2p"


# The operator's actions (in the words the refusals use) and the states each is allowed in.
ADD_RECIPIENTS = "add recipients"
TARGET_LISTS = "target lists"
SEND_NOW = "send out now"
SCHEDULE = "schedule"
CANCEL = "cancel the schedule"
ABORT = "abort"
START_SENDING = "start sending"
PRESS_SEND = "press SEND"
END = "end the campaign"

ALLOWED_FROM: dict[str, frozenset[State]] = {
    ADD_RECIPIENTS: frozenset({State.DRAFT}),
    TARGET_LISTS: frozenset({State.DRAFT}),
    SEND_NOW: frozenset({State.DRAFT}),
    SCHEDULE: frozenset({State.DRAFT}),
    CANCEL: frozenset({State.SCHEDULED}),
    ABORT: frozenset({State.SENDING}),
    START_SENDING: frozenset({State.DRAFT, State.SCHEDULED, State.SENDING}),
    PRESS_SEND: frozenset({State.SCHEDULED, State.SENDING}),
    END: frozenset({State.DRAFT, State.SCHEDULED, State.SENDING}),
}
# States the tracker's "nothing pending" applies to (an ended P2P campaign: its final counts).
COMPLETABLE = frozenset({State.SENDING, State.ABORTING, State.COMPLETED})


def ensure_allowed(campaign_id: uuid.UUID, state: str, action: str) -> State:
    """`state` as a `State`, if `action` is allowed in it; else `InvalidTransition` (409)."""
    if state not in ALLOWED_FROM[action]:
        raise InvalidTransition(campaign_id, state, action)
    return State(state)


def state_after_completion(state: str) -> State:
    """What the tracker's "nothing pending" means for the campaign."""
    return State.ABORTED if state == State.ABORTING else State.COMPLETED


# --- what transitions cause, besides lifecycle events -------------------------------------------

@dataclass(frozen=True)
class SendingStarted:
    """The campaign moved to `sending`: its total is fixed now and its fan-out starts."""

    campaign_id: uuid.UUID


@dataclass(frozen=True)
class Ended:
    """The campaign was ended (completed): senders released, a last fan-out pass reports those
    nobody pressed SEND for. `never_started`: it was a draft or scheduled, so even those queued
    with SEND are not messaged (and its total is fixed now)."""

    campaign_id: uuid.UUID
    never_started: bool


@dataclass(frozen=True)
class FanOutDue:
    """A fan-out pass is due for a campaign already sending (e.g. a further P2P sender)."""

    campaign_id: uuid.UUID


@dataclass(frozen=True)
class Finished:
    """Nothing is pending any more: the campaign is `state` (completed or aborted)."""

    campaign_id: uuid.UUID
    state: State


CampaignEvent = (
    CampaignScheduled | CampaignCanceled | CampaignAborted | SendingStarted | Ended | FanOutDue
    | Finished
)


def fans_out(event: CampaignEvent) -> bool:
    """Whether a fan-out pass follows the event (once its transaction committed)."""
    return isinstance(event, SendingStarted | Ended | FanOutDue)


@dataclass
class Campaign:
    id: uuid.UUID
    kind: Kind
    state: State
    organisation_id: uuid.UUID | None = None
    scheduled_for: datetime | None = None
    channels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Rows give plain strings: an unknown one fails here, not deep in a transition.
        self.kind = Kind(self.kind)
        self.state = State(self.state)

    @property
    def is_p2p(self) -> bool:
        return self.kind is Kind.P2P

    def _allow(self, action: str) -> None:
        ensure_allowed(self.id, self.state, action)

    def _ensure_p2p(self) -> None:
        if not self.is_p2p:
            raise Invalid(f"campaign {self.id} is not a peer-to-peer campaign")

    # --- before it starts ---------------------------------------------------------------------

    def ensure_recipients_can_change(self) -> None:
        """Recipients (and target lists) change only while a draft."""
        self._allow(ADD_RECIPIENTS)

    def send_now(self) -> list[CampaignEvent]:
        self._allow(SEND_NOW)
        self.state = State.SENDING
        return [SendingStarted(self.id)]

    def schedule(self, at: datetime) -> list[CampaignEvent]:
        self._allow(SCHEDULE)
        self.state = State.SCHEDULED
        self.scheduled_for = at
        return [CampaignScheduled(campaign_id=self.id, scheduled_for=at)]

    def cancel_schedule(self) -> list[CampaignEvent]:
        """Canceled before its time, the campaign sends to nobody and is a draft again."""
        self._allow(CANCEL)
        self.state = State.DRAFT
        self.scheduled_for = None
        return [CampaignCanceled(campaign_id=self.id)]

    def fire_due(self, pressed: int) -> list[CampaignEvent]:
        """The scheduled time came; `pressed`: recipients a P2P user queued with SEND."""
        if self.state is not State.SCHEDULED:
            raise InvalidTransition(self.id, self.state, "send on schedule")
        self.state = State.SENDING
        events: list[CampaignEvent] = [SendingStarted(self.id)]
        if self.is_p2p and not pressed:
            # Nobody pressed SEND before the time: nobody is messaged; it is completed.
            self.state = State.COMPLETED
            events.append(Ended(self.id, never_started=False))
        return events

    # --- while it sends -----------------------------------------------------------------------

    def abort(self) -> list[CampaignEvent]:
        self._allow(ABORT)
        self.state = State.ABORTING
        return [CampaignAborted(campaign_id=self.id)]

    def complete(self) -> list[CampaignEvent]:
        """The tracker says nothing is pending: completed (aborted, if it was aborting). A
        campaign in any other state ignores it (a late or repeated report)."""
        if self.state not in COMPLETABLE:
            return []
        self.state = state_after_completion(self.state)
        return [Finished(self.id, self.state)]

    # --- peer to peer -------------------------------------------------------------------------

    def start_sending(self) -> list[CampaignEvent]:
        """A user begins sending from the campaign: a draft starts sending now; a scheduled one
        stays scheduled (SEND queues until its time)."""
        self._ensure_p2p()
        self._allow(START_SENDING)
        if self.state is State.DRAFT:
            self.state = State.SENDING
            return [SendingStarted(self.id)]
        if self.state is State.SENDING:
            return [FanOutDue(self.id)]
        return []

    def press_send(self) -> bool:
        """Whether a press of SEND sends at once (True) or queues for the scheduled time."""
        self._ensure_p2p()
        self._allow(PRESS_SEND)
        return self.state is State.SENDING

    def end(self) -> list[CampaignEvent]:
        """End Campaign: completed; those already SENT still go."""
        self._ensure_p2p()
        self._allow(END)
        never_started = self.state in UNSTARTED
        self.state = State.COMPLETED
        return [Ended(self.id, never_started=never_started)]

    # --- the fan-out --------------------------------------------------------------------------

    def fans_out(self) -> bool:
        # An aborting campaign is fanned out to its end as well: dispatchers report every
        # request of it skipped (`aborted`), so each recipient gets its final state. An ended
        # peer-to-peer campaign is fanned out once more to report those nobody pressed SEND for.
        return self.state in (State.SENDING, State.ABORTING) or (
            self.is_p2p and self.state is State.COMPLETED)

    def fan_out_selection(self) -> tuple[bool | None, str | None]:
        """Which recipients a pass publishes (all: None; pressed: True; not pressed: False),
        and the skip reason it forces on them."""
        if not self.is_p2p:
            return None, None
        if self.state is State.COMPLETED:
            return False, SkipReason.NOT_SENT.value
        # Peer to peer: only those a user pressed SEND for (the rest go out when pressed).
        return True, None
