"""The dispatcher's rules for one message's trouble, without I/O: key decisions, the retry
schedule's timing, the circuit breaker, and header safety."""

from __future__ import annotations

import pytest

from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    SmtpProvider,
    check_header_safe,
)
from services.dispatcher.reliability import (
    CircuitBreaker,
    KeyAction,
    KeyState,
    RetryPolicy,
    decide,
)


@pytest.mark.parametrize(
    ("state", "resend", "action"),
    [
        (KeyState(), False, KeyAction.SEND),
        (KeyState(settled=True, claim_age_seconds=999, scheduled=True), False, KeyAction.REPORT),
        (KeyState(scheduled=True, claim_age_seconds=999), False, KeyAction.SCHEDULED),
        (KeyState(claim_age_seconds=3), False, KeyAction.WAIT),
        (KeyState(claim_age_seconds=3), True, KeyAction.WAIT),
        (KeyState(claim_age_seconds=60), False, KeyAction.IN_DOUBT),
        (KeyState(claim_age_seconds=60), True, KeyAction.RESEND),
    ],
)
def test_a_key_seen_before_is_reported_waited_for_or_in_doubt_never_simply_resent(
    state: KeyState, resend: bool, action: KeyAction
) -> None:
    assert decide(state, lease_seconds=15, resend_in_doubt=resend) is action


def test_retries_back_off_exponentially_with_jitter_up_to_the_deadline() -> None:
    policy = RetryPolicy(base_seconds=1, cap_seconds=300, deadline_seconds=3600)
    delays = [policy.next_due(n, first_at=0, now=0, rand=lambda: 0.5) for n in range(1, 12)]
    assert delays[:5] == [1, 2, 4, 8, 16]
    assert max(d for d in delays if d is not None) == 300  # capped
    low = policy.next_due(3, first_at=0, now=0, rand=lambda: 0.0)
    high = policy.next_due(3, first_at=0, now=0, rand=lambda: 0.999)
    assert low == 2 and high is not None and 5.99 < high < 6
    assert policy.next_due(1, first_at=0, now=3599.9, rand=lambda: 0.5) is None


def test_a_retry_waits_at_least_the_providers_retry_after() -> None:
    policy = RetryPolicy(base_seconds=1)
    assert policy.next_due(1, first_at=0, now=10, retry_after=120, rand=lambda: 0.5) == 130


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_on_mostly_failing_calls_and_one_probe_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(min_calls=10, failure_ratio=0.5, open_seconds=2,
                             max_open_seconds=8, clock=clock)
    for i in range(10):
        assert breaker.allow()
        breaker.record(i % 3 == 0)  # 6 of 10 failed
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record(False)  # the probe failed: open for twice as long
    clock.now = 5.9
    assert not breaker.allow()
    clock.now = 6.0
    assert breaker.allow()
    breaker.record(True)
    assert breaker.state == "closed" and breaker.allow()


def test_refusals_of_single_messages_do_not_trip_the_breaker() -> None:
    breaker = CircuitBreaker(min_calls=5, clock=Clock())
    for _ in range(50):
        breaker.record(True)  # permanent refusals count as answers
    assert breaker.state == "closed"


def test_a_probe_that_did_not_go_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(min_calls=2, open_seconds=1, clock=clock)
    breaker.record(False)
    breaker.record(False)
    clock.now = 1.0
    assert breaker.allow()
    breaker.cancel_probe()
    assert breaker.allow()


def _message(**kw: str) -> OutgoingMessage:
    fields = {"channel": "email", "to": "a@example.org", "sender": "Office <o@example.org>",
              "subject": "Hi Ann", "body": "Hello", "idempotency_key": "k"}
    fields.update(kw)
    return OutgoingMessage(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("subject", "Hi Ann\r\nBcc: x@example.com", "invalid_header"),
        ("subject", "Hi Ann\nBcc: x@example.com", "invalid_header"),
        ("sender", "Office\r\nBcc: x@example.com <o@example.org>", "invalid_header"),
        ("to", "a@example.org\r\nBcc: x@example.com", "invalid_address"),
    ],
)
async def test_a_line_break_in_a_header_value_fails_that_message_before_any_connection(
    field: str, value: str, reason: str
) -> None:
    with pytest.raises(PermanentProviderError, match=reason):
        check_header_safe(_message(**{field: value}))
    # Port 9 (discard) is never dialled: the message is refused before the connection.
    smtp = SmtpProvider("127.0.0.1", 9, connections=1, timeout=1)
    with pytest.raises(PermanentProviderError, match=reason):
        await smtp.send(_message(**{field: value}))


def test_answers_older_than_the_window_no_longer_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(window_seconds=10, min_calls=4, failure_ratio=0.5, clock=clock)
    for _ in range(3):
        breaker.record(False)  # three failures, not yet enough calls to judge
    clock.now = 10.0  # they have left the window
    breaker.record(False)
    assert breaker.state == "closed"  # one failure of one call: below min_calls
    for _ in range(4):
        breaker.record(True)
    breaker.record(False)
    assert breaker.state == "closed"  # 2 failures of 6
    for _ in range(2):
        breaker.record(False)
    assert breaker.state == "open"  # 4 failures of 8: half
