"""Scheduler domain: campaign commands, validation and the rules of its state machine. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.scheduler.addresses import email_or_invalid, phone_or_invalid
from services.scheduler.campaigns import model
from services.scheduler.content.model import Sender as Sender
from services.scheduler.content.model import SenderIn as SenderIn
from services.scheduler.content.model import TemplateIn as TemplateIn
from services.scheduler.content.model import TemplateVersion as TemplateVersion
from services.scheduler.content.model import template_checked

# Re-exported: the errors' home is errors.py; callers still name them through the domain.
from services.scheduler.errors import Conflict as Conflict
from services.scheduler.errors import DomainError as DomainError
from services.scheduler.errors import Invalid as Invalid
from services.scheduler.errors import InvalidTransition as InvalidTransition
from services.scheduler.errors import NotFound as NotFound
from services.scheduler.identity.model import CreateUser as CreateUser
from services.scheduler.opt_outs.model import STOP_WORDS as STOP_WORDS
from services.scheduler.opt_outs.model import InboundSms as InboundSms
from services.scheduler.opt_outs.model import OptOut as OptOut
from services.scheduler.opt_outs.model import is_stop_message as is_stop_message
from services.scheduler.opt_outs.model import normalise_address as normalise_address
from shared import wire
from shared.events import Channel
from shared.reasons import SkipReason
from shared.text import check_text

CampaignState = model.State
# Namespace for deterministic send-requested event ids: a re-published page reuses its ids, so
# consumers see a duplicate, not a second request.
_SEND_NS = uuid.UUID("6f1c7c33-0d1e-4c55-9d8b-5b0e3c1f6a10")
# Variables every recipient row can provide, from its columns (the rest come from attributes).
RECIPIENT_COLUMNS = ("first_name", "last_name", "email", "phone")


# --- the state machine (../shared/DESIGN.md): the campaign model's --------------------------------

ALLOWED_FROM = model.ALLOWED_FROM


def ensure_allowed(campaign_id: uuid.UUID, state: str, action: str) -> None:
    model.ensure_allowed(campaign_id, state, action)


def abort_answer(
    *, total: int, members: set[str], acks: Mapping[str, int], relayed: bool,
    waited_seconds: float,
) -> dict[str, Any]:
    """What an abort answers, from the dispatchers' acknowledgements.

    Acknowledged only if at least one dispatcher answered and every live member of their group
    did: silence (a hung dispatcher, or none at all) is never taken for a yes. Any one answer
    means nothing unclaimed is sent afterwards (each dispatcher fences the campaign in the
    database before answering), so `pending` is the total less the most messages any answer
    counted as sent or settled; None without an answer.
    """
    settled = max(acks.values(), default=None)
    unresponsive = sorted(members - set(acks))
    acknowledged = bool(acks) and not unresponsive
    result: dict[str, Any] = {
        "pending": total - settled if settled is not None else None,
        "acknowledged": acknowledged,
        "acknowledged_by": sorted(acks),
        "unresponsive": unresponsive,
    }
    if acknowledged:
        return result
    if not relayed:
        why = "the abort is recorded but Kafka has not taken it yet; it will be published"
    elif unresponsive:
        why = (f"{', '.join(unresponsive)} did not answer within {waited_seconds:g} s "
               "(hung or unreachable?)")
    else:
        why = "no dispatcher is a live member of the dispatchers' group to answer"
    if acks:
        message = (f"not every dispatcher answered: {why}; those that answered start no "
                   "provider call for the campaign any more")
    else:
        message = (f"no dispatcher answered: {why}; the campaign is aborting, and dispatchers "
                   "skip its remaining messages once they read the abort")
    return {**result, "message": message}


def ensure_can_send_now(campaign_id: uuid.UUID, state: str) -> None:
    ensure_allowed(campaign_id, state, model.SEND_NOW)


def ensure_can_add_recipients(campaign_id: uuid.UUID, state: str) -> None:
    ensure_allowed(campaign_id, state, model.ADD_RECIPIENTS)


state_after_completion = model.state_after_completion


def ensure_schedulable_time(at: datetime, now: datetime | None = None) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise Invalid("the schedule needs a time zone, e.g. 2026-12-01T09:00:00+01:00")
    now = now or datetime.now(UTC)
    if at <= now:
        raise Invalid(f"the scheduled time {at.isoformat()} is in the past (now {now.isoformat()})")
    if at > now + timedelta(days=366):
        raise Invalid("the scheduled time is more than a year ahead")
    return at


# --- senders and templates ---------------------------------------------------------------------

def ensure_fits_channels(
    channels: list[Channel], sender: Sender, template: TemplateVersion
) -> None:
    problems = []
    for channel in channels:
        if template.body(channel) is None:
            problems.append(f"the template has no {channel} body")
    if "email" in channels and not sender.email:
        problems.append("an email campaign needs a sender with an email address")
    if "sms" in channels and not sender.sms_sender_id:
        problems.append("an SMS campaign needs a sender with an sms_sender_id")
    if problems:
        raise Invalid("; ".join(problems), [{"error": p} for p in problems])


# --- campaigns ---------------------------------------------------------------------------------

class CreateCampaign(BaseModel):
    """Command: create a draft campaign, from a stored sender/template or inline ones."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    # `p2p`: peer to peer, a user presses SEND per recipient.
    kind: Literal["mass", "p2p"] = "mass"
    channels: list[Channel] = Field(default_factory=list, max_length=2)
    # `channel` is shorthand for a one-channel campaign.
    channel: Channel | None = None
    sender_id: uuid.UUID | None = None
    sender: SenderIn | None = None
    template_id: uuid.UUID | None = None
    # Inline template text: the body for every channel of the campaign (subject for email).
    template: str | None = Field(default=None, max_length=100_000)
    subject: str | None = Field(default=None, max_length=500)

    @field_validator("template", "subject")
    @classmethod
    def renders(cls, value: str | None, info: ValidationInfo) -> str | None:
        return template_checked(value, str(info.field_name))

    @model_validator(mode="after")
    def one_of_each(self) -> CreateCampaign:
        if self.channel and self.channel not in self.channels:
            self.channels.append(self.channel)
        if not self.channels:
            raise ValueError("name at least one channel: channels ['email'] and/or ['sms']")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must not repeat")
        if (self.sender_id is None) == (self.sender is None):
            raise ValueError("give exactly one of sender_id or sender")
        if (self.template_id is None) == (self.template is None):
            raise ValueError("give exactly one of template_id or template")
        return self

    def inline_template(self) -> TemplateIn | None:
        if self.template is None:
            return None
        return TemplateIn(
            name=self.name,
            email_subject=self.subject if "email" in self.channels else None,
            email_body=self.template if "email" in self.channels else None,
            sms_body=self.template if "sms" in self.channels else None,
        )


class ScheduleCampaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("email", "phone", "first_name", "last_name", mode="before")
    @classmethod
    def blank_is_missing(cls, value: Any) -> Any:
        check_text(value)  # a CSV row's NUL: refused by line, not by the database
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("attributes", mode="before")
    @classmethod
    def storable_attributes(cls, value: Any) -> Any:
        return check_text(value)


def _distinct_channels(channels: list[Channel]) -> list[Channel]:
    if len(set(channels)) != len(channels):
        raise ValueError("channels must not repeat")
    return channels


class AddRecipients(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Recipient] = Field(min_length=1, max_length=100_000)


class SendToVoter(BaseModel):
    """Command, from a voter's page: send them an email and/or SMS."""

    model_config = ConfigDict(extra="forbid")

    channels: list[Channel] = Field(min_length=1, max_length=2)
    sender_id: uuid.UUID
    template_id: uuid.UUID

    _distinct = field_validator("channels")(_distinct_channels)


def voter_recipient(voter: Any) -> Recipient:
    attributes = dict(voter["attributes"] or {})
    if voter["preferred_language"]:
        attributes["preferred_language"] = voter["preferred_language"]
    return Recipient(email=voter["email"], phone=voter["phone"], first_name=voter["first_name"],
                     last_name=voter["last_name"], attributes=attributes)


class SendIndividually(BaseModel):
    """Command: send one recipient an email and/or SMS with a stored sender and template."""

    model_config = ConfigDict(extra="forbid")

    recipient: Recipient
    channels: list[Channel] = Field(min_length=1, max_length=2)
    sender_id: uuid.UUID
    template_id: uuid.UUID
    name: str | None = Field(default=None, max_length=200)

    _distinct = field_validator("channels")(_distinct_channels)


