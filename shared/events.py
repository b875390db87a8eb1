"""Versioned event schemas carried on Kafka.

Events are facts, named in the past tense, frozen, and each has a unique `event_id` so every
consumer can be idempotent on it. `schema_version` lets a consumer refuse (DLQ) a version it does
not understand instead of misreading it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

Channel = Literal["email", "sms"]
OutcomeStatus = Literal["completed", "failed", "skipped"]


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    campaign_id: uuid.UUID
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class SenderInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    email: str | None = None
    sms_sender_id: str | None = None


class TemplateRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    version: int


class ChannelTemplate(BaseModel):
    model_config = ConfigDict(frozen=True)

    body: str
    subject: str | None = None


class CampaignContext(BaseModel):
    """What a dispatcher needs of a campaign to send its requests: the templates and sender
    pinned when it started. Carried by the send-request records themselves, so a request never
    waits for another topic's (the `started` event's) consumer to have caught up."""

    model_config = ConfigDict(frozen=True)

    organisation_id: uuid.UUID | None = None
    template: TemplateRef
    templates: dict[Channel, ChannelTemplate]
    sender: SenderInfo


class SendRequested(Event):
    """Scheduler → dispatcher: send one recipient one channel's message of a campaign."""

    type: Literal["send_requested"] = "send_requested"
    recipient_id: int
    # The directory voter the recipient was copied from, if any; carried through to outcomes
    # so the tracker can answer "what did this voter get?". Optional: older producers omit it.
    voter_id: int | None = None
    channel: Channel
    # None when the recipient has no usable address for the channel: the dispatcher reports it
    # skipped with `skip_reason` (a `shared.reasons.SkipReason` value) and calls no provider.
    address: str | None
    skip_reason: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    template: TemplateRef
    requested_at: datetime = Field(default_factory=_now)
    # Set on a request published alone (e.g. a peer-to-peer SEND); inside a batch, the batch
    # carries it once for all its requests. Optional: older producers omit it.
    campaign: CampaignContext | None = None


def same_campaign(campaign_id: uuid.UUID | None, items: Iterable[Any], what: str) -> None:
    """A batch holds one campaign's items only (its key, and its consumers' grouping, say so)."""
    if any(item.campaign_id != campaign_id for item in items):
        raise ValueError(f"every {what} of a batch belongs to the batch's campaign")


class SendRequestedBatch(Event):
    """Scheduler → dispatcher: several send requests of one campaign in one Kafka record.

    A mass send-out carries its requests in these (up to a few hundred each), so the per-record
    costs of Kafka and of the consumers are paid once per batch rather than once per message.
    Each request is still a whole `SendRequested`, with its own event id: consumers dedupe per
    request, and a request is the same whether it came alone or in a batch. The topic carries
    both forms; a single request is published as itself.
    """

    type: Literal["send_requested_batch"] = "send_requested_batch"
    requests: list[SendRequested] = Field(min_length=1)
    # The campaign's templates and sender, once for every request of the batch.
    campaign: CampaignContext | None = None

    @model_validator(mode="after")
    def _one_campaign(self) -> SendRequestedBatch:
        same_campaign(self.campaign_id, self.requests, "request")
        return self


class _Outcome(Event):
    recipient_id: int
    voter_id: int | None = None  # copied from the SendRequested
    channel: Channel
    # A `shared.reasons.SkipReason` / `FailReason` value, or a provider's own refusal text.
    reason: str | None = None
    provider_message_id: str | None = None
    # The address the message went (or would have gone) to, for the recipient report.
    # Optional: older producers omit it.
    address: str | None = None


class MessageSent(_Outcome):
    """The provider accepted the message (recipient state `completed`)."""

    type: Literal["sent"] = "sent"

    @property
    def status(self) -> OutcomeStatus:
        return "completed"


class MessageFailed(_Outcome):
    """The provider refused the message for good, or retries ran out."""

    type: Literal["failed"] = "failed"

    @property
    def status(self) -> OutcomeStatus:
        return "failed"


class MessageSkipped(_Outcome):
    """Nothing was sent, by design (e.g. `missing_address`)."""

    type: Literal["skipped"] = "skipped"

    @property
    def status(self) -> OutcomeStatus:
        return "skipped"


Outcome = Annotated[MessageSent | MessageFailed | MessageSkipped, Field(discriminator="type")]
OUTCOME: TypeAdapter[Outcome] = TypeAdapter(Outcome)


class OutcomeBatch(Event):
    """Dispatcher → tracker: outcomes of one campaign in one Kafka record (as
    `SendRequestedBatch` is for requests). Each outcome keeps its own event id."""

    type: Literal["outcome_batch"] = "outcome_batch"
    outcomes: list[Outcome] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_campaign(self) -> OutcomeBatch:
        same_campaign(self.campaign_id, self.outcomes, "outcome")
        return self


# What a record of `sendout.outcomes.v1` holds: one outcome, or a batch of them.
OutcomeRecord = Annotated[MessageSent | MessageFailed | MessageSkipped | OutcomeBatch,
                          Field(discriminator="type")]
OUTCOME_RECORD: TypeAdapter[OutcomeRecord] = TypeAdapter(OutcomeRecord)


