import uuid

import pytest
from pydantic import ValidationError

from services.tracker.domain import Progress, completion_event
from shared.events import LIFECYCLE, OUTCOME, MessageFailed, MessageSkipped
from tests.factories import outcome, started


def test_outcomes_round_trip_through_json_by_type() -> None:
    cid = uuid.uuid4()
    for status in ("completed", "failed", "skipped"):
        event = outcome(cid, 1, status)
        back = OUTCOME.validate_json(event.to_bytes())
        assert back == event and back.status == status


def test_an_unknown_schema_version_is_refused() -> None:
    raw = outcome(uuid.uuid4(), 1).model_dump(mode="json") | {"schema_version": 2}
    with pytest.raises(ValidationError):
        OUTCOME.validate_python(raw)


def test_lifecycle_started_round_trips() -> None:
    event = started(uuid.uuid4(), 10)
    assert LIFECYCLE.validate_json(event.to_bytes()) == event


def test_events_are_frozen() -> None:
    event = MessageSkipped(campaign_id=uuid.uuid4(), recipient_id=1, channel="sms")
    with pytest.raises(ValidationError):
        event.reason = "x"  # type: ignore[misc]


def test_progress_pending_is_total_minus_terminal_states() -> None:
    p = Progress(uuid.uuid4(), total=10, completed=5, failed=2, skipped=1, state="sending")
    assert (p.pending, p.is_done) == (2, False)
    assert p.view()["pending"] + 5 + 2 + 1 == 10


def test_progress_before_total_is_known_is_starting() -> None:
    p = Progress(uuid.uuid4(), total=None, completed=3, failed=0, skipped=0, state="sending")
    assert p.view()["state"] == "starting" and p.pending is None and not p.is_done


def test_completion_event_id_is_stable_for_a_campaign() -> None:
    cid = uuid.uuid4()
    p = Progress(cid, total=1, completed=1, failed=0, skipped=0, state="sending")
    assert completion_event(p).event_id == completion_event(p).event_id
    assert completion_event(p).campaign_id == cid


def test_failed_reason_survives_round_trip() -> None:
    event = MessageFailed(campaign_id=uuid.uuid4(), recipient_id=3, channel="email",
                          reason="HTTP 422: landline")
    assert OUTCOME.validate_json(event.to_bytes()).reason == "HTTP 422: landline"
