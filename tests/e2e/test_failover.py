"""Provider failover end to end (issue 14's acceptance): SMS campaigns through a dispatcher
whose chain is `twilio,http` (the fake Twilio first, the session's fake HTTP provider second)
with the default failover rule (50 errors in 60 s pass the primary over for 30 s), paced at
100 messages a second so that the faults land mid-send.

- The primary fails every call from some point of a campaign on: at least 99% of the messages
  it had not accepted by then are accepted by the secondary, within 2 minutes; no message is
  accepted by both (or twice by one).
- The primary recovers mid-campaign: traffic returns to it (within the pause, 30 s).
- The primary stops answering (calls time out: it may have accepted them): the messages in
  flight then stay with it (in doubt, never sent by the secondary too) and go out through it
  once it is back; all the others go through the secondary. Five calls in doubt in a row pass
  the primary over, and after a pause one message tries it, not a call slot's worth.

What each fake accepted, and when, is read from its request log; the counts are printed.
"""

from __future__ import annotations

import itertools
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devtools.processes import Proc, Sendout, free_port
from tests.e2e.conftest import wait_for_completion
from tests.e2e.helpers import sms_campaign

pytestmark = pytest.mark.e2e

SID = "AC" + "5" * 32
RATE = 100  # messages a second, one dispatcher
CONCURRENCY = 50  # the session's SENDOUT_CONCURRENCY (tests/e2e/conftest.py)
TIMEOUT = 3.0  # the provider timeout of this module's dispatcher


@dataclass
class Chain:
    twilio: str  # the fake Twilio: the primary
    http: str  # the session's fake HTTP provider: the secondary


@pytest.fixture(scope="module")
def chain(sendout: Sendout) -> Iterator[Chain]:
    """The session's dispatchers replaced by one with the chain `twilio,http` and the default
    failover rule; put back after."""
    procs = sendout.processes
    port, token = free_port(), secrets.token_hex(16)
    fake = procs.start("fake-twilio-failover",
                       ["-m", "devtools.fake_twilio", "--port", str(port), "--account-sid", SID,
                        "--auth-token", token], {}, port)
    originals: list[Proc] = [p for p in procs.procs if p.name.startswith("dispatcher-")]
    for proc in originals:
        procs.terminate(proc.name)
    dispatcher = sendout.start_service("dispatcher", name="dispatcher-failover", extra_env={
        "SENDOUT_SMS_PROVIDERS": "twilio,http",
        "SENDOUT_TWILIO_BASE_URL": fake.url,
        "SENDOUT_TWILIO_ACCOUNT_SID": SID,
        "SENDOUT_TWILIO_AUTH_TOKEN": token,
        "SENDOUT_TWILIO_FROM": "+15005550001",
        "SENDOUT_RATE_LIMIT_PER_SECOND": str(RATE),
        "SENDOUT_PROVIDER_TIMEOUT_SECONDS": str(TIMEOUT),
    })
    try:
        yield Chain(fake.url, str(sendout.provider))
    finally:
        for name in (dispatcher.name, fake.name):
            procs.terminate(name)
        for proc in originals:
            procs.start(proc.name, proc.args, proc.env, proc.port)
        procs.wait_healthy()


# Numbers (+45 and eight digits) no other test of this run uses: the fakes keep every request.
_numbers = itertools.count(random.randrange(400, 800) * 1000)


def _phones(n: int) -> list[str]:
    return [f"+4532{next(_numbers):06d}" for _ in range(n)]


def _start(http: httpx.Client, sendout: Sendout, phones: list[str]) -> str:
    cid = sms_campaign(http, sendout, phones, name="Failover")
    http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
    return cid


