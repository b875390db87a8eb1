"""The msgspec mirrors of the hot events (shared.wire) against the pydantic schema
(shared.events): same fields, same accepted records, same refusals; and the hand-made fast
paths next to the library functions they replace."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import msgspec
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from pydantic import BaseModel, ValidationError

from services.dispatcher import domain as dispatcher_domain
from services.scheduler import domain as scheduler_domain
from services.scheduler import fanout
from shared import events, wire
from shared.kafka import decode_records, murmur2
from tests.factories import outcome, send_requested

MIRRORS: list[tuple[type[msgspec.Struct], type[BaseModel]]] = [
    (wire.SendRequested, events.SendRequested),
    (wire.TemplateRef, events.TemplateRef),
    (wire.MessageSent, events.MessageSent),
    (wire.MessageFailed, events.MessageFailed),
    (wire.MessageSkipped, events.MessageSkipped),
    (wire.SendRequestedBatch, events.SendRequestedBatch),
    (wire.OutcomeBatch, events.OutcomeBatch),
    (wire.CampaignContext, events.CampaignContext),
    (wire.ChannelTemplate, events.ChannelTemplate),
    (wire.SenderInfo, events.SenderInfo),
]


@pytest.mark.parametrize(("struct", "model"), MIRRORS, ids=lambda t: t.__name__)
def test_each_mirror_has_the_models_fields_requiredness_and_defaults(
    struct: type[msgspec.Struct], model: type[BaseModel]
) -> None:
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    model_fields = dict(model.model_fields)
    tag = struct.__struct_config__.tag
    if tag is not None:  # the outcomes' `type` is the msgspec tag, not a field
        assert model_fields.pop("type").default == tag
    assert set(fields) == set(model_fields)
    for name, info in model_fields.items():
        mine = fields[name]
        assert mine.required == info.is_required(), name
        if info.default_factory is not None:
            assert mine.default_factory is not msgspec.NODEFAULT, name
            assert type(mine.default_factory()) is type(info.default_factory()), name
        elif not info.is_required():
            assert mine.default == info.default, name


def _request_bytes() -> list[bytes]:
    """What our scheduler produces: recipients with and without addresses, voters, skips."""
    cid = uuid.uuid4()
    ref = wire.TemplateRef(id=uuid.uuid4(), version=3)
    rows = [
        {"id": 1, "email": "a@x.org", "email_invalid": False, "phone": "+4511223344",
         "phone_invalid": False, "first_name": "Åse", "last_name": 'O"Neil\\',
         "attributes": {"city": "Aarhus", "n": 3, "tags": ["a", None], "ok": True}},
        {"id": 2**40, "email": None, "email_invalid": False, "phone": "12", "phone_invalid": True,
         "first_name": None, "last_name": None, "attributes": None, "voter_id": 42},
    ]
    return [
        scheduler_domain.send_requested_for(campaign_id=cid, channel=channel, template=ref,
                                            row=row, opted_out={"+4511223344"}).to_bytes()
        for row in rows for channel in ("email", "sms")
    ] + [send_requested(voter_id=7, skip_reason=None).to_bytes()]  # pydantic-produced, too


def _one_request(data: bytes) -> wire.SendRequested:
    """The request of a single send-requested record, through the records' reader."""
    _, [request] = wire.decode_send_requests(data)
    return request


def _same(struct: Any, model: BaseModel) -> None:
    for name in type(model).model_fields:
        if name == "type" and struct.__struct_config__.tag is not None:
            continue
        mine, theirs = getattr(struct, name), getattr(model, name)
        if isinstance(theirs, BaseModel):
            _same(mine, theirs)
        elif isinstance(theirs, dict) and any(isinstance(v, BaseModel) for v in theirs.values()):
            assert set(mine) == set(theirs), name
            for key, value in theirs.items():
                _same(mine[key], value)
        else:
            assert mine == theirs, name


@pytest.mark.parametrize("data", _request_bytes())
def test_our_send_requests_decode_the_same_both_ways(data: bytes) -> None:
    model = events.SEND_REQUESTED.validate_json(data)
    _same(_one_request(data), model)
    assert events.SEND_REQUESTED.validate_json(_one_request(data).to_bytes()) \
        == model


def _outcome_bytes() -> list[bytes]:
    req = _one_request(_request_bytes()[0])
    ours = [dispatcher_domain.sent(req, "p-1"), dispatcher_domain.failed(req, "HTTP 422: x"),
            dispatcher_domain.skipped(req, "opted_out")]
    cid = uuid.uuid4()
    theirs = [outcome(cid, 1, status) for status in ("completed", "failed", "skipped")]
    return [o.to_bytes() for o in [*ours, *theirs]]


