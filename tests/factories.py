"""Test data factories."""

from __future__ import annotations

import uuid
from typing import Any

from shared.events import (
    CampaignStarted,
    ChannelTemplate,
    MessageFailed,
    MessageSent,
    MessageSkipped,
    SenderInfo,
    SendRequested,
    TemplateRef,
)


def campaign_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "name": "Test campaign",
        "channel": "email",
        "sender": {"name": "Election Office", "email": "office@example.org"},
        "subject": "Hello {{ first_name }}",
        "template": "Dear {{ first_name }}, vote on Sunday.",
    }
    payload.update(overrides)
    return payload


def send_requested(
    campaign_id: uuid.UUID | None = None,
    recipient_id: int = 1,
    address: str | None = "a@example.org",
    **overrides: Any,
) -> SendRequested:
    return SendRequested(
        campaign_id=campaign_id or uuid.uuid4(),
        recipient_id=recipient_id,
        channel=overrides.pop("channel", "email"),
        address=address,
        variables=overrides.pop("variables", {"first_name": "Ada"}),
        template=TemplateRef(id=uuid.uuid4(), version=1),
        **overrides,
    )


def started(
    campaign_id: uuid.UUID,
    total: int,
    body: str = "Hi {{ first_name }}",
    channels: tuple[str, ...] = ("email",),
) -> CampaignStarted:
    templates = {
        "email": ChannelTemplate(body=body, subject="Subject for {{ first_name }}"),
        "sms": ChannelTemplate(body=body),
    }
    return CampaignStarted(
        campaign_id=campaign_id,
        total=total * len(channels),
        totals=dict.fromkeys(channels, total),
        template=TemplateRef(id=uuid.uuid4(), version=1),
        templates={c: templates[c] for c in channels},
        sender=SenderInfo(name="Office", email="office@example.org", sms_sender_id="Office"),
    )


def outcome(
    campaign_id: uuid.UUID, recipient_id: int, status: str = "completed", channel: str = "email"
) -> MessageSent | MessageFailed | MessageSkipped:
    common: dict[str, Any] = {
        "campaign_id": campaign_id, "recipient_id": recipient_id, "channel": channel
    }
    if status == "completed":
        return MessageSent(**common, provider_message_id=f"p-{recipient_id}")
    if status == "failed":
        return MessageFailed(**common, reason="HTTP 422: recipient unreachable")
    return MessageSkipped(**common, reason="missing_address")
