"""Dispatcher domain: rendering and the outcome of one send request. No I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from shared.events import (
    Channel,
    ChannelTemplate,
    MessageFailed,
    MessageSent,
    MessageSkipped,
    SenderInfo,
    SendRequested,
)

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

Outcome = MessageSent | MessageFailed | MessageSkipped


@dataclass(frozen=True)
class CampaignTemplate:
    campaign_id: uuid.UUID
    organisation_id: uuid.UUID | None
    version: int
    templates: dict[Channel, ChannelTemplate]
    sender: SenderInfo


class RenderError(Exception):
    pass


@lru_cache(maxsize=1024)
def _compiled(body: str) -> Template:
    return _ENV.from_string(body)


def render(body: str, variables: dict[str, Any]) -> str:
    try:
        return _compiled(body).render(**variables)
    except TemplateError as exc:
        raise RenderError(f"template_error: {exc}") from exc


def sender_address(sender: SenderInfo, channel: str) -> str:
    if channel == "email":
        email = sender.email or ""
        return f"{sender.name} <{email}>" if sender.name else email
    return sender.sms_sender_id or sender.name


def skipped(req: SendRequested, reason: str) -> MessageSkipped:
    return MessageSkipped(
        campaign_id=req.campaign_id, recipient_id=req.recipient_id, channel=req.channel,
        voter_id=req.voter_id, address=req.address,
        reason=reason,
    )


def failed(req: SendRequested, reason: str) -> MessageFailed:
    return MessageFailed(
        campaign_id=req.campaign_id, recipient_id=req.recipient_id, channel=req.channel,
        voter_id=req.voter_id, address=req.address,
        reason=reason[:1000],
    )


def sent(req: SendRequested, provider_message_id: str) -> MessageSent:
    # The hot path (one per message sent): built without re-validating fields taken from an
    # already validated request, and with every field given (model_construct would otherwise
    # inspect each default factory's signature per call).
    return MessageSent.model_construct(
        event_id=uuid.uuid4(), campaign_id=req.campaign_id, occurred_at=datetime.now(UTC),
        schema_version=1, type="sent", recipient_id=req.recipient_id, voter_id=req.voter_id,
        channel=req.channel, reason=None, provider_message_id=str(provider_message_id),
        address=req.address,
    )


def dedupe_key(req: SendRequested) -> tuple[uuid.UUID, int, str]:
    return (req.campaign_id, req.recipient_id, req.channel)
