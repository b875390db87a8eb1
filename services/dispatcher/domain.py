"""Dispatcher domain: rendering and the outcome of one send request. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any, Protocol

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

from shared.events import Channel, ChannelTemplate, SenderInfo
from shared.wire import EventIds, MessageFailed, MessageSent, MessageSkipped, Outcome

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_EVENT_IDS = EventIds()
# Names Jinja resolves to something other than the template's variables.
_NOT_PLAIN = frozenset(_ENV.globals) | {"self", "super", "loop", "caller", "varargs", "kwargs"}

__all__ = ["Outcome"]


class Request(Protocol):
    """What a send request carries to the dispatcher (shared.wire.SendRequested, or the
    pydantic shared.events.SendRequested)."""

    event_id: uuid.UUID
    campaign_id: uuid.UUID
    recipient_id: int
    voter_id: int | None
    channel: Channel
    address: str | None
    skip_reason: str | None
    variables: dict[str, Any]


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


class RenderError(Exception):
    pass


Renderer = Callable[[Mapping[str, Any]], str]


@lru_cache(maxsize=1024)
def _compiled(body: str) -> Renderer:
    """A template compiled once per text.

    A template that is only text and `{{ name }}` outputs is rendered by joining its parts:
    such a template reads no attribute, calls nothing and applies no filter, so there is
    nothing for the sandbox to guard, and what Jinja would do for it is exactly this — `str()`
    of each variable, StrictUndefined's error for a missing one
    (tests/unit/test_dispatcher_domain.py renders both ways and compares). Any other template
    is rendered by the sandboxed Jinja environment, each call paying for a new context.
    """
    template = _ENV.from_string(body)
    parts = _plain_parts(_ENV.parse(body))
    if parts is None:
        return lambda variables: template.render(**variables)

    def render_plain(variables: Mapping[str, Any]) -> str:
        out = []
        for text, name in parts:
            if name is None:
                out.append(text)
                continue
            try:
                value = variables[name]
            except KeyError:
                str(_ENV.undefined(name=name))  # raises StrictUndefined's UndefinedError
                raise
            out.append(value if type(value) is str else str(value))
        return "".join(out)

    return render_plain


def _plain_parts(tree: nodes.Template) -> list[tuple[str, str | None]] | None:
    """The (text, None) and ("", variable) parts of a text-and-variables template, else None."""
    parts: list[tuple[str, str | None]] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append((child.data, None))
            elif (isinstance(child, nodes.Name) and child.ctx == "load"
                  and child.name not in _NOT_PLAIN):
                parts.append(("", child.name))
            else:
                return None
    return parts


def render(body: str, variables: Mapping[str, Any]) -> str:
    try:
        return _compiled(body)(variables)
    except TemplateError as exc:
        raise RenderError(f"template_error: {exc}") from exc


def sender_address(sender: SenderInfo, channel: str) -> str:
    if channel == "email":
        email = sender.email or ""
        return f"{sender.name} <{email}>" if sender.name else email
    return sender.sms_sender_id or sender.name


# Outcomes are shared.wire structs (msgspec), the mirror of the pydantic events: built from an
# already validated request, encoded once (the same bytes go to the deliveries row and Kafka).


def skipped(req: Request, reason: str) -> MessageSkipped:
    return MessageSkipped(
        event_id=_EVENT_IDS.next(), campaign_id=req.campaign_id, occurred_at=datetime.now(UTC),
        recipient_id=req.recipient_id, channel=req.channel, voter_id=req.voter_id,
        address=req.address, reason=reason,
    )


def failed(req: Request, reason: str) -> MessageFailed:
    return MessageFailed(
        event_id=_EVENT_IDS.next(), campaign_id=req.campaign_id, occurred_at=datetime.now(UTC),
        recipient_id=req.recipient_id, channel=req.channel, voter_id=req.voter_id,
        address=req.address, reason=reason[:1000],
    )


def sent(req: Request, provider_message_id: str) -> MessageSent:
    return MessageSent(
        event_id=_EVENT_IDS.next(), campaign_id=req.campaign_id, occurred_at=datetime.now(UTC),
        recipient_id=req.recipient_id, channel=req.channel, voter_id=req.voter_id,
        address=req.address, provider_message_id=str(provider_message_id),
    )


def dedupe_key(req: Request) -> tuple[uuid.UUID, int, str]:
    return (req.campaign_id, req.recipient_id, req.channel)