@pytest.mark.parametrize("data", _outcome_bytes())
def test_our_outcomes_decode_the_same_both_ways(data: bytes) -> None:
    model = events.OUTCOME.validate_json(data)
    mine = wire.decode_outcome(data)
    _same(mine, model)
    assert mine.status == model.status
    assert events.OUTCOME.validate_json(mine.to_bytes()) == model


def _patched(data: bytes, **patch: Any) -> bytes:
    return json.dumps(json.loads(data) | patch).encode()


REQUEST = send_requested().to_bytes()
# Records the schema refuses: each must raise pydantic's error (→ DLQ), never decode.
REFUSED = {
    "not json": b"{not json",
    "not an object": b"[1, 2]",
    "trailing bytes": REQUEST + b"x",
    "invalid utf-8": b'{"a": "\xff"}',
    "no campaign": json.dumps({k: v for k, v in json.loads(REQUEST).items()
                               if k != "campaign_id"}).encode(),
    "no address key": json.dumps({k: v for k, v in json.loads(REQUEST).items()
                                  if k != "address"}).encode(),
    "bad channel": _patched(REQUEST, channel="fax"),
    "schema version 2": _patched(REQUEST, schema_version=2),
    "schema version as text": _patched(REQUEST, schema_version="1"),
    "fractional recipient id": _patched(REQUEST, recipient_id=4.5),
    "text recipient id": _patched(REQUEST, recipient_id="abc"),
    "bad uuid": _patched(REQUEST, event_id="not-a-uuid"),
    "bad datetime": _patched(REQUEST, occurred_at="2026-11-23T25:00:00Z"),
    "leap second": _patched(REQUEST, occurred_at="2026-12-31T23:59:60Z"),
    "variables not an object": _patched(REQUEST, variables=[]),
    "address not text": _patched(REQUEST, address=5),
    "another event's type": _patched(REQUEST, type="sent"),
    "template without id": _patched(REQUEST, template={"version": 1}),
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_what_the_schema_refuses_the_fast_decoder_refuses_with_pydantics_error(
    data: bytes,
) -> None:
    with pytest.raises(ValidationError):
        events.SEND_REQUESTED.validate_json(data)
    with pytest.raises(ValidationError):
        wire.decode_send_requests(data)


OUTCOME = outcome(uuid.uuid4(), 1).to_bytes()
REFUSED_OUTCOMES = {
    "no type": json.dumps({k: v for k, v in json.loads(OUTCOME).items()
                           if k != "type"}).encode(),
    "unknown type": _patched(OUTCOME, type="bounced"),
    "a send request": REQUEST,
    "schema version 2": _patched(OUTCOME, schema_version=2),
    "no recipient": json.dumps({k: v for k, v in json.loads(OUTCOME).items()
                                if k != "recipient_id"}).encode(),
    "garbage": b"garbage",
}


@pytest.mark.parametrize("data", REFUSED_OUTCOMES.values(), ids=REFUSED_OUTCOMES.keys())
def test_outcomes_the_schema_refuses_are_refused(data: bytes) -> None:
    with pytest.raises(ValidationError):
        events.OUTCOME.validate_json(data)
    with pytest.raises(ValidationError):
        wire.decode_outcome(data)
    with pytest.raises(ValidationError):
        wire.decode_outcomes(data)


# Valid for the schema but not for msgspec's stricter reading: accepted through pydantic.
LAX = {
    "numeric text id": _patched(REQUEST, recipient_id="42"),
    "float id": _patched(REQUEST, recipient_id=42.0),
    "date only": _patched(REQUEST, occurred_at="2026-11-23"),
    "epoch seconds": _patched(REQUEST, occurred_at=1_700_000_000),
    "urn uuid": _patched(REQUEST, campaign_id=f"urn:uuid:{uuid.uuid4()}"),
    "schema version 1.0": _patched(REQUEST, schema_version=1.0),
    # Valid for both readings alike.
    "naive datetime": _patched(REQUEST, occurred_at="2026-11-23T10:00:00"),
    "offset datetime": _patched(REQUEST, occurred_at="2026-11-23T10:00:00+02:00"),
    "uuid without hyphens": _patched(REQUEST, campaign_id=uuid.uuid4().hex),
    "unknown field": _patched(REQUEST, priority="high"),
    "no optional fields": json.dumps({k: v for k, v in json.loads(REQUEST).items() if k in (
        "campaign_id", "recipient_id", "channel", "address", "template")}).encode(),
}


@pytest.mark.parametrize("data", LAX.values(), ids=LAX.keys())
def test_what_the_schema_accepts_the_fast_decoder_accepts_alike(data: bytes) -> None:
    model = events.SEND_REQUESTED.validate_json(data)
    mine = _one_request(data)
    for name in ("campaign_id", "recipient_id", "channel", "address", "variables",
                 "schema_version", "voter_id", "skip_reason"):
        assert getattr(mine, name) == getattr(model, name), name
    if "occurred_at" in json.loads(data):
        assert mine.occurred_at == model.occurred_at


def test_a_poison_record_among_good_ones_is_set_aside_with_the_schemas_error() -> None:
    class Record:
        def __init__(self, value: bytes) -> None:
            self.value = value

    good, bad = decode_records(
        [Record(REQUEST), Record(REFUSED["bad channel"]), Record(b"{not json")],
        wire.decode_send_requests,
    )
    assert [str(e.event_id) for _, (_, [e]) in good] == [json.loads(REQUEST)["event_id"]]
    assert len(bad) == 2 and all(b.error.startswith("ValidationError") for b in bad)


def test_murmur2_is_kafkas() -> None:
    rng = random.Random(6)
    keys = [rng.randbytes(n) for n in range(40) for _ in range(50)]
    keys += [str(i).encode() for i in range(0, 10**7, 9973)] + [uuid.uuid4().bytes]
    assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]


