"""Provider failover: the chain's rules with scripted providers, then a primary (fake Twilio)
in an outage and a secondary (the fake HTTP provider) on the loopback, and the settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from devtools import lean_http
from devtools.fake_provider import Behaviour as HttpBehaviour
from devtools.fake_provider import ReceiptPoster, create_routes
from devtools.fake_twilio import Behaviour, create_app
from services.dispatcher.metrics import MeteredProvider
from services.dispatcher.providers import (
    HttpProvider,
    NoopProvider,
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.providers.failover import FailoverProvider, mark, pinned_to
from services.dispatcher.providers.registry import (
    adapters_of,
    build_providers,
    provider_chain,
    provider_names,
)
from services.dispatcher.providers.twilio import TwilioProvider
from services.dispatcher.settings import DispatcherSettings


class Scripted:
    """A provider whose answers the test sets: "ok", "permanent", "refused" (retryable, not
    in doubt) or "doubt" (retryable, in doubt)."""

    def __init__(self, name: str, answer: str = "ok", delay: float = 0.0) -> None:
        self.name = name
        self.answer = answer
        self.delay = delay  # how long each call takes
        self.calls: list[str] = []

    async def send(self, message: OutgoingMessage) -> str:
        self.calls.append(message.idempotency_key)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answer == "permanent":
            raise PermanentProviderError("invalid number")
        if self.answer in ("refused", "doubt"):
            raise RetryableProviderError("503", in_doubt=self.answer == "doubt")
        return f"{self.name}-{message.idempotency_key}"

    async def close(self) -> None:
        return None


def _sms(key: str, pinned_to: str | None = None) -> OutgoingMessage:
    return OutgoingMessage("sms", "+15005550006", "+15005550001", None, "hello", key,
                           pinned_to=pinned_to)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _chain(a: Scripted, b: Scripted, clock: Clock, errors: int = 3) -> FailoverProvider:
    return FailoverProvider([("a", a), ("b", b)], errors=errors, window_seconds=60,
                            pause_seconds=30, clock=clock)


async def test_a_refusal_moves_the_message_to_the_next_provider_at_once() -> None:
    a, b, clock = Scripted("a", "refused"), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=100)
    assert await chain.send(_sms("k1")) == "b-k1"
    assert (a.calls, b.calls, chain.accepted) == (["k1"], ["k1"], [0, 1])


async def test_sustained_errors_pass_the_primary_over_until_its_pause_ends() -> None:
    a, b, clock = Scripted("a", "refused"), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=3)
    for n in range(10):
        await chain.send(_sms(f"k{n}"))
    assert len(a.calls) == 3 and len(b.calls) == 10  # after 3 errors, straight to b
    a.answer = "ok"
    clock.now += 29
    await chain.send(_sms("before"))
    assert b.calls[-1] == "before"
    clock.now += 2  # the pause is over: traffic returns to the primary
    assert await chain.send(_sms("after")) == "a-after"
    assert chain.accepted == [1, 11]


async def _send_all(chain: FailoverProvider, keys: list[str]) -> list[str | BaseException]:
    return await asyncio.gather(*(chain.send(_sms(k)) for k in keys), return_exceptions=True)


async def test_after_its_pause_a_primary_still_down_gets_one_message_not_a_crowd() -> None:
    a, b, clock = Scripted("a", "refused", delay=0.01), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=3)
    await _send_all(chain, [f"k{n}" for n in range(10)])
    tried = len(a.calls)
    assert tried >= 3 and chain.accepted == [0, 10]
    clock.now += 31  # the pause is over: on trial, one message at a time
    await _send_all(chain, [f"t{n}" for n in range(20)])
    assert len(a.calls) == tried + 1  # the trial failed: passed over again at once
    await _send_all(chain, [f"u{n}" for n in range(20)])
    assert len(a.calls) == tried + 1 and chain.accepted == [0, 50]
    clock.now += 31
    a.answer = "ok"
    await _send_all(chain, [f"v{n}" for n in range(20)])
    assert chain.accepted[0] == 1  # the trial was accepted; the others had gone on to b
    await _send_all(chain, [f"w{n}" for n in range(20)])
    assert chain.accepted == [21, 69]  # traffic is back at the primary


async def test_a_primary_that_hangs_after_its_pause_keeps_one_message_in_doubt_not_a_crowd(
) -> None:
    a, b, clock = Scripted("a", "doubt", delay=0.01), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=5)
    first = await _send_all(chain, [f"k{n}" for n in range(20)])
    in_doubt = [r for r in first if isinstance(r, RetryableProviderError) and r.in_doubt]
    assert len(in_doubt) == 20  # all were in flight before the fifth timeout came back
    assert await chain.send(_sms("later")) == "b-later"
    clock.now += 31
    second = await _send_all(chain, [f"t{n}" for n in range(20)])
    assert sum(isinstance(r, RetryableProviderError) for r in second) == 1
    assert b.calls[-19:] == [f"t{n}" for n in range(20) if f"t{n}" not in a.calls]


async def test_calls_in_doubt_in_a_row_pass_a_provider_over_without_waiting_for_the_rule(
) -> None:
    a, b, clock = Scripted("a", "doubt"), Scripted("b"), Clock()
    chain = FailoverProvider([("a", a), ("b", b)], errors=50, window_seconds=60,
                             pause_seconds=30, doubt_errors=5, clock=clock)
    for n in range(5):
        with pytest.raises(RetryableProviderError):
            await chain.send(_sms(f"k{n}"))
    assert await chain.send(_sms("next")) == "b-next"  # five in doubt, nothing in between
    assert len(a.calls) == 5


async def test_a_few_calls_in_doubt_among_answers_pass_nothing_over() -> None:
    a, b, clock = Scripted("a"), Scripted("b"), Clock()
    chain = FailoverProvider([("a", a), ("b", b)], errors=50, window_seconds=60,
                             pause_seconds=30, doubt_errors=5, clock=clock)
    for n in range(40):
        a.answer = "doubt" if n % 5 else "ok"  # four in doubt, then an answer, again and again
        with contextlib.suppress(RetryableProviderError):
            await chain.send(_sms(f"k{n}"))
    assert len(a.calls) == 40 and b.calls == []


async def test_a_permanent_refusal_ends_a_trial_the_provider_is_up() -> None:
    a, b, clock = Scripted("a", "refused"), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=1)
    await chain.send(_sms("k1"))
    clock.now += 31
    a.answer = "permanent"
    with pytest.raises(PermanentProviderError):
        await chain.send(_sms("k2"))
    a.answer = "ok"
    await _send_all(chain, ["k3", "k4"])
    assert chain.accepted == [2, 1] and b.calls == ["k1"]


async def test_a_passed_over_primary_is_still_tried_when_the_secondary_fails() -> None:
    a, b, clock = Scripted("a", "refused"), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=1)
    await chain.send(_sms("k1"))  # a passed over from here
    a.answer, b.answer = "ok", "refused"
    assert await chain.send(_sms("k2")) == "a-k2"
    assert b.calls == ["k1", "k2"]


async def test_a_permanent_refusal_is_the_outcome_no_other_provider_is_asked() -> None:
    a, b, clock = Scripted("a", "permanent"), Scripted("b"), Clock()
    with pytest.raises(PermanentProviderError):
        await _chain(a, b, clock).send(_sms("k1"))
    assert b.calls == []


async def test_a_message_in_doubt_stays_with_its_provider_and_never_goes_to_another() -> None:
    a, b, clock = Scripted("a", "doubt"), Scripted("b"), Clock()
    chain = _chain(a, b, clock, errors=1)
    with pytest.raises(RetryableProviderError) as caught:
        await chain.send(_sms("k1"))
    assert caught.value.in_doubt and b.calls == []
    # Its retry goes to the same provider even now that it is passed over for others.
    with pytest.raises(RetryableProviderError):
        await chain.send(_sms("k1"))
    assert await chain.send(_sms("k2")) == "b-k2"
    a.answer = "ok"
    assert await chain.send(_sms("k1")) == "a-k1"
    assert b.calls == ["k2"]


async def test_a_pin_travels_in_the_reason_to_another_process_or_a_restart() -> None:
    a, b = Scripted("a", "doubt"), Scripted("b")
    first = _chain(a, b, Clock(), errors=100)
    with pytest.raises(RetryableProviderError) as caught:
        await first.send(_sms("k1"))
    reason = str(caught.value)[:500]  # what the dispatcher stores on its retry schedule
    assert caught.value.in_doubt and pinned_to(reason) == "a"
    # Another process (or this one restarted): no pin in memory, the hint from the reason.
    a.answer = "refused"  # a definite refusal now: still in doubt from the first call
    second = _chain(a, b, Clock(), errors=1)
    retry = _sms("k1", pinned_to=pinned_to(reason))
    with pytest.raises(RetryableProviderError) as again:
        await second.send(retry)
    assert again.value.in_doubt and pinned_to(str(again.value)) == "a"
    a.answer = "ok"
    third = _chain(a, b, Clock())
    retry = _sms("k1", pinned_to=pinned_to(str(again.value)))
    assert await third.send(retry) == "a-k1"
    assert b.calls == [] and a.calls == ["k1"] * 3
    # Without the hint (a retry round that does not pass it on) it would start at the head.
    assert await _chain(Scripted("a", "refused"), b, Clock()).send(_sms("k1")) == "b-k1"


def test_the_mark_is_read_back_from_a_reason_cut_to_500_characters() -> None:
    reason = mark("twilio", "HTTP 503: " + "x" * 1000)
    assert len(reason) == 500 and pinned_to(reason) == "twilio"
    assert pinned_to(None) is None and pinned_to("HTTP 503: in doubt at twilio: x") is None
    assert pinned_to("provider paused: circuit open") is None


async def test_a_hint_naming_a_provider_no_longer_in_the_chain_is_ignored() -> None:
    a, b = Scripted("a"), Scripted("b")
    retry = _sms("k1", pinned_to="smtp")
    assert await _chain(a, b, Clock()).send(retry) == "a-k1"


async def test_when_every_provider_refuses_the_error_is_retryable_with_the_last_reason() -> None:
    a, b, clock = Scripted("a", "refused"), Scripted("b", "refused"), Clock()
    with pytest.raises(RetryableProviderError, match=r"last \(b\)") as caught:
        await _chain(a, b, clock).send(_sms("k1"))
    assert not caught.value.in_doubt


@pytest.fixture
async def twilio_and_http() -> AsyncIterator[tuple[TestServer, Behaviour, str]]:
    behaviour = Behaviour(account_sid="AC" + "2" * 32, auth_token="t", callbacks=False)
    twilio_server = TestServer(create_app(behaviour))
    await twilio_server.start_server()
    http_behaviour = HttpBehaviour()
    http_server = await lean_http.serve(
        create_routes(http_behaviour, ReceiptPoster(http_behaviour)), "127.0.0.1", 0)
    port = http_server.sockets[0].getsockname()[1]
    yield twilio_server, behaviour, f"http://127.0.0.1:{port}"
    http_server.close()
    await twilio_server.close()


async def test_a_primary_in_outage_fails_over_to_the_secondary_with_no_message_sent_twice(
    twilio_and_http: tuple[TestServer, Behaviour, str]
) -> None:
    twilio_server, behaviour, http_url = twilio_and_http
    primary = TwilioProvider(str(twilio_server.make_url("")), behaviour.account_sid, "t",
                             from_number="+15005550001", timeout=5, max_connections=4)
    secondary = HttpProvider(http_url, timeout=5, max_connections=4)
    chain = FailoverProvider([("twilio", primary), ("http", secondary)], errors=5,
                             window_seconds=60, pause_seconds=0.3)
    for n in range(10):
        await chain.send(_sms(f"before-{n}"))
    behaviour.outage = "503"
    for n in range(100):
        await chain.send(_sms(f"outage-{n}"))
    behaviour.outage = None
    await asyncio.sleep(0.35)
    for n in range(10):
        await chain.send(_sms(f"after-{n}"))
    await primary.close()
    await secondary.close()
    assert chain.accepted == [20, 100]
    async with aiohttp.ClientSession() as session:
        async with session.get(twilio_server.make_url("/tally")) as r:
            at_twilio = await r.json()
        async with session.get(f"{http_url}/tally") as r:
            at_http = await r.json()
    assert (at_twilio["accepted"], at_http["accepted"]) == (20, 100)
    assert at_twilio["keys_accepted_more_than_once"] == at_http["keys_accepted_more_than_once"] \
        == 0
    async with aiohttp.ClientSession() as session, \
            session.get(twilio_server.make_url("/requests")) as r:
        tried = [q for q in (await r.json())["requests"] if q["status"] == 503]
    assert len(tried) == 5  # then passed over: the outage cost five calls, not a hundred


def test_chains_are_read_from_the_settings_and_bad_names_refused() -> None:
    settings = DispatcherSettings(sms_providers="twilio, http", twilio_account_sid="AC1",
                                  twilio_auth_token="t", twilio_from="+15005550001")
    assert provider_chain(settings, "sms") == ["twilio", "http"]
    assert provider_chain(settings, "email") == ["noop"]
    providers = build_providers(settings)
    chain = providers["sms"]
    assert isinstance(chain, FailoverProvider) and chain.names == ["twilio", "http"]
    # Each adapter timed and counted under its own name; the chain's label names the chain.
    assert [(m.name, type(m.provider)) for m in chain.members] == [  # type: ignore[attr-defined]
        ("twilio", TwilioProvider), ("http", HttpProvider)]
    email = providers["email"]
    assert isinstance(email, MeteredProvider) and isinstance(email.provider, NoopProvider)
    assert provider_names(settings) == {"email": "noop", "sms": "twilio,http"}
    assert len(adapters_of(providers)) == 3
    with pytest.raises(ValueError, match="unknown"):
        provider_chain(DispatcherSettings(email_providers="smtp,twilio"), "email")
    with pytest.raises(ValueError, match="twice"):
        provider_chain(DispatcherSettings(sms_providers="http,http"), "sms")
    shared = build_providers(DispatcherSettings(provider="http"))
    assert shared["email"] is shared["sms"]


async def test_the_fake_twilio_hanging_leaves_the_call_in_doubt_and_accepts_nothing(
    twilio_and_http: tuple[TestServer, Behaviour, str]
) -> None:
    twilio_server, behaviour, _ = twilio_and_http
    primary = TwilioProvider(str(twilio_server.make_url("")), behaviour.account_sid, "t",
                             from_number="+15005550001", timeout=0.3, max_connections=4)
    behaviour.outage, behaviour.hang_seconds = "hang", 2.0
    with pytest.raises(RetryableProviderError) as timed_out:
        await primary.send(_sms("hung-1"))
    behaviour.hang_seconds = 0.05  # hangs up before the client gives up
    with pytest.raises(RetryableProviderError) as dropped:
        await primary.send(_sms("hung-2"))
    assert timed_out.value.in_doubt and dropped.value.in_doubt
    behaviour.outage = None
    assert (await primary.send(_sms("hung-2"))).startswith("SM")
    await primary.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(twilio_server.make_url("/tally")) as r:
            assert (await r.json())["accepted"] == 1
