"""The campaign model: every state, every transition, allowed only from its states."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.scheduler import domain
from services.scheduler.campaigns.model import (
    Campaign,
    Ended,
    FanOutDue,
    Finished,
    Kind,
    SendingStarted,
    State,
)
from services.scheduler.errors import Invalid, InvalidTransition
from shared.events import CampaignAborted, CampaignCanceled, CampaignScheduled

AT = datetime(2030, 1, 1, 9, tzinfo=UTC)
MIGRATIONS = Path(__file__).parents[2] / "services" / "scheduler" / "migrations"


def campaign(state: State, kind: Kind = Kind.MASS) -> Campaign:
    return Campaign(id=uuid.uuid4(), kind=kind, state=state, scheduled_for=AT, channels=["sms"])


def test_the_states_are_the_ones_the_database_allows() -> None:
    sql = (MIGRATIONS / "001_campaigns.sql").read_text()
    check = re.search(r"CHECK \(state IN \(([^)]*)\)\)", sql)
    assert check is not None
    assert {s.strip().strip("'") for s in check.group(1).split(",")} == {s.value for s in State}


def test_the_kinds_are_the_ones_the_database_allows() -> None:
    sql = (MIGRATIONS / "020_p2p.sql").read_text()
    check = re.search(r"CHECK \(kind IN \(([^)]*)\)\)", sql)
    assert check is not None
    assert {s.strip().strip("'") for s in check.group(1).split(",")} == {k.value for k in Kind}


def test_a_stored_state_string_becomes_the_enum_and_an_unknown_one_is_refused() -> None:
    loaded = Campaign(id=uuid.uuid4(), kind="p2p", state="sending")  # type: ignore[arg-type]
    assert loaded.state is State.SENDING and loaded.kind is Kind.P2P
    with pytest.raises(ValueError, match="'fanning out' is not a valid State"):
        Campaign(id=uuid.uuid4(), kind="mass", state="fanning out")  # type: ignore[arg-type]


Transition = Callable[[Campaign], Any]
TRANSITIONS: list[tuple[str, Transition, Kind, set[State]]] = [
    ("send out now", lambda c: c.send_now(), Kind.MASS, {State.DRAFT}),
    ("schedule", lambda c: c.schedule(AT), Kind.MASS, {State.DRAFT}),
    ("cancel the schedule", lambda c: c.cancel_schedule(), Kind.MASS, {State.SCHEDULED}),
    ("abort", lambda c: c.abort(), Kind.MASS, {State.SENDING}),
    ("send on schedule", lambda c: c.fire_due(0), Kind.MASS, {State.SCHEDULED}),
    ("add recipients", lambda c: c.ensure_recipients_can_change(), Kind.MASS, {State.DRAFT}),
    ("start sending", lambda c: c.start_sending(), Kind.P2P,
     {State.DRAFT, State.SCHEDULED, State.SENDING}),
    ("press SEND", lambda c: c.press_send(), Kind.P2P, {State.SCHEDULED, State.SENDING}),
    ("end the campaign", lambda c: c.end(), Kind.P2P,
     {State.DRAFT, State.SCHEDULED, State.SENDING}),
]


@pytest.mark.parametrize(("action", "transition", "kind", "allowed"), TRANSITIONS,
                         ids=[t[0] for t in TRANSITIONS])
def test_each_transition_is_allowed_only_from_its_states_and_a_refusal_changes_nothing(
    action: str, transition: Transition, kind: Kind, allowed: set[State]
) -> None:
    for state in State:
        c = campaign(state, kind)
        if state in allowed:
            transition(c)
            continue
        with pytest.raises(InvalidTransition, match=f"cannot {action}: campaign .* is {state}$"):
            transition(c)
        assert c.state is state


def test_send_now_starts_sending() -> None:
    c = campaign(State.DRAFT)
    assert c.send_now() == [SendingStarted(c.id)]
    assert c.state is State.SENDING


def test_schedule_says_when_in_its_event() -> None:
    c = campaign(State.DRAFT)
    [event] = c.schedule(AT + timedelta(days=1))
    assert isinstance(event, CampaignScheduled)
    assert (event.campaign_id, event.scheduled_for) == (c.id, AT + timedelta(days=1))
    assert c.state is State.SCHEDULED and c.scheduled_for == AT + timedelta(days=1)


def test_cancel_makes_a_draft_again_without_a_time() -> None:
    c = campaign(State.SCHEDULED)
    [event] = c.cancel_schedule()
    assert isinstance(event, CampaignCanceled) and event.campaign_id == c.id
    assert c.state is State.DRAFT and c.scheduled_for is None


def test_abort_moves_to_aborting_and_says_so() -> None:
    c = campaign(State.SENDING)
    [event] = c.abort()
    assert isinstance(event, CampaignAborted) and event.campaign_id == c.id
    assert c.state is State.ABORTING


@pytest.mark.parametrize(("kind", "pressed", "final", "ended"), [
    (Kind.MASS, 0, State.SENDING, False),
    (Kind.P2P, 2, State.SENDING, False),
    # Nobody pressed SEND before the time: nobody is messaged; it is completed.
    (Kind.P2P, 0, State.COMPLETED, True),
])
def test_a_due_schedule_starts_sending_or_completes_a_p2p_campaign_nobody_pressed_send_for(
    kind: Kind, pressed: int, final: State, ended: bool
) -> None:
    c = campaign(State.SCHEDULED, kind)
    events = c.fire_due(pressed)
    assert c.state is final
    assert events == [SendingStarted(c.id)] + ([Ended(c.id, never_started=False)] if ended else [])


@pytest.mark.parametrize(("state", "final"), [
    (State.SENDING, State.COMPLETED), (State.ABORTING, State.ABORTED),
    (State.COMPLETED, State.COMPLETED),
])
def test_nothing_pending_completes_or_aborts(state: State, final: State) -> None:
    c = campaign(state)
    assert c.complete() == [Finished(c.id, final)]
    assert c.state is final
    assert domain.state_after_completion(state) == final


@pytest.mark.parametrize("state", [State.DRAFT, State.SCHEDULED, State.ABORTED])
def test_nothing_pending_is_ignored_by_a_campaign_it_does_not_apply_to(state: State) -> None:
    c = campaign(state)
    assert c.complete() == []
    assert c.state is state


@pytest.mark.parametrize(("state", "final", "events"), [
    (State.DRAFT, State.SENDING, "started"),
    (State.SCHEDULED, State.SCHEDULED, None),
    (State.SENDING, State.SENDING, "fan-out"),
])
def test_starting_to_send_a_p2p_campaign(state: State, final: State, events: str | None) -> None:
    c = campaign(state, Kind.P2P)
    expected = {"started": [SendingStarted(c.id)], "fan-out": [FanOutDue(c.id)], None: []}
    assert c.start_sending() == expected[events]
    assert c.state is final


def test_peer_to_peer_actions_are_refused_for_a_mass_campaign() -> None:
    for action in (Campaign.start_sending, Campaign.press_send, Campaign.end):
        c = campaign(State.SENDING)
        with pytest.raises(Invalid, match="is not a peer-to-peer campaign"):
            action(c)
        assert c.state is State.SENDING


def test_send_goes_now_while_sending_and_queues_while_scheduled() -> None:
    assert campaign(State.SENDING, Kind.P2P).press_send() is True
    assert campaign(State.SCHEDULED, Kind.P2P).press_send() is False


@pytest.mark.parametrize(("state", "never_started"), [
    (State.DRAFT, True), (State.SCHEDULED, True), (State.SENDING, False)])
def test_end_completes_and_says_whether_it_ever_started(state: State, never_started: bool) -> None:
    c = campaign(state, Kind.P2P)
    assert c.end() == [Ended(c.id, never_started=never_started)]
    assert c.state is State.COMPLETED


def test_which_campaigns_are_fanned_out_and_whom_a_pass_publishes() -> None:
    fanned = {(k, s) for k in Kind for s in State if campaign(s, k).fans_out()}
    assert fanned == {(k, s) for k in Kind for s in (State.SENDING, State.ABORTING)} | {
        (Kind.P2P, State.COMPLETED)}
    assert campaign(State.SENDING).fan_out_selection() == (None, None)
    assert campaign(State.SENDING, Kind.P2P).fan_out_selection() == (True, None)
    assert campaign(State.COMPLETED, Kind.P2P).fan_out_selection() == (False, "not_sent")


def test_finished_states() -> None:
    assert {s for s in State if s.finished} == {State.COMPLETED, State.ABORTED}