def _wait_completed(http: httpx.Client, sendout: Sendout, cid: str, at_least: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        r = http.get(f"{sendout.tracker}/campaigns/{cid}/progress")
        if r.status_code == 200 and r.json()["completed"] >= at_least:
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def _acceptances(http: httpx.Client, fake: str, phones: list[str]) -> list[tuple[float, str]]:
    """(time, phone) of every request of these phones the fake accepted."""
    wanted = set(phones)
    out: list[tuple[float, str]] = []
    offset = 0
    while True:
        page = http.get(f"{fake}/requests", params={"offset": offset, "limit": 10_000}).json()
        requests: list[dict[str, Any]] = page["requests"]
        out += [(q["at"], q["to"]) for q in requests
                if q["to"] in wanted and q.get("status") in (201, 202)]
        if len(requests) < 10_000:
            return out
        offset += len(requests)


def _all_sent(http: httpx.Client, sendout: Sendout, chain: Chain, cid: str,
              phones: list[str]) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """Once the campaign completed with every message sent: what the primary and what the
    secondary accepted."""
    final = wait_for_completion(http, sendout.tracker, cid, timeout=240)
    assert (final["completed"], final["failed"]) == (len(phones), 0)
    return _acceptances(http, chain.twilio, phones), _acceptances(http, chain.http, phones)


def _outage(http: httpx.Client, chain: Chain, mode: str | None) -> float:
    http.post(f"{chain.twilio}/config",
              json={"outage": mode, "hang_seconds": 60}).raise_for_status()
    return time.time()


def _once_each(primary: list[tuple[float, str]], secondary: list[tuple[float, str]],
               phones: list[str]) -> None:
    counts: dict[str, int] = {}
    for _, phone in primary + secondary:
        counts[phone] = counts.get(phone, 0) + 1
    both = {p for _, p in primary} & {p for _, p in secondary}
    print(f"  accepted by both: {len(both)}; more than once: "
          f"{sum(1 for n in counts.values() if n > 1)}; never: {len(phones) - len(counts)}")
    assert not both
    assert set(counts) == set(phones) and set(counts.values()) == {1}


def test_a_primary_failing_every_call_mid_send_fails_over_within_two_minutes(
    sendout: Sendout, http: httpx.Client, chain: Chain
) -> None:
    _outage(http, chain, None)
    phones = _phones(30 * RATE)
    cid = _start(http, sendout, phones)
    _wait_completed(http, sendout, cid, len(phones) // 10)
    down = _outage(http, chain, "503")
    try:
        final = wait_for_completion(http, sendout.tracker, cid, timeout=180)
    finally:
        _outage(http, chain, None)
    assert (final["completed"], final["failed"]) == (len(phones), 0)
    primary = _acceptances(http, chain.twilio, phones)
    secondary = _acceptances(http, chain.http, phones)
    before = sum(1 for at, _ in primary if at < down)
    remaining = len(phones) - before
    moved = [at for at, _ in secondary if at >= down]
    within = sum(1 for at in moved if at < down + 120)
    print(f"\nprimary down at {before} of {len(phones)} accepted; of the {remaining} remaining: "
          f"{len(moved)} through the secondary ({within} within 2 minutes, the last "
          f"{max(moved) - down:.1f} s after), {sum(1 for at, _ in primary if at >= down)} "
          f"through the primary; before: {len(secondary) - len(moved)} through the secondary")
    _once_each(primary, secondary, phones)
    assert within >= 0.99 * remaining


def test_traffic_returns_to_a_primary_that_recovers(
    sendout: Sendout, http: httpx.Client, chain: Chain
) -> None:
    pause = 30.0  # SENDOUT_FAILOVER_PAUSE_SECONDS, the default
    phones = _phones(55 * RATE)
    down = _outage(http, chain, "503")
    try:
        cid = _start(http, sendout, phones)
        _wait_completed(http, sendout, cid, 10 * RATE)
    finally:
        up = _outage(http, chain, None)
    primary, secondary = _all_sent(http, sendout, chain, cid, phones)
    back = min((at for at, _ in primary), default=float("inf"))
    settled = up + pause + 2  # the pause that began last before recovery is over by then
    after = [(at, "primary") for at, _ in primary if at >= settled] + \
            [(at, "secondary") for at, _ in secondary if at >= settled]
    via_primary = sum(1 for _, which in after if which == "primary")
    print(f"\nprimary down for the first {up - down:.1f} s: {len(secondary)} through the "
          f"secondary, {len(primary)} through the primary; first back at the primary "
          f"{back - up:.1f} s after it recovered; from {settled - up:.0f} s after: "
          f"{via_primary} of {len(after)} through the primary")
    _once_each(primary, secondary, phones)
    assert all(at >= up for at, _ in primary)
    assert back - up <= pause + 2
    assert len(after) >= 5 * RATE and via_primary >= 0.99 * len(after)


def test_a_primary_that_stops_answering_keeps_only_the_messages_in_doubt(
    sendout: Sendout, http: httpx.Client, chain: Chain
) -> None:
    _outage(http, chain, None)
    time.sleep(32)  # the previous test's pause is over
    phones = _phones(40 * RATE)
    cid = _start(http, sendout, phones)
    _wait_completed(http, sendout, cid, len(phones) // 10)
    down = _outage(http, chain, "hang")
    try:
        time.sleep(65)  # two pauses: the trial after the first hangs too
        at_up = http.get(f"{sendout.tracker}/campaigns/{cid}/progress").json()
    finally:
        up = _outage(http, chain, None)
    primary, secondary = _all_sent(http, sendout, chain, cid, phones)
    before = sum(1 for at, _ in primary if at < down)
    remaining = len(phones) - before
    kept = sorted(at for at, _ in primary if at >= down)
    moved = [at for at, _ in secondary if at >= down]
    within = sum(1 for at in moved if at < down + 120)
    print(f"\nprimary hanging from {before} of {len(phones)} accepted, for {up - down:.0f} s; "
          f"of the {remaining} remaining: {len(moved)} through the secondary ({within} within "
          f"2 minutes, {100 * within / remaining:.1f}%), {len(kept)} kept in doubt for the "
          f"primary (pending when it came back: {at_up['pending']}), sent through it "
          f"{kept[0] - up if kept else 0:.1f}-{kept[-1] - up if kept else 0:.1f} s after")
    _once_each(primary, secondary, phones)
    assert all(at >= up for at in kept)
    # In doubt: the calls in flight when it stopped answering (at most a dispatcher's call
    # slots), the few that took the places of the first timeouts before five in a row passed
    # it over (SENDOUT_FAILOVER_DOUBT_ERRORS), and a trial message after each pause.
    assert len(kept) <= CONCURRENCY + 5 + 2 and at_up["pending"] == len(kept)
    assert within == remaining - len(kept)