class RowError(BaseModel):
    line: int
    error: str


class Detected(BaseModel):
    """How a CSV file was read: its encoding and separator, as detected."""

    encoding: str
    delimiter: str


class CsvAdded(BaseModel):
    """What a recipients CSV added: the rows kept, the rows refused (listed by line, the first
    100) and how the file was read."""

    added: int
    rejected: int
    errors: list[RowError]
    detected: Detected


@dataclass(frozen=True)
class RecipientRow:
    """A recipient as stored: addresses normalised, invalid ones kept as given and flagged."""

    email: str | None
    email_invalid: bool
    phone: str | None
    phone_invalid: bool
    first_name: str | None
    last_name: str | None
    attributes: dict[str, Any]
    voter_id: int | None = None


def to_row(recipient: Recipient, region: str, voter_id: int | None = None) -> RecipientRow:
    email, email_invalid = email_or_invalid(recipient.email)
    phone, phone_invalid = phone_or_invalid(recipient.phone, region)
    return RecipientRow(email, email_invalid, phone, phone_invalid, recipient.first_name,
                        recipient.last_name, recipient.attributes, voter_id)


def missing_variables_error(count: int, recipient_ids: list[int], variables: set[str]) -> Invalid:
    return Invalid(
        f"{count} recipients lack template variables {sorted(variables)}; add them or change "
        "the template (nothing was sent)",
        [{"recipient_id": rid} for rid in recipient_ids],
    )


@lru_cache(maxsize=64)
def _text(campaign_id: uuid.UUID) -> str:
    return str(campaign_id)


def _address_and_skip(
    channel: Channel, row: Any, opted_out: frozenset[str] | set[str], skip_reason: str | None
) -> tuple[str | None, str | None]:
    """A recipient row's address on `channel` and why it is skipped (None: it is sent)."""
    if channel == "email":
        address, invalid = row["email"], row["email_invalid"]
    else:
        address, invalid = row["phone"], row["phone_invalid"]
    if skip_reason is None:
        skip_reason = (
            SkipReason.MISSING_ADDRESS.value if address is None
            else SkipReason.INVALID_ADDRESS.value if invalid
            else SkipReason.OPTED_OUT.value if address in opted_out
            else None
        )
    return address, skip_reason


def send_requested_for(
    *,
    campaign_id: uuid.UUID,
    channel: Channel,
    template: wire.TemplateRef,
    row: Any,
    opted_out: frozenset[str] | set[str] = frozenset(),
    skip_reason: str | None = None,
    now: datetime | None = None,
) -> wire.SendRequested:
    """The send-requested event of one recipient row for one channel.

    `skip_reason` forces a skip (e.g. `not_sent`); otherwise a missing, invalid or opted-out
    address is skipped with that reason.

    Built as the msgspec mirror of `shared.events.SendRequested` (shared.wire): every field
    comes from our own tables, typed by their columns, and this runs once per recipient of a
    million (pydantic construction and dumping were most of the fan-out's CPU).
    """
    address, skip_reason = _address_and_skip(channel, row, opted_out, skip_reason)
    attributes = row["attributes"]
    variables: dict[str, Any] = dict(attributes) if attributes else {}
    for column in RECIPIENT_COLUMNS:
        value = row[column]
        if value is not None:
            variables[column] = value
    if now is None:
        now = datetime.now(UTC)
    return wire.SendRequested(
        event_id=wire.uuid5(_SEND_NS, f"{_text(campaign_id)}:{row['id']}:{channel}"),
        occurred_at=now,
        requested_at=now,
        campaign_id=campaign_id,
        recipient_id=row["id"],
        voter_id=row.get("voter_id"),
        channel=channel,
        address=None if skip_reason else address,
        skip_reason=skip_reason,
        variables=variables,
        template=template,
    )


# --- peer to peer ------------------------------------------------------------------------------

class EndCampaign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirmation: str

    @field_validator("confirmation")
    @classmethod
    def typed_end(cls, value: str) -> str:
        if value != "END":
            raise ValueError('type END (in capitals) to end the campaign')
        return value


def ensure_p2p(campaign_id: uuid.UUID, kind: str) -> None:
    if kind != "p2p":
        raise Invalid(f"campaign {campaign_id} is not a peer-to-peer campaign")