def test_uuid5_is_the_standard_librarys() -> None:
    ns = uuid.uuid4()
    for name in ("", "a", f"{uuid.uuid4()}:12345:email", "æøå"):
        mine, theirs = wire.uuid5(ns, name), uuid.uuid5(ns, name)
        assert (mine, str(mine), hash(mine), mine.version) == (
            theirs, str(theirs), hash(theirs), theirs.version)


def test_event_ids_are_distinct_random_version_4_uuids() -> None:
    ids = wire.EventIds()
    drawn = [ids.next() for _ in range(1000)]
    assert len(set(drawn)) == 1000
    assert {(u.version, u.variant) for u in drawn} == {(4, uuid.RFC_4122)}
    assert all(uuid.UUID(str(u)) == u and uuid.UUID(bytes=u.bytes) == u for u in drawn)


# Batches: several requests (outcomes) of one campaign in one record.

def _requests(campaign_id: uuid.UUID, n: int) -> list[wire.SendRequested]:
    ref = wire.TemplateRef(id=uuid.uuid4(), version=1)
    return [
        scheduler_domain.send_requested_for(
            campaign_id=campaign_id, channel="email", template=ref,
            row={"id": 100 + i, "email": f"v{i}@x.org", "email_invalid": False, "phone": None,
                 "phone_invalid": False, "first_name": "V", "last_name": None,
                 "attributes": {"n": i}},
            opted_out=set())
        for i in range(n)
    ]


def test_requests_go_in_batches_of_one_campaign_keyed_by_their_first_recipient() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    requests = [*_requests(a, 7), *_requests(b, 1)]
    records = wire.request_records(requests, batch_size=3)
    assert [key for key, _ in records] == [b"100", b"103", b"106", b"100"]
    decoded = [wire.decode_send_requests(value)[1] for _, value in records]
    assert [len(d) for d in decoded] == [3, 3, 1, 1]
    assert [r for d in decoded for r in d] == requests
    # The schema reads each record alike: a batch, and a lone request as itself.
    models = [events.SEND_REQUESTED_RECORD.validate_json(v) for _, v in records]
    assert [type(m).__name__ for m in models] == [
        "SendRequestedBatch", "SendRequestedBatch", "SendRequested", "SendRequested"]
    for model, mine in zip(models[0].requests, decoded[0], strict=True):
        _same(mine, model)


