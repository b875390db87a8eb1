"""Senders and templates, the content of messages: what each is, and the rules a new one must
pass (a template compiles and renders for a sample recipient; a sender's addresses are
valid). No I/O."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from services.scheduler.addresses import normalise_email
from shared import templating
from shared.events import Channel
from shared.templating import TemplateProblem

_SMS_SENDER = re.compile(r"^(?:[A-Za-z0-9 ]{1,11}|\+[1-9]\d{6,14})$")


def template_checked(value: str | None, what: str) -> str | None:
    """The template text, if it compiles and renders for a sample recipient (shared.templating's
    check: within a time limit, sizes and work bounded, output only text and numbers); else a
    ValueError naming the field and the problem, which the API answers with 422."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    try:
        templating.check_template(value)
    except TemplateProblem as problem:
        raise ValueError(f"{what}: {problem}") from None
    return value


class SenderIn(BaseModel):
    """Who a message is from: a display name, an email address and/or an SMS sender id."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    sms_sender_id: str | None = Field(default=None, max_length=16)

    @field_validator("email")
    @classmethod
    def email_is_valid(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalise_email(value)
        except ValueError as exc:
            raise ValueError(f"sender {exc}") from exc

    @field_validator("sms_sender_id")
    @classmethod
    def sms_sender_is_valid(cls, value: str | None) -> str | None:
        if value is not None and not _SMS_SENDER.match(value):
            raise ValueError("sms_sender_id must be 1-11 letters/digits or an E.164 number")
        return value


class TemplateIn(BaseModel):
    """A message template; each channel a campaign uses needs its body."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email_subject: str | None = Field(default=None, max_length=500)
    email_body: str | None = Field(default=None, max_length=100_000)
    sms_body: str | None = Field(default=None, max_length=2_000)

    @field_validator("email_subject", "email_body", "sms_body")
    @classmethod
    def renders(cls, value: str | None, info: ValidationInfo) -> str | None:
        return template_checked(value, str(info.field_name))

    @model_validator(mode="after")
    def has_a_body(self) -> TemplateIn:
        if self.email_body is None and self.sms_body is None:
            raise ValueError("a template needs an email_body or an sms_body")
        return self


@dataclass(frozen=True)
class TemplateVersion:
    template_id: uuid.UUID
    version: int
    email_subject: str | None
    email_body: str | None
    sms_body: str | None

    def body(self, channel: Channel) -> str | None:
        return self.email_body if channel == "email" else self.sms_body

    def variables(self, channels: Iterable[Channel]) -> set[str]:
        texts = [self.body(c) for c in channels]
        if "email" in channels:
            texts.append(self.email_subject)
        return {v for t in texts if t for v in templating.template_variables(t)}


@dataclass(frozen=True)
class Sender:
    id: uuid.UUID
    name: str
    email: str | None
    sms_sender_id: str | None