class CampaignStarted(Event):
    """Scheduler: the campaign began sending; `total` recipient-channel messages will follow.

    It carries the templates and sender so dispatchers can render without reading the
    scheduler's tables.
    """

    type: Literal["started"] = "started"
    organisation_id: uuid.UUID | None = None
    total: int
    totals: dict[Channel, int]
    template: TemplateRef
    templates: dict[Channel, ChannelTemplate]
    sender: SenderInfo

    def context(self) -> CampaignContext:
        """What each of the campaign's send requests carries of this."""
        return CampaignContext(organisation_id=self.organisation_id, template=self.template,
                               templates=self.templates, sender=self.sender)


class CampaignScheduled(Event):
    type: Literal["scheduled"] = "scheduled"
    scheduled_for: datetime


class CampaignCanceled(Event):
    """A schedule was canceled before its time: nothing was sent, the campaign is a draft."""

    type: Literal["canceled"] = "canceled"


class CampaignAborted(Event):
    """Operator abort: no provider call may start for this campaign any more; requests still in
    Kafka are reported skipped (`aborted`)."""

    type: Literal["aborted"] = "aborted"


class AbortAcknowledged(Event):
    """Dispatcher instance `instance`: no provider call for the campaign starts from now on.

    `settled` is how many of the campaign's messages had an outcome in the dispatcher's records
    when it acknowledged.
    """

    type: Literal["abort_acknowledged"] = "abort_acknowledged"
    instance: str
    settled: int


class CampaignCompleted(Event):
    """Tracker: nothing is pending any more (after an abort too: then the campaign is aborted)."""

    type: Literal["completed"] = "completed"
    completed: int
    failed: int
    skipped: int


DeliveryStatus = Literal["delivered", "not_delivered"]


class DeliveryReported(Event):
    """Receipts webhook → tracker: the provider says what became of a message it accepted.

    It refines a `completed` recipient into delivered / not delivered. The webhook knows the
    campaign only once the message's outcome has been projected; a receipt that overtakes its
    outcome has no campaign yet (and is keyed by the provider message id instead).
    """

    # Optional here alone (see above): a narrower field than Event's, on purpose.
    campaign_id: uuid.UUID | None = None  # type: ignore[assignment]
    type: Literal["delivery_reported"] = "delivery_reported"
    provider_message_id: str
    status: DeliveryStatus
    reason: str | None = None


RECEIPT = TypeAdapter(DeliveryReported)


class AddressOptedOut(BaseModel):
    """Scheduler: an organisation's recipient asked not to be messaged (STOP, or the API).

    Dispatchers check it before every provider call, so an opt-out that arrives after SEND was
    pressed but before the message left still stops it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    organisation_id: uuid.UUID
    address: str
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


OPTED_OUT = TypeAdapter(AddressOptedOut)


class ErasedRecipient(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    campaign_id: uuid.UUID
    recipient_id: int


class RecipientsErased(BaseModel):
    """Scheduler: a deleted voter's personal data was erased (`DELETE /voters/{id}?erase=true`)
    from these campaign recipients — at once for finished campaigns, when the campaign ends for
    the others. Every service blanks its own copies of them (the tracker's report rows and
    voter history, the dispatcher's recorded outcomes); rows are kept, their addresses go.

    Also written by the scheduler's trigger `blank_erased_recipients` (migration 080), as JSON
    of this shape."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    organisation_id: uuid.UUID
    voter_id: int | None = None
    recipients: list[ErasedRecipient]
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


ERASURE = TypeAdapter(RecipientsErased)


class _IdentityEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    # Hex SHA-256 of the token: the token itself is shown once, to its user, and never sent.
    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    user_id: uuid.UUID
    organisation_id: uuid.UUID
    occurred_at: datetime = Field(default_factory=_now)
    schema_version: Literal[1] = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ApiTokenIssued(_IdentityEvent):
    """Scheduler: a user of an organisation holds this API token (keyed by its hash, on a
    compacted topic, so the latest word on each token is kept for good)."""

    type: Literal["api_token_issued"] = "api_token_issued"
    user_name: str


class ApiTokenRevoked(_IdentityEvent):
    """Scheduler: the token no longer authenticates anyone, anywhere."""

    type: Literal["api_token_revoked"] = "api_token_revoked"


IdentityEvent = Annotated[ApiTokenIssued | ApiTokenRevoked, Field(discriminator="type")]
IDENTITY: TypeAdapter[IdentityEvent] = TypeAdapter(IdentityEvent)


LifecycleEvent = Annotated[
    CampaignStarted
    | CampaignScheduled
    | CampaignCanceled
    | CampaignAborted
    | AbortAcknowledged
    | CampaignCompleted,
    Field(discriminator="type"),
]
LIFECYCLE: TypeAdapter[LifecycleEvent] = TypeAdapter(LifecycleEvent)
SEND_REQUESTED = TypeAdapter(SendRequested)
# What a record of `sendout.send-requested.v1` holds: one request, or a batch of them. (Not a
# discriminated union: a single request may omit `type`, which defaults.)
SEND_REQUESTED_RECORD: TypeAdapter[SendRequested | SendRequestedBatch] = TypeAdapter(
    SendRequested | SendRequestedBatch)