def test_outcomes_go_in_batches_of_one_campaign_with_their_bytes_as_recorded() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    outcomes = [outcome(a, 1), outcome(b, 2, "failed"), outcome(a, 3, "skipped"),
                outcome(a, 4)]
    encoded = [(wire.decode_outcome(o.to_bytes()), o.to_bytes()) for o in outcomes]
    records = wire.outcome_records(encoded, batch_size=2)
    assert [key for key, _ in records] == [a.bytes, a.bytes, b.bytes]
    assert records[1][1] == outcomes[3].to_bytes() and records[2][1] == outcomes[1].to_bytes()
    batch = events.OUTCOME_RECORD.validate_json(records[0][1])
    assert isinstance(batch, events.OutcomeBatch) and batch.campaign_id == a
    assert batch.outcomes == [outcomes[0], outcomes[2]]
    assert [o.recipient_id for _, v in records for o in wire.decode_outcomes(v)] == [1, 3, 4, 2]
    # Each outcome inside is the very JSON recorded: spliced in, not encoded again.
    assert outcomes[0].to_bytes() in records[0][1]


def _batch(campaign_id: uuid.UUID, items: list[Any]) -> bytes:
    return json.dumps({"type": "send_requested_batch", "campaign_id": str(campaign_id),
                       "requests": items}).encode()


_CID = uuid.uuid4()
_ITEM = json.loads(_requests(_CID, 1)[0].to_bytes())
_OUTCOME_ITEM = json.loads(outcome(_CID, 1).to_bytes())
REFUSED_BATCHES = {
    "a request of another campaign": _batch(uuid.uuid4(), [_ITEM]),
    "no requests": _batch(_CID, []),
    "one bad request": _batch(_CID, [_ITEM, _ITEM | {"channel": "fax"}]),
    "requests not a list": _batch(_CID, {"a": _ITEM}),  # type: ignore[arg-type]
    "schema version 2": _patched(_batch(_CID, [_ITEM]), schema_version=2),
}


@pytest.mark.parametrize("data", REFUSED_BATCHES.values(), ids=REFUSED_BATCHES.keys())
def test_a_batch_the_schema_refuses_is_refused_whole(data: bytes) -> None:
    with pytest.raises(ValidationError):
        events.SEND_REQUESTED_RECORD.validate_json(data)
    with pytest.raises(ValidationError):
        wire.decode_send_requests(data)


@pytest.mark.parametrize("data", [
    json.dumps({"type": "outcome_batch", "campaign_id": str(uuid.uuid4()),
                "outcomes": [_OUTCOME_ITEM]}).encode(),
    json.dumps({"type": "outcome_batch", "campaign_id": str(_CID), "outcomes": []}).encode(),
    json.dumps({"type": "outcome_batch", "campaign_id": str(_CID),
                "outcomes": [_OUTCOME_ITEM | {"type": "bounced"}]}).encode(),
], ids=["an outcome of another campaign", "no outcomes", "one bad outcome"])
def test_an_outcome_batch_the_schema_refuses_is_refused_whole(data: bytes) -> None:
    with pytest.raises(ValidationError):
        events.OUTCOME_RECORD.validate_json(data)
    with pytest.raises(ValidationError):
        wire.decode_outcomes(data)


def test_a_batch_valid_only_for_the_laxer_schema_is_read_through_it() -> None:
    data = _batch(_CID, [_ITEM | {"recipient_id": "42"}, _ITEM])
    assert [r.recipient_id for r in wire.decode_send_requests(data)[1]] == [42, 100]
    lone = json.dumps(_ITEM | {"recipient_id": "43"}).encode()
    assert [r.recipient_id for r in wire.decode_send_requests(lone)[1]] == [43]
    lax_outcomes = json.dumps({"type": "outcome_batch", "campaign_id": str(_CID),
                               "outcomes": [_OUTCOME_ITEM | {"recipient_id": 7.0}]}).encode()
    assert [o.recipient_id for o in wire.decode_outcomes(lax_outcomes)] == [7]


# The campaign context: every send-request record carries its campaign's templates and sender,
# so a dispatcher can send it without the campaign's `started` event.

def _campaign_row(channels: list[str], org: uuid.UUID | None = None) -> dict[str, Any]:
    """A campaign row as `repo.get_campaign` reads it (the fields the fan-out uses)."""
    return {
        "id": uuid.uuid4(), "started_event_id": uuid.uuid4(), "organisation_id": org,
        "channels": channels, "total": 4 * len(channels), "template_id": uuid.uuid4(),
        "template_version": 2, "email_subject": "Hi {{ first_name }}",
        "email_body": "Dear {{ first_name }}, vote.", "sms_body": "Vote, {{ first_name }}",
        "sender_name": "Office", "sender_email": "office@example.org",
        "sender_sms_id": "Office",
    }


