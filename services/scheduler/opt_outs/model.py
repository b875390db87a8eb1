"""Opt-outs' rules, no I/O: what an opt-out names, which replies opt their sender out, and
the form an opted-out address is kept in (the form recipients are stored in)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from services.scheduler.addresses import email_or_invalid, phone_or_invalid
from shared.events import AddressOptedOut

# Replies that opt a recipient out (compared case-insensitively, the whole message trimmed).
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})


def is_stop_message(text: str) -> bool:
    return text.strip().upper() in STOP_WORDS


class OptOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1, max_length=320)


class InboundSms(BaseModel):
    """A provider's inbound-SMS callback (the fields every SMS API has in some form)."""

    model_config = ConfigDict(extra="ignore")

    sender: str = Field(alias="from", min_length=1, max_length=32)
    to: str | None = None
    body: str = Field(max_length=2_000)


def normalise_address(address: str, region: str) -> str:
    """An opt-out's address in the form recipients are stored in (E.164 or normalised email)."""
    if "@" in address:
        return email_or_invalid(address)[0] or address
    return phone_or_invalid(address, region)[0] or address


def opted_out(organisation_id: uuid.UUID, address: str) -> AddressOptedOut:
    """What the dispatchers learn once the opt-out commits (a repeated event is harmless)."""
    return AddressOptedOut(organisation_id=organisation_id, address=address)
