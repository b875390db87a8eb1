"""Fast codecs for the hot topics (send-requested, outcomes), mirroring `shared.events`.

The pydantic models in `shared/events.py` stay the published schema. At a million recipients
their per-record cost (validate, construct, dump: ~10-20 µs each, several times per message)
was most of the services' CPU, so the hot paths encode and decode these msgspec `Struct`s
instead: the same field names, types and defaults (tests/unit/test_wire.py compares them with
the pydantic models field by field and round-trips each way).

Decoding is msgspec first and pydantic second: msgspec is stricter (no "123" for an int, no
epoch numbers for a datetime), so a record it refuses is handed to the pydantic model, which
either accepts it (then its fields are taken over) or raises its own `ValidationError` — and
the record goes to the DLQ with that error, as before. Whatever msgspec accepts, pydantic
accepts too (the parity tests pin the cases).

The structs are not tracked by the cyclic garbage collector (`gc=False`): they hold ids, times,
text and a JSON `variables` dict, never a reference back to themselves, and thousands of them
live through each batch — tracked, they made every collection walk them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from shared import events
from shared.events import OUTCOME

Channel = Literal["email", "sms"]


def _now() -> datetime:
    return datetime.now(UTC)


class TemplateRef(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: uuid.UUID
    version: int


class SenderInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    name: str
    email: str | None = None
    sms_sender_id: str | None = None


class ChannelTemplate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    body: str
    subject: str | None = None


class CampaignContext(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Mirror of `shared.events.CampaignContext`: the campaign's templates and sender, carried
    by its send-request records."""

    organisation_id: uuid.UUID | None = None
    template: TemplateRef
    templates: dict[Channel, ChannelTemplate]
    sender: SenderInfo


class _Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Mirror of `shared.events.Event`: the fields every event starts with."""

    event_id: uuid.UUID = msgspec.field(default_factory=uuid.uuid4)
    campaign_id: uuid.UUID
    occurred_at: datetime = msgspec.field(default_factory=_now)
    schema_version: Literal[1] = 1


class SendRequested(_Event, frozen=True, kw_only=True, gc=False):
    """Mirror of `shared.events.SendRequested`."""

    type: Literal["send_requested"] = "send_requested"
    recipient_id: int
    voter_id: int | None = None
    channel: Channel
    address: str | None
    skip_reason: str | None = None
    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    template: TemplateRef
    requested_at: datetime = msgspec.field(default_factory=_now)
    campaign: CampaignContext | None = None

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)


class SendRequestedBatch(_Event, frozen=True, kw_only=True, gc=False):
    """Mirror of `shared.events.SendRequestedBatch`."""

    type: Literal["send_requested_batch"] = "send_requested_batch"
    requests: Annotated[list[SendRequested], msgspec.Meta(min_length=1)]
    campaign: CampaignContext | None = None

    def __post_init__(self) -> None:
        events.same_campaign(self.campaign_id, self.requests, "request")

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)


class _SendRequestedBatchOfEncoded(_Event, frozen=True, kw_only=True, gc=False):
    """A `SendRequestedBatch` whose campaign context is already JSON: encoded once per page of
    the fan-out and spliced into each of its records, not encoded again per record."""

    type: Literal["send_requested_batch"] = "send_requested_batch"
    requests: list[SendRequested]
    campaign: msgspec.Raw | None = None


class _Outcome(_Event, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Mirror of `shared.events._Outcome`; `type` is the tag, as the pydantic discriminator."""

    status: ClassVar[str]

    recipient_id: int
    voter_id: int | None = None
    channel: Channel
    reason: str | None = None
    provider_message_id: str | None = None
    address: str | None = None

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)


class MessageSent(_Outcome, frozen=True, kw_only=True, tag="sent"):
    status: ClassVar[str] = "completed"


class MessageFailed(_Outcome, frozen=True, kw_only=True, tag="failed"):
    status: ClassVar[str] = "failed"


class MessageSkipped(_Outcome, frozen=True, kw_only=True, tag="skipped"):
    status: ClassVar[str] = "skipped"


Outcome = MessageSent | MessageFailed | MessageSkipped