@pytest.mark.parametrize("channels", [["email"], ["sms"], ["email", "sms"]])
def test_the_context_each_request_carries_is_what_the_started_event_says(
    channels: list[str],
) -> None:
    row = _campaign_row(channels, org=uuid.uuid4())
    mine = fanout.campaign_context(row)
    theirs = fanout.started_event(row).context()
    _same(mine, theirs)
    assert events.CampaignContext.model_validate_json(msgspec.json.encode(mine)) == theirs


def _context_requests(n: int) -> tuple[wire.CampaignContext, list[wire.SendRequested]]:
    row = _campaign_row(["email", "sms"], org=uuid.uuid4())
    context = fanout.campaign_context(row)
    requests = [
        scheduler_domain.send_requested_for(
            campaign_id=row["id"], channel="email", template=context.template,
            row={"id": 500 + i, "email": f"c{i}@x.org", "email_invalid": False, "phone": None,
                 "phone_invalid": False, "first_name": "C", "last_name": None,
                 "attributes": None},
            opted_out=set())
        for i in range(n)
    ]
    return context, requests


def test_every_record_carries_the_campaign_context_encoded_once_and_spliced() -> None:
    context, requests = _context_requests(7)
    records = wire.request_records(requests, batch_size=3, campaign=context)
    encoded = msgspec.json.encode(context)
    assert len(records) == 3
    for _, value in records:
        assert encoded in value  # the very bytes, in the batches and the lone request alike
        got, reqs = wire.decode_send_requests(value)
        assert got == context
        assert all(r.campaign is None for r in reqs) or len(reqs) == 1
    assert [r for _, v in records for r in wire.decode_send_requests(v)[1]] == [
        *requests[:6], msgspec.structs.replace(requests[6], campaign=context)]
    # The schema reads the same context from a batch and from a lone request.
    batch, lone = (events.SEND_REQUESTED_RECORD.validate_json(v) for _, v in records[1:])
    assert isinstance(batch, events.SendRequestedBatch) and batch.campaign is not None
    assert isinstance(lone, events.SendRequested) and lone.campaign == batch.campaign
    _same(context, batch.campaign)
    for model, mine in zip(batch.requests, wire.decode_send_requests(records[1][1])[1],
                           strict=True):
        _same(mine, model)


def test_a_record_without_a_context_still_reads_with_none() -> None:
    _, requests = _context_requests(3)
    for _, value in wire.request_records(requests, batch_size=2):
        assert wire.decode_send_requests(value)[0] is None
        assert b'"campaign":null' in value or b'"campaign"' not in value


def test_one_context_for_requests_of_two_campaigns_is_refused() -> None:
    context, requests = _context_requests(1)
    _, others = _context_requests(1)
    with pytest.raises(ValueError, match="several campaigns"):
        wire.request_records([*requests, *others], batch_size=10, campaign=context)


_CONTEXT = json.loads(msgspec.json.encode(_context_requests(1)[0]))
REFUSED_CONTEXTS = {
    "a channel nobody has": _CONTEXT | {"templates": {"fax": {"body": "x"}}},
    "no sender": {k: v for k, v in _CONTEXT.items() if k != "sender"},
    "a template without a body": _CONTEXT | {"templates": {"sms": {"subject": "x"}}},
    "not an object": "email",
}


@pytest.mark.parametrize("context", REFUSED_CONTEXTS.values(), ids=REFUSED_CONTEXTS.keys())
def test_a_context_the_schema_refuses_is_refused_in_a_batch_and_alone(context: Any) -> None:
    for data in (json.loads(_batch(_CID, [_ITEM])) | {"campaign": context},
                 _ITEM | {"campaign": context}):
        raw = json.dumps(data).encode()
        with pytest.raises(ValidationError):
            events.SEND_REQUESTED_RECORD.validate_json(raw)
        with pytest.raises(ValidationError):
            wire.decode_send_requests(raw)


def test_a_context_valid_only_for_the_laxer_schema_is_read_through_it() -> None:
    org = uuid.uuid4()
    lax = _CONTEXT | {"organisation_id": f"urn:uuid:{org}",
                      "template": _CONTEXT["template"] | {"version": "3"}}
    data = json.dumps(json.loads(_batch(_CID, [_ITEM, _ITEM])) | {"campaign": lax}).encode()
    context, requests = wire.decode_send_requests(data)
    assert context is not None and context.organisation_id == org
    assert context.template.version == 3 and len(requests) == 2
    _same(context, events.SendRequestedBatch.model_validate_json(data).campaign)
