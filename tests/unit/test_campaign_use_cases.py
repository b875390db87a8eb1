"""The scheduler's campaign use cases over a fake unit of work: no network, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.scheduler import domain
from services.scheduler.campaigns import use_cases
from services.scheduler.campaigns.aborts import AbortAcks
from services.scheduler.campaigns.model import Kind, State
from services.scheduler.errors import Busy, Conflict, Invalid, InvalidTransition, NotFound
from shared import topics, wire
from shared.events import (
    LIFECYCLE,
    AbortAcknowledged,
    CampaignAborted,
    CampaignCanceled,
    CampaignCompleted,
    CampaignScheduled,
)
from tests.unit.fake_scheduler_uow import (
    ORG,
    OTHER_ORG,
    FakeFanOut,
    FakeUnitOfWork,
    StoredCampaign,
    principal,
    recipient,
)

NOW = datetime(2030, 6, 1, 12, tzinfo=UTC)
ADA = principal("ada")


def setup(*campaigns: StoredCampaign) -> tuple[FakeUnitOfWork, FakeFanOut]:
    uow = FakeUnitOfWork(now=NOW)
    for c in campaigns:
        for r in c.recipients:
            r.setdefault("id", uow.store.next_recipient_id)
            uow.store.next_recipient_id += 1
        uow.store.campaigns[c.id] = c
    return uow, FakeFanOut()


def stored(state: State = State.DRAFT, kind: Kind = Kind.MASS, n: int = 2,
           **fields: Any) -> StoredCampaign:
    people = [recipient(email=f"p{i}@example.org", phone=f"+4520{i:06d}", first_name=f"P{i}")
              for i in range(n)]
    return StoredCampaign(id=uuid.uuid4(), state=state, kind=kind, recipients=people, **fields)


def lifecycle_events(uow: FakeUnitOfWork) -> list[Any]:
    assert all(topic == topics.CAMPAIGN_LIFECYCLE for _, (topic, _, _) in uow.store.outbox)
    return [LIFECYCLE.validate_json(value) for _, (_, _, value) in uow.store.outbox]


def actions(uow: FakeUnitOfWork) -> list[tuple[str, str, dict[str, Any]]]:
    return [(action, actor, details) for _, action, actor, details in uow.store.audit]


# --- send now -------------------------------------------------------------------------------------

async def test_send_now_starts_sending_with_its_list_voters_and_kicks_the_fan_out_once() -> None:
    c = stored(channels=["email", "sms"], list_voters=[{"email": "v@example.org"}])
    uow, fanout = setup(c)
    await use_cases.send_now(uow, fanout, c.id, ADA)
    saved = uow.store.campaigns[c.id]
    assert saved.state is State.SENDING and saved.started
    assert saved.total == 2 * 3  # two channels, two recipients and the list's voter
    assert actions(uow) == [("sent out now", "ada", {"total": 6})]
    assert fanout.kicked == [c.id]
    assert uow.store.outbox == []  # the fan-out publishes `started`, with the total
    assert uow.commits == 1


@pytest.mark.parametrize("state", [s for s in State if s is not State.DRAFT])
async def test_send_now_is_refused_unless_draft_and_changes_nothing(state: State) -> None:
    c = stored(state)
    uow, fanout = setup(c)
    with pytest.raises(InvalidTransition, match=f"cannot send out now: .* is {state}"):
        await use_cases.send_now(uow, fanout, c.id, ADA)
    assert uow.store.campaigns[c.id].state is state
    assert (uow.commits, fanout.kicked, uow.store.audit) == (0, [], [])


async def test_another_organisations_campaign_is_not_found() -> None:
    c = stored()
    uow, fanout = setup(c)
    with pytest.raises(NotFound):
        await use_cases.send_now(uow, fanout, c.id, principal("eve", OTHER_ORG))
    assert uow.store.campaigns[c.id].state is State.DRAFT


async def test_send_now_without_recipients_is_invalid_and_nothing_starts() -> None:
    c = stored(n=0)
    uow, fanout = setup(c)
    with pytest.raises(Invalid, match="has no recipients"):
        await use_cases.send_now(uow, fanout, c.id, ADA)
    assert uow.store.campaigns[c.id].state is State.DRAFT and fanout.kicked == []


async def test_send_now_names_the_recipients_that_cannot_fill_the_template() -> None:
    c = stored(variables={"first_name", "ward"})
    c.recipients[1]["attributes"] = {"ward": "North"}
    uow, fanout = setup(c)
    with pytest.raises(Invalid, match="1 recipients lack template variables") as refused:
        await use_cases.send_now(uow, fanout, c.id, ADA)
    assert refused.value.errors == [{"recipient_id": c.recipients[0]["id"]}]
    assert uow.store.campaigns[c.id].state is State.DRAFT


# --- schedule, cancel, fire due ------------------------------------------------------------------

async def test_schedule_stores_the_time_and_writes_scheduled_to_the_outbox() -> None:
    c = stored()
    uow, _ = setup(c)
    at = datetime.now(UTC) + timedelta(days=2)
    await use_cases.schedule(uow, c.id, at, ADA)
    saved = uow.store.campaigns[c.id]
    assert (saved.state, saved.scheduled_for) == (State.SCHEDULED, at)
    [event] = lifecycle_events(uow)
    assert isinstance(event, CampaignScheduled)
    assert (event.campaign_id, event.scheduled_for) == (c.id, at)
    [(_, (_, key, _))] = uow.store.outbox
    assert key == c.id.bytes
    assert actions(uow) == [("scheduled", "ada",
                             {"scheduled_for": at.isoformat(), "recipients": 2})]


async def test_schedule_in_the_past_is_invalid() -> None:
    c = stored()
    uow, _ = setup(c)
    with pytest.raises(Invalid, match="is in the past"):
        await use_cases.schedule(uow, c.id, datetime.now(UTC) - timedelta(minutes=1), ADA)
    assert uow.store.campaigns[c.id].state is State.DRAFT and uow.store.outbox == []


async def test_cancel_makes_a_draft_again_voids_queued_sends_and_releases_senders() -> None:
    c = stored(State.SCHEDULED, Kind.P2P, scheduled_for=NOW + timedelta(hours=1))
    uow, _ = setup(c)
    c.recipients[0]["pressed_at"] = NOW
    uow.store.senders[ADA.user_id] = c.id
    await use_cases.cancel(uow, c.id, ADA)
    saved = uow.store.campaigns[c.id]
    assert (saved.state, saved.scheduled_for) == (State.DRAFT, None)
    assert all(r["pressed_at"] is None for r in saved.recipients)
    assert uow.store.senders == {}
    [event] = lifecycle_events(uow)
    assert isinstance(event, CampaignCanceled) and event.campaign_id == c.id
    assert actions(uow) == [("canceled", "ada", {})]


async def test_cancel_of_a_draft_is_refused_and_writes_nothing_to_the_outbox() -> None:
    c = stored()
    uow, _ = setup(c)
    with pytest.raises(InvalidTransition, match="cannot cancel the schedule"):
        await use_cases.cancel(uow, c.id, ADA)
    assert uow.store.outbox == [] and uow.store.audit == []


async def test_fire_due_starts_due_campaigns_and_completes_p2p_ones_nobody_pressed_send_for(
) -> None:
    due = stored(State.SCHEDULED, scheduled_for=NOW - timedelta(seconds=1),
                 list_voters=[{"phone": "+4520999999"}])
    p2p_nobody = stored(State.SCHEDULED, Kind.P2P, scheduled_for=NOW - timedelta(minutes=1))
    p2p_pressed = stored(State.SCHEDULED, Kind.P2P, scheduled_for=NOW - timedelta(minutes=2))
    later = stored(State.SCHEDULED, scheduled_for=NOW + timedelta(minutes=1))
    uow, fanout = setup(due, p2p_nobody, p2p_pressed, later)
    p2p_pressed.recipients[1]["pressed_at"] = NOW
    uow.store.senders[ADA.user_id] = p2p_nobody.id

    fired = await use_cases.fire_due(uow, fanout)

    assert fired == [p2p_pressed.id, p2p_nobody.id, due.id]  # the longest due first
    states = {c: uow.store.campaigns[c].state for c in uow.store.campaigns}
    assert states == {due.id: State.SENDING, p2p_nobody.id: State.COMPLETED,
                      p2p_pressed.id: State.SENDING, later.id: State.SCHEDULED}
    assert uow.store.campaigns[due.id].total == 3  # the list's voter snapshotted
    assert uow.store.campaigns[p2p_nobody.id].fanout_rewound
    assert uow.store.senders == {}
    assert ("ended", "scheduler", {"pressed": 0}) in actions(uow)
    # Every fired campaign is fanned out once (an ended P2P one reports "not sent").
    assert fanout.kicked == fired
    assert uow.commits == 1


async def test_fire_due_with_nothing_due_fires_nothing() -> None:
    uow, fanout = setup(stored(State.SCHEDULED, scheduled_for=NOW + timedelta(days=1)))
    assert await use_cases.fire_due(uow, fanout) == []
    assert fanout.kicked == [] and uow.store.audit == []


# --- abort, completion ---------------------------------------------------------------------------

async def test_abort_answers_with_the_dispatchers_acknowledgement_and_what_is_pending() -> None:
    c = stored(State.SENDING, total=10)
    uow, _ = setup(c)
    acks = AbortAcks()

    async def dispatchers() -> set[str]:
        # The dispatcher answers the published abort while the roll call is taken.
        acks.acknowledged(AbortAcknowledged(campaign_id=c.id, instance="d1", settled=4))
        return {"d1"}

    answer = await use_cases.abort(uow, c.id, ADA, acks=acks, list_dispatchers=dispatchers,
                                   wait_seconds=5)
    assert answer == {"pending": 6, "acknowledged": True, "acknowledged_by": ["d1"],
                      "unresponsive": []}
    saved = uow.store.campaigns[c.id]
    assert (saved.state, saved.abort_pending) == (State.ABORTING, 6)
    [event] = lifecycle_events(uow)
    assert isinstance(event, CampaignAborted) and event.campaign_id == c.id
    assert actions(uow) == [("aborted", "ada", answer)]
    assert uow.commits == 2  # the abort, then its answer


async def test_abort_without_an_answer_is_not_acknowledged_but_stays_aborting() -> None:
    c = stored(State.SENDING, total=10)
    uow, _ = setup(c)

    async def dispatchers() -> set[str]:
        return {"d1"}

    answer = await use_cases.abort(uow, c.id, ADA, acks=AbortAcks(),
                                   list_dispatchers=dispatchers, wait_seconds=0.001)
    assert answer["acknowledged"] is False and answer["pending"] is None
    assert answer["unresponsive"] == ["d1"]
    # The relay has not published it: the fake relays nothing.
    assert "Kafka has not taken it yet" in answer["message"]
    assert uow.store.campaigns[c.id].state is State.ABORTING
    assert uow.store.campaigns[c.id].abort_pending is None


async def test_abort_of_a_draft_is_refused_before_anything_is_published() -> None:
    c = stored()
    uow, _ = setup(c)

    async def dispatchers() -> set[str]:
        raise AssertionError("no roll call for a refused abort")

    with pytest.raises(InvalidTransition, match="cannot abort"):
        await use_cases.abort(uow, c.id, ADA, acks=AbortAcks(), list_dispatchers=dispatchers,
                              wait_seconds=1)
    assert uow.store.outbox == [] and uow.commits == 0


@pytest.mark.parametrize(("state", "final"), [
    (State.SENDING, State.COMPLETED), (State.ABORTING, State.ABORTED)])
async def test_nothing_pending_finishes_the_campaign_once(state: State, final: State) -> None:
    c = stored(state, Kind.P2P)
    uow, _ = setup(c)
    uow.store.senders[ADA.user_id] = c.id
    event = CampaignCompleted(campaign_id=c.id, completed=1, failed=0, skipped=1)
    await use_cases.apply_completed(uow, event)
    counts = {"completed": 1, "failed": 0, "skipped": 1}
    saved = uow.store.campaigns[c.id]
    assert (saved.state, saved.final_counts) == (final, counts)
    assert uow.store.senders == {}
    assert actions(uow) == [(final, "tracker", counts)]
    await use_cases.apply_completed(uow, event)  # again: applied once
    assert len(uow.store.audit) == 1


async def test_nothing_pending_for_a_draft_is_recorded_and_ignored() -> None:
    c = stored()
    uow, _ = setup(c)
    event = CampaignCompleted(campaign_id=c.id, completed=0, failed=0, skipped=0)
    await use_cases.apply_completed(uow, event)
    assert uow.store.campaigns[c.id].state is State.DRAFT
    assert uow.store.processed == {event.event_id} and uow.store.audit == []


# --- peer to peer --------------------------------------------------------------------------------

async def test_start_sending_a_draft_p2p_campaign_claims_the_user_and_starts() -> None:
    c = stored(kind=Kind.P2P)
    uow, fanout = setup(c)
    assert await use_cases.start_sending(uow, fanout, c.id, ADA) == "sending"
    assert uow.store.senders == {ADA.user_id: c.id}
    assert uow.store.campaigns[c.id].state is State.SENDING
    assert fanout.kicked == [c.id]
    assert actions(uow) == [("started sending", "ada", {})]


async def test_start_sending_a_scheduled_p2p_campaign_keeps_it_scheduled() -> None:
    c = stored(State.SCHEDULED, Kind.P2P, scheduled_for=NOW + timedelta(hours=1))
    uow, fanout = setup(c)
    assert await use_cases.start_sending(uow, fanout, c.id, ADA) == "scheduled"
    assert uow.store.campaigns[c.id].state is State.SCHEDULED and fanout.kicked == []


async def test_a_user_sends_one_campaign_at_a_time() -> None:
    first, second = stored(kind=Kind.P2P), stored(kind=Kind.P2P)
    uow, fanout = setup(first, second)
    await use_cases.start_sending(uow, fanout, first.id, ADA)
    with pytest.raises(Busy) as busy:
        await use_cases.start_sending(uow, fanout, second.id, ADA)
    assert busy.value.active_campaign == first.id
    assert uow.store.campaigns[second.id].state is State.DRAFT
    assert fanout.kicked == [first.id]


async def _sending_p2p(**fields: Any) -> tuple[FakeUnitOfWork, StoredCampaign]:
    c = stored(kind=Kind.P2P, channels=["email", "sms"], **fields)
    uow, fanout = setup(c)
    await use_cases.start_sending(uow, fanout, c.id, ADA)
    return uow, c


async def test_press_send_puts_the_recipients_requests_in_the_outbox_once() -> None:
    uow, c = await _sending_p2p()
    uow.store.opt_outs.add((c.organisation_id, c.recipients[0]["phone"]))
    rid = c.recipients[0]["id"]
    assert await use_cases.press_send(uow, c.id, rid, ADA, 100) == {
        "recipient_id": rid, "status": "sent"}
    [(_, (topic, _, value))] = uow.store.outbox
    assert topic == topics.SEND_REQUESTED
    context, requests = wire.decode_send_requests(value)
    assert context is not None and context.organisation_id == c.organisation_id
    by_channel = {r.channel: r for r in requests}
    assert by_channel["email"].address == c.recipients[0]["email"]
    assert by_channel["email"].skip_reason is None
    assert by_channel["sms"].skip_reason == "opted_out" and by_channel["sms"].address is None
    assert await use_cases.press_send(uow, c.id, rid, ADA, 100) == {
        "recipient_id": rid, "status": "already sent"}
    assert len(uow.store.outbox) == 1


async def test_press_send_before_the_scheduled_time_queues() -> None:
    at = NOW + timedelta(hours=1)
    c = stored(State.SCHEDULED, Kind.P2P, scheduled_for=at)
    uow, fanout = setup(c)
    await use_cases.start_sending(uow, fanout, c.id, ADA)
    rid = c.recipients[1]["id"]
    assert await use_cases.press_send(uow, c.id, rid, ADA, 100) == {
        "recipient_id": rid, "status": "queued", "goes_at": at.isoformat()}
    assert uow.store.outbox == []
    assert uow.store.campaigns[c.id].recipients[1]["pressed_at"] is not None


async def test_press_send_needs_the_user_to_be_sending_and_a_known_recipient() -> None:
    uow, c = await _sending_p2p()
    with pytest.raises(Conflict, match=r"start sending campaign .* before pressing SEND"):
        await use_cases.press_send(uow, c.id, c.recipients[0]["id"], principal("bob"), 100)
    with pytest.raises(NotFound, match="recipient 999 not found"):
        await use_cases.press_send(uow, c.id, 999, ADA, 100)
    assert uow.store.outbox == []


async def test_end_completes_keeps_those_sent_and_runs_a_last_fan_out_pass() -> None:
    uow, c = await _sending_p2p()
    await use_cases.press_send(uow, c.id, c.recipients[0]["id"], ADA, 100)
    fanout = FakeFanOut()
    await use_cases.end(uow, fanout, c.id, ADA)
    saved = uow.store.campaigns[c.id]
    assert saved.state is State.COMPLETED and saved.fanout_rewound
    assert saved.recipients[0]["pressed_at"] is not None
    assert uow.store.senders == {}
    assert actions(uow)[-1] == ("ended", "ada", {"pressed": 1})
    assert fanout.kicked == [c.id]


async def test_end_before_the_scheduled_time_sends_to_nobody() -> None:
    c = stored(State.SCHEDULED, Kind.P2P, scheduled_for=NOW + timedelta(hours=1))
    uow, fanout = setup(c)
    await use_cases.start_sending(uow, fanout, c.id, ADA)
    await use_cases.press_send(uow, c.id, c.recipients[0]["id"], ADA, 100)
    await use_cases.end(uow, fanout, c.id, ADA)
    saved = uow.store.campaigns[c.id]
    assert saved.state is State.COMPLETED and saved.total == 2
    assert all(r["pressed_at"] is None for r in saved.recipients)
    assert actions(uow)[-1] == ("ended", "ada", {"pressed": 0})


async def test_end_of_an_aborted_campaign_is_refused() -> None:
    c = stored(State.ABORTED, Kind.P2P)
    uow, fanout = setup(c)
    with pytest.raises(InvalidTransition, match="cannot end the campaign"):
        await use_cases.end(uow, fanout, c.id, ADA)
    assert fanout.kicked == [] and uow.commits == 0


# --- create, add recipients, individual send ---------------------------------------------------

def _create(**fields: Any) -> domain.CreateCampaign:
    return domain.CreateCampaign.model_validate({
        "name": "Spring", "channels": ["email"], "template": "Hi {{ first_name }}",
        "subject": "Spring", "sender": {"name": "Ward office", "email": "ward@example.org"},
        **fields})


async def test_create_campaign_makes_a_draft_of_the_actors_organisation() -> None:
    uow, _ = setup()
    campaign_id = await use_cases.create_campaign(uow, _create(), ADA)
    saved = uow.store.campaigns[campaign_id]
    assert (saved.state, saved.kind, saved.organisation_id) == (State.DRAFT, Kind.MASS,
                                                                ADA.organisation_id)
    assert saved.variables == {"first_name"}
    assert actions(uow) == [("created", "ada", {"channels": ["email"], "template_version": 1})]


async def test_create_campaign_with_another_organisations_sender_is_refused() -> None:
    uow, _ = setup()
    other = principal("eve", OTHER_ORG)
    theirs = await use_cases.create_campaign(uow, _create(), other)
    [sender_id] = [s for s, (org, _) in uow.store.sender_rows.items() if org == OTHER_ORG]
    with pytest.raises(Invalid, match=f"sender {sender_id} does not exist"):
        await use_cases.create_campaign(
            uow, _create(sender=None, sender_id=str(sender_id)), ADA)
    assert list(uow.store.campaigns) == [theirs]


async def test_create_an_sms_campaign_needs_a_sender_with_an_sms_sender_id() -> None:
    uow, _ = setup()
    with pytest.raises(Invalid, match="needs a sender with an sms_sender_id"):
        await use_cases.create_campaign(uow, _create(channels=["sms"]), ADA)
    assert uow.store.campaigns == {} and uow.store.sender_rows == {}


async def test_recipients_are_added_normalised_to_a_draft_only() -> None:
    draft, sending = stored(n=0), stored(State.SENDING, n=0)
    uow, _ = setup(draft, sending)
    people = [domain.Recipient(phone="20 12 34 56", first_name="Ib"),
              domain.Recipient(email="not an address")]
    assert await use_cases.add_recipients(uow, draft.id, people, "DK", ADA) == 2
    first, second = uow.store.campaigns[draft.id].recipients
    assert (first["phone"], first["phone_invalid"]) == ("+4520123456", False)
    assert (second["email"], second["email_invalid"]) == ("not an address", True)
    with pytest.raises(InvalidTransition, match=r"cannot add recipients: .* is sending"):
        await use_cases.add_recipients(uow, sending.id, people, "DK", ADA)
    assert uow.store.campaigns[sending.id].recipients == []


async def _stored_sender_and_template(uow: FakeUnitOfWork, body: str) -> dict[str, Any]:
    async with uow:
        sender = await uow.campaigns.add_sender(
            domain.SenderIn(name="Ward", email="ward@example.org", sms_sender_id="Ward"), ORG)
        template = await uow.campaigns.add_template(
            domain.TemplateIn(name="t", email_subject="Hello", email_body=body, sms_body=body),
            ORG)
        await uow.commit()
    return {"sender_id": sender.id, "template_id": template.template_id}


async def test_an_individual_send_is_a_one_recipient_campaign_sent_now() -> None:
    uow, fanout = setup()
    stored_ids = await _stored_sender_and_template(uow, "Hi {{ first_name }}")
    cmd = domain.SendIndividually(
        recipient=domain.Recipient(email="ib@example.org", phone="+4520123456", first_name="Ib"),
        channels=["email", "sms"], **stored_ids)
    campaign_id = await use_cases.send_individually(uow, fanout, cmd, ADA, "DK", voter_id=7)
    saved = uow.store.campaigns[campaign_id]
    assert (saved.kind, saved.state, saved.total) == (Kind.INDIVIDUAL, State.SENDING, 2)
    [sent_to] = saved.recipients
    assert (sent_to["email"], sent_to["voter_id"]) == ("ib@example.org", 7)
    assert fanout.kicked == [campaign_id]
    assert [a for a, _, _ in actions(uow)] == ["created", "sent out now"]


async def test_an_individual_send_the_template_cannot_fill_is_not_sent() -> None:
    uow, fanout = setup()
    stored_ids = await _stored_sender_and_template(uow, "Hi {{ first_name }} of {{ ward }}")
    cmd = domain.SendIndividually(recipient=domain.Recipient(email="ib@example.org"),
                                  channels=["email"], **stored_ids)
    with pytest.raises(Invalid, match="lack template variables"):
        await use_cases.send_individually(uow, fanout, cmd, ADA, "DK")
    [saved] = uow.store.campaigns.values()
    assert saved.state is State.DRAFT and fanout.kicked == []