class OutcomeBatch(_Event, frozen=True, kw_only=True, tag_field="type", tag="outcome_batch",
                   gc=False):
    """Mirror of `shared.events.OutcomeBatch` (for reading; see `outcome_batch_bytes`)."""

    outcomes: Annotated[list[Outcome], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        events.same_campaign(self.campaign_id, self.outcomes, "outcome")


class _OutcomeBatchOfEncoded(_Event, frozen=True, kw_only=True, tag_field="type",
                             tag="outcome_batch", gc=False):
    """An `OutcomeBatch` whose outcomes are already JSON: they are spliced in, not re-encoded."""

    outcomes: list[msgspec.Raw]


_ENCODER = msgspec.json.Encoder()
_SEND_REQUESTED = msgspec.json.Decoder(SendRequested)
_SEND_REQUESTED_BATCH = msgspec.json.Decoder(SendRequestedBatch)
# Typed by hand: msgspec infers a decoder's type from a class, not from a union.
_OUTCOME: msgspec.json.Decoder[Outcome] = msgspec.json.Decoder(Outcome)
_OUTCOME_RECORD: msgspec.json.Decoder[Outcome | OutcomeBatch] = msgspec.json.Decoder(
    Outcome | OutcomeBatch)


def decode_send_requests(data: bytes) -> tuple[CampaignContext | None, list[SendRequested]]:
    """The campaign context and the requests of a send-requested record, a batch or a single
    one (the context: the batch's, or the lone request's; None from producers that predate
    it); raises pydantic's `ValidationError` for what the schema refuses (the whole record: it
    goes to the DLQ)."""
    try:
        batch = _SEND_REQUESTED_BATCH.decode(data)  # the mass send-outs' form
        return batch.campaign, batch.requests
    except msgspec.DecodeError:
        pass
    try:
        request = _SEND_REQUESTED.decode(data)
        return request.campaign, [request]
    except msgspec.DecodeError:
        model = events.SEND_REQUESTED_RECORD.validate_json(data)  # refuses (→ DLQ), or laxer
        if isinstance(model, events.SendRequestedBatch):
            batch = msgspec.convert(model.model_dump(), SendRequestedBatch,
                                    from_attributes=True)
            return batch.campaign, batch.requests
        request = msgspec.convert(model.model_dump(), SendRequested, from_attributes=True)
        return request.campaign, [request]


def request_records(
    requests: Sequence[SendRequested], batch_size: int,
    campaign: CampaignContext | None = None,
) -> list[tuple[bytes, bytes]]:
    """(key, value) records for `requests`: batches of up to `batch_size` requests of one
    campaign, each keyed by its first recipient id (so batches spread over the partitions); a
    lone request is published as itself.

    `campaign`: the requests' campaign context (then they are all of that one campaign),
    encoded once and carried by every record: by a batch once, by a lone request on itself.
    """
    grouped = _by_campaign(requests)
    if campaign is not None and len(grouped) > 1:
        raise ValueError("requests of several campaigns given one campaign context")
    context = msgspec.Raw(_ENCODER.encode(campaign)) if campaign is not None else None
    records: list[tuple[bytes, bytes]] = []
    for campaign_id, items in grouped.items():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            key = str(chunk[0].recipient_id).encode()
            if len(chunk) == 1:
                lone = chunk[0] if campaign is None else msgspec.structs.replace(
                    chunk[0], campaign=campaign)
                records.append((key, lone.to_bytes()))
            else:
                batch = _SendRequestedBatchOfEncoded(campaign_id=campaign_id, requests=chunk,
                                                     campaign=context)
                records.append((key, _ENCODER.encode(batch)))
    return records


def decode_outcomes(data: bytes) -> list[Outcome]:
    """The outcomes of an outcomes record, a batch or a single one; raises pydantic's
    `ValidationError` for what the schema refuses."""
    try:
        event = _OUTCOME_RECORD.decode(data)
    except msgspec.DecodeError:
        model = events.OUTCOME_RECORD.validate_json(data)
        if isinstance(model, events.OutcomeBatch):
            return msgspec.convert(model.model_dump(), OutcomeBatch,
                                   from_attributes=True).outcomes
        return [msgspec.convert(model.model_dump(), Outcome, from_attributes=True)]
    return event.outcomes if isinstance(event, OutcomeBatch) else [event]


def outcome_records(
    outcomes: Sequence[tuple[Outcome, bytes]], batch_size: int
) -> list[tuple[bytes, bytes]]:
    """(key, value) records for already encoded outcomes: batches of up to `batch_size`
    outcomes of one campaign, keyed by the campaign id (its outcomes stay in order, in one
    partition); a lone outcome is published as itself."""
    # Keyed by the campaign id's integer: hashed in C (a UUID's own hash is computed in Python).
    by_campaign: dict[int, tuple[uuid.UUID, list[bytes]]] = {}
    for outcome, data in outcomes:
        entry = by_campaign.get(outcome.campaign_id.int)
        if entry is None:
            entry = by_campaign[outcome.campaign_id.int] = (outcome.campaign_id, [])
        entry[1].append(data)
    records: list[tuple[bytes, bytes]] = []
    for campaign_id, encoded in by_campaign.values():
        key = campaign_id.bytes
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            if len(chunk) == 1:
                records.append((key, chunk[0]))
                continue
            batch = _OutcomeBatchOfEncoded(campaign_id=campaign_id,
                                           outcomes=[msgspec.Raw(d) for d in chunk])
            records.append((key, _ENCODER.encode(batch)))
    return records


def _by_campaign(items: Iterable[SendRequested]) -> dict[uuid.UUID, list[SendRequested]]:
    grouped: dict[uuid.UUID, list[SendRequested]] = {}
    for item in items:
        grouped.setdefault(item.campaign_id, []).append(item)
    return grouped


def decode_outcome(data: bytes | str) -> Outcome:
    """An outcome record; raises pydantic's `ValidationError` for what the schema refuses."""
    try:
        return _OUTCOME.decode(data)
    except msgspec.DecodeError:
        model = OUTCOME.validate_json(data)
        outcome: Outcome = msgspec.convert(model.model_dump(), Outcome, from_attributes=True)
        return outcome


_new_object = object.__new__
_set_slot = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def _uuid(value: int) -> uuid.UUID:
    """`uuid.UUID(int=value)` for a value known to be in range: what `UUID.__init__` ends with,
    without its argument parsing (a third of its cost)."""
    u = _new_object(uuid.UUID)
    _set_slot(u, "int", value)
    _set_slot(u, "is_safe", _SAFE_UNKNOWN)
    return u


_V4_CLEAR = ~(0xC000 << 48 | 0xF000 << 64)
_V4_SET = 0x8000 << 48 | 0x4000 << 64
_V5_SET = 0x8000 << 48 | 0x5000 << 64


class EventIds:
    """Random (version 4) event ids, drawn from the OS 4 KiB at a time: `uuid.uuid4()` asks
    the OS for 16 bytes per call, which cost more than the rest of building an outcome."""

    def __init__(self) -> None:
        self._ids: list[uuid.UUID] = []

    def next(self) -> uuid.UUID:
        if not self._ids:
            pool = os.urandom(4096)
            self._ids = [
                _uuid(int.from_bytes(pool[i:i + 16], "big") & _V4_CLEAR | _V4_SET)
                for i in range(0, 4096, 16)
            ]
        return self._ids.pop()


# An outcome's event id is its request's, with these bits flipped (and the version 4 bits set):
# one per request, unique as the request's is, the same whenever that request's outcome is
# built again, and free — no draw from the OS, no formatting.
_OUTCOME_FLIP = 0x5E7D_0C0F_FEED_0000_0A11_0E5F_0000_0001 & _V4_CLEAR


def outcome_id(request_id: uuid.UUID) -> uuid.UUID:
    """The event id of the outcome of the request with this event id."""
    return _uuid((request_id.int ^ _OUTCOME_FLIP) & _V4_CLEAR | _V4_SET)


def uuid5(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """`uuid.uuid5(namespace, name)`, at half its cost."""
    digest = hashlib.sha1(namespace.bytes + name.encode()).digest()
    return _uuid(int.from_bytes(digest[:16], "big") & _V4_CLEAR | _V5_SET)
