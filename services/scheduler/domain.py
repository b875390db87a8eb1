"""Scheduler domain: campaign commands, validation and the rules of its state machine. No I/O."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import Channel, SendRequested, TemplateRef

CampaignState = Literal["draft", "scheduled", "sending", "aborting", "aborted", "completed"]
# Namespace for deterministic send-requested event ids: a re-published page reuses its ids, so
# consumers see a duplicate, not a second request.
_SEND_NS = uuid.UUID("6f1c7c33-0d1e-4c55-9d8b-5b0e3c1f6a10")
_ENV = SandboxedEnvironment()


class DomainError(Exception):
    """Base of the errors the HTTP edge maps to a 4xx."""


class NotFound(DomainError):
    pass


class InvalidTransition(DomainError):
    def __init__(self, campaign_id: uuid.UUID, state: str, action: str) -> None:
        super().__init__(f"cannot {action}: campaign {campaign_id} is {state}")
        self.state = state


class Invalid(DomainError):
    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class Sender(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    sms_sender_id: str | None = Field(default=None, max_length=20)


class CreateCampaign(BaseModel):
    """Command: create a draft campaign."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    channel: Channel
    sender: Sender
    subject: str | None = Field(default=None, max_length=500)
    template: str = Field(max_length=100_000)

    @field_validator("template")
    @classmethod
    def template_renders(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("template must not be empty")
        try:
            _ENV.parse(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
        return value

    @model_validator(mode="after")
    def sender_fits_channel(self) -> CreateCampaign:
        if self.channel == "email" and not self.sender.email:
            raise ValueError("an email campaign needs sender.email")
        return self


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
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value


class AddRecipients(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Recipient] = Field(min_length=1, max_length=100_000)


_KNOWN_COLUMNS = {"email", "phone", "first_name", "last_name"}


def parse_csv(lines: Iterable[str]) -> list[Recipient]:
    """Recipients from CSV with a header row. Unknown columns become template attributes.

    Raises `Invalid` listing every bad row (up to 100), so an upload is all-or-nothing.
    """
    reader = csv.DictReader(lines)
    if not reader.fieldnames:
        raise Invalid("CSV is empty: a header row is required")
    header = [h.strip() for h in reader.fieldnames]
    if not _KNOWN_COLUMNS & set(header):
        raise Invalid(f"CSV header must name at least one of {sorted(_KNOWN_COLUMNS)}")
    errors: list[dict[str, Any]] = []
    out: list[Recipient] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            errors.append({"line": line, "error": "more fields than the header has"})
            continue
        fields = {k.strip(): (v or "") for k, v in row.items() if k is not None}
        try:
            out.append(
                Recipient(
                    **{k: fields.get(k) for k in _KNOWN_COLUMNS},
                    attributes={k: v for k, v in fields.items() if k not in _KNOWN_COLUMNS},
                )
            )
        except ValueError as exc:
            errors.append({"line": line, "error": str(exc)})
    if errors:
        raise Invalid(f"{len(errors)} invalid CSV rows; nothing was added", errors[:100])
    if not out:
        raise Invalid("CSV has a header but no recipients")
    return out


def csv_lines(data: bytes) -> io.StringIO:
    try:
        return io.StringIO(data.decode("utf-8-sig"), newline="")
    except UnicodeDecodeError as exc:
        raise Invalid(f"CSV must be UTF-8: {exc}") from exc


def ensure_can_send_now(campaign_id: uuid.UUID, state: str) -> None:
    if state != "draft":
        raise InvalidTransition(campaign_id, state, "send out now")


def ensure_can_add_recipients(campaign_id: uuid.UUID, state: str) -> None:
    if state != "draft":
        raise InvalidTransition(campaign_id, state, "add recipients")


def send_requested_for(
    *,
    campaign_id: uuid.UUID,
    channel: Channel,
    template: TemplateRef,
    row: dict[str, Any] | Any,
) -> SendRequested:
    """The send-requested event of one recipient row (address None → the dispatcher skips it)."""
    address = row["email"] if channel == "email" else row["phone"]
    variables: dict[str, Any] = dict(row["attributes"] or {})
    variables.update(
        first_name=row["first_name"] or "",
        last_name=row["last_name"] or "",
    )
    return SendRequested(
        event_id=uuid.uuid5(_SEND_NS, f"{campaign_id}:{row['id']}:{channel}"),
        campaign_id=campaign_id,
        recipient_id=row["id"],
        voter_id=row.get("voter_id"),
        channel=channel,
        address=address,
        variables=variables,
        template=template,
    )
