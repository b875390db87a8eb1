"""What an abort answers: acknowledged only on answers, never on a dispatcher's silence."""

import uuid

from services.scheduler.campaigns.aborts import AbortAcks
from services.scheduler.domain import abort_answer
from shared.events import AbortAcknowledged


def _answer(members: set[str], acks: dict[str, int], *, relayed: bool = True,
            total: int = 1000) -> dict[str, object]:
    return abort_answer(total=total, members=members, acks=acks, relayed=relayed,
                        waited_seconds=10)


def test_every_member_answered_is_acknowledged_with_the_most_settled_as_not_pending() -> None:
    answer = _answer({"d1", "d2"}, {"d1": 300, "d2": 420})
    assert answer == {"pending": 580, "acknowledged": True, "acknowledged_by": ["d1", "d2"],
                      "unresponsive": []}


def test_no_member_and_no_answer_is_not_acknowledged_and_says_so() -> None:
    # A hung dispatcher dropped from the group leaves nobody to answer: not a yes.
    answer = _answer(set(), {})
    assert answer["acknowledged"] is False
    assert answer["acknowledged_by"] == [] and answer["unresponsive"] == []
    assert answer["pending"] is None
    assert str(answer["message"]).startswith("no dispatcher answered: ")


def test_a_silent_member_is_listed_unresponsive() -> None:
    answer = _answer({"d1", "d2"}, {"d1": 10})
    assert answer["acknowledged"] is False
    assert answer["acknowledged_by"] == ["d1"] and answer["unresponsive"] == ["d2"]
    assert answer["pending"] == 990
    assert "d2 did not answer within 10 s" in str(answer["message"])


def test_every_member_silent_is_no_answer() -> None:
    answer = _answer({"d1"}, {})
    assert answer["acknowledged"] is False and answer["unresponsive"] == ["d1"]
    assert str(answer["message"]).startswith("no dispatcher answered: d1 did not answer")


def test_an_answer_from_an_instance_that_joined_after_the_roll_call_counts() -> None:
    answer = _answer(set(), {"d3": 7})
    assert answer["acknowledged"] is True and answer["acknowledged_by"] == ["d3"]
    assert answer["pending"] == 993


def test_an_abort_not_yet_relayed_says_kafka_has_not_taken_it() -> None:
    answer = _answer({"d1"}, {}, relayed=False)
    assert answer["acknowledged"] is False
    assert "Kafka has not taken it yet" in str(answer["message"])


def test_the_wait_ends_on_answers_only_never_on_an_empty_roll_call() -> None:
    acks, cid = AbortAcks(), uuid.uuid4()
    with acks.expecting(cid) as wait:
        wait.expect(set())
        assert not wait.done.is_set()
        acks.acknowledged(AbortAcknowledged(campaign_id=cid, instance="late", settled=1))
        assert wait.done.is_set() and wait.acks == {"late": 1}
    # Once the abort answered, later acknowledgements find no waiter and are dropped.
    acks.acknowledged(AbortAcknowledged(campaign_id=cid, instance="x", settled=2))
    assert wait.acks == {"late": 1}
