import uuid

import pytest
from pydantic import ValidationError

from services.tracker.domain import Counts, Progress, Reasons, completion_event
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


def _progress(total: int | None, completed: int, failed: int, skipped: int,
              started: bool = True) -> Progress:
    return Progress(uuid.uuid4(), "sending", started,
                    {"email": Counts(total, completed, failed, skipped)})


def test_progress_pending_is_total_minus_terminal_states() -> None:
    p = _progress(10, 5, 2, 1)
    assert (p.counts.pending, p.is_done) == (2, False)
    assert p.view()["pending"] + 5 + 2 + 1 == 10


def test_progress_sums_channels() -> None:
    p = Progress(uuid.uuid4(), "sending", True,
                 {"email": Counts(3, 3, 0, 0), "sms": Counts(3, 1, 1, 1)})
    assert (p.counts.total, p.counts.pending, p.is_done) == (6, 0, True)


def test_progress_sums_reasons_over_channels_and_shows_opted_out() -> None:
    email = Counts(4, 1, 1, 2, reasons=Reasons.from_rows(
        [["skipped", "opted_out", 1], ["skipped", "missing_address", 1], ["failed", "", 1]]))
    sms = Counts(4, 2, 0, 2, reasons=Reasons.from_rows([["skipped", "opted_out", 2]]))
    view = Progress(uuid.uuid4(), "sending", True, {"email": email, "sms": sms}).view()
    assert view["opted_out"] == 3
    assert view["reasons"]["skipped"] == {"missing_address": 1, "opted_out": 3}
    assert view["reasons"]["failed"] == {"unknown": 1}
    assert view["by_channel"]["sms"]["opted_out"] == 2


def test_progress_before_total_is_known_is_starting() -> None:
    p = _progress(None, 3, 0, 0, started=False)
    assert p.view()["state"] == "starting" and p.counts.pending is None and not p.is_done


def test_completion_event_id_is_stable_for_a_campaign() -> None:
    p = _progress(1, 1, 0, 0)
    assert completion_event(p).event_id == completion_event(p).event_id
    assert completion_event(p).campaign_id == p.campaign_id


def test_failed_reason_survives_round_trip() -> None:
    event = MessageFailed(campaign_id=uuid.uuid4(), recipient_id=3, channel="email",
                          reason="HTTP 422: landline")
    assert OUTCOME.validate_json(event.to_bytes()).reason == "HTTP 422: landline"
