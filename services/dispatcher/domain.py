"""Dispatcher domain: rendering and the outcome of one send request. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

from jinja2 import nodes

from shared import templating
from shared.events import Channel, ChannelTemplate, SenderInfo
from shared.templating import TemplateProblem
from shared.wire import MessageFailed, MessageSent, MessageSkipped, Outcome, outcome_id

_ENV = templating.ENV

__all__ = ["Outcome", "RenderError", "TemplateProblem"]


class Request(Protocol):
    """What a send request carries to the dispatcher (shared.wire.SendRequested, or the
    pydantic shared.events.SendRequested). Read-only: the wire's structs are frozen."""

    @property
    def event_id(self) -> uuid.UUID: ...

    @property
    def campaign_id(self) -> uuid.UUID: ...

    @property
    def recipient_id(self) -> int: ...

    @property
    def voter_id(self) -> int | None: ...

    @property
    def channel(self) -> Channel: ...

    @property
    def address(self) -> str | None: ...

    @property
    def skip_reason(self) -> str | None: ...

    @property
    def variables(self) -> dict[str, Any]: ...

    def to_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class CampaignTemplate:
    campaign_id: uuid.UUID
    organisation_id: uuid.UUID | None
    version: int
    templates: dict[Channel, ChannelTemplate]
    sender: SenderInfo
    template_id: uuid.UUID | None = None

    def sender_address(self, channel: Channel) -> str:
        return self._sender_addresses[channel]

    @cached_property
    def _sender_addresses(self) -> dict[str, str]:
        return {channel: sender_address(self.sender, channel) for channel in ("email", "sms")}


def template_from_context(campaign_id: uuid.UUID, context: Any) -> CampaignTemplate:
    """A campaign's templates and sender as a send-request record carries them
    (`shared.wire.CampaignContext`)."""
    return CampaignTemplate(
        campaign_id=campaign_id,
        organisation_id=context.organisation_id,
        version=context.template.version,
        template_id=context.template.id,
        templates={channel: ChannelTemplate(body=t.body, subject=t.subject)
                   for channel, t in context.templates.items()},
        sender=SenderInfo(name=context.sender.name, email=context.sender.email,
                          sms_sender_id=context.sender.sms_sender_id),
    )


# A template's problem (compiling or rendering) is `shared.templating.TemplateProblem`, whose
# message is the delivery's failure reason ("template_error: ...").
RenderError = TemplateProblem

def _plain_parts(tree: nodes.Template) -> list[tuple[str, str | None]] | None:
    """The (text, None) and ("", variable) parts of a text-and-variables template, else None."""
    return templating.plain_parts(tree)


def render(body: str, variables: Mapping[str, Any]) -> str:
    """The message text, or RenderError (= TemplateProblem) naming the problem.

    A template that is only text and `{{ name }}` outputs is rendered by joining its parts:
    such a template reads no attribute, calls nothing and applies no filter, so there is
    nothing for the sandbox to guard, and what the sandbox would do for it is exactly this —
    `output_value` of each variable, StrictUndefined's error for a missing one
    (tests/unit/test_dispatcher_domain.py renders both ways and compares). Any other template
    is rendered by the shared sandbox (shared.templating) here without a time limit; the
    dispatcher renders those in a worker process with one (services/dispatcher/rendering.py).
    """
    inline = templating.inline_renderer(body)
    if inline is not None:
        return inline(variables)
    return templating.render(body, variables)


def sender_address(sender: SenderInfo, channel: str) -> str:
    if channel == "email":
        email = sender.email or ""
        return f"{sender.name} <{email}>" if sender.name else email
    return sender.sms_sender_id or sender.name


# Outcomes are shared.wire structs (msgspec), the mirror of the pydantic events: built from an
# already validated request, encoded once (the same bytes go to the deliveries row and Kafka).
# An outcome's event id is derived from its request's (`shared.wire.outcome_id`).


def skipped(req: Request, reason: str) -> MessageSkipped:
    return MessageSkipped(
        event_id=outcome_id(req.event_id), campaign_id=req.campaign_id,
        occurred_at=datetime.now(UTC),
        recipient_id=req.recipient_id, channel=req.channel, voter_id=req.voter_id,
        address=req.address, reason=str(reason),
    )


def failed(req: Request, reason: str) -> MessageFailed:
    return MessageFailed(
        event_id=outcome_id(req.event_id), campaign_id=req.campaign_id,
        occurred_at=datetime.now(UTC),
        recipient_id=req.recipient_id, channel=req.channel, voter_id=req.voter_id,
        address=req.address, reason=str(reason)[:1000],
    )


def sent(req: Request, provider_message_id: str) -> MessageSent:
    return MessageSent(
        event_id=outcome_id(req.event_id), campaign_id=req.campaign_id,
        occurred_at=datetime.now(UTC),
        recipient_id=req.recipient_id, channel=req.channel, voter_id=req.voter_id,
        address=req.address, provider_message_id=str(provider_message_id),
    )


def dedupe_key(req: Request) -> tuple[uuid.UUID, int, str]:
    return (req.campaign_id, req.recipient_id, req.channel)
