"""The Twilio adapter against the fake Twilio (devtools/fake_twilio.py) on the loopback, the
X-Twilio-Signature scheme against Twilio's published test vectors, and the status callbacks'
mapping to receipts."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devtools.fake_twilio import Behaviour, create_app
from services.dispatcher.providers import (
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from services.dispatcher.providers.twilio import TwilioProvider
from services.tracker.twilio_callbacks import receipt_of
from shared import twilio

SID, TOKEN = "AC" + "1" * 32, "tw-token"

# Twilio's own request-validator test vectors (twilio-python, tests/unit).
URI = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309",
          "To": "+18005551212", "Caller": "+14158675309"}


def test_the_signature_matches_twilios_published_examples() -> None:
    assert twilio.signature("12345", URI, PARAMS.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"),
                ("Digits", "1234")]
    assert twilio.signature("12345", URI, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_validation_accepts_the_url_with_or_without_its_port_and_nothing_else() -> None:
    assert twilio.valid("12345", URI, PARAMS.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    with_port = URI.replace(".com", ".com:1234")
    assert twilio.valid("12345", with_port, PARAMS.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert twilio.valid("12345", URI, PARAMS.items(), "kvajT1Ptam85bY51eRf/AJRuM3w=")  # :443
    assert not twilio.valid("54321", URI, PARAMS.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    changed = {**PARAMS, "Digits": "9999"}
    assert not twilio.valid("12345", URI, changed.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    other_path = URI.replace("myapp", "other")
    assert not twilio.valid("12345", other_path, PARAMS.items(),
                            "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def _sms(to: str = "+15005550006", key: str = "k-1", body: str = "Polls open 8am") -> \
        OutgoingMessage:
    return OutgoingMessage("sms", to, "+15005550001", None, body, key)


class Callbacks:
    """A receiving end for the fake's status callbacks, checking each one's signature."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bool]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        pairs = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        ok = twilio.valid(TOKEN, self.url, pairs,
                          request.headers.get(twilio.SIGNATURE_HEADER, ""))
        self.received.append((dict(pairs), ok))
        return web.Response(status=200 if ok else 401)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[TestServer, Behaviour, Callbacks]]:
    behaviour = Behaviour(account_sid=SID, auth_token=TOKEN, callback_delay_ms=5,
                          callbacks=True)
    server = TestServer(create_app(behaviour))
    await server.start_server()
    callbacks = Callbacks()
    app = web.Application()
    app.router.add_post("/providers/twilio/status", callbacks.handle)
    receiver = TestServer(app)
    await receiver.start_server()
    callbacks.url = str(receiver.make_url("/providers/twilio/status"))
    yield server, behaviour, callbacks
    await receiver.close()
    await server.close()


def _provider(server: TestServer, callback: str | None = None, **kw: Any) -> TwilioProvider:
    options: dict[str, Any] = {"from_number": "+15005550001", "status_callback": callback,
                               "timeout": 5, "max_connections": 4}
    options.update(kw)
    token = options.pop("token", TOKEN)
    return TwilioProvider(str(server.make_url("")), SID, token, **options)


async def _requests(server: TestServer) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, \
            session.get(server.make_url("/requests")) as response:
        return list((await response.json())["requests"])


async def test_a_message_is_posted_form_encoded_with_basic_auth_and_its_sid_returned(
    fake: tuple[TestServer, Behaviour, Callbacks]
) -> None:
    server, _, callbacks = fake
    provider = _provider(server, callbacks.url)
    sid = await provider.send(_sms(body="Polls open 8am & close 8pm = 12h"))
    await provider.close()
    assert sid.startswith("SM") and len(sid) == 34
    [request] = await _requests(server)
    assert request["to"] == "+15005550006" and request["from"] == "+15005550001"
    assert request["body"] == "Polls open 8am & close 8pm = 12h"
    assert request["status_callback"] == callbacks.url and request["idempotency_key"] == "k-1"
    assert request["status"] == 201 and request["sid"] == sid


async def test_status_callbacks_arrive_signed_sent_then_delivered_or_undelivered(
    fake: tuple[TestServer, Behaviour, Callbacks]
) -> None:
    server, behaviour, callbacks = fake
    behaviour.undelivered_pattern = re.compile("9999$")
    provider = _provider(server, callbacks.url)
    ok_sid = await provider.send(_sms("+15005550006", "k-1"))
    bad_sid = await provider.send(_sms("+15005559999", "k-2"))
    await provider.close()
    for _ in range(200):
        if len(callbacks.received) >= 4:
            break
        await asyncio.sleep(0.02)
    assert all(ok for _, ok in callbacks.received)
    final = {p["MessageSid"]: p for p, _ in callbacks.received
             if p["MessageStatus"] != "sent"}
    assert final[ok_sid]["MessageStatus"] == "delivered"
    assert (final[bad_sid]["MessageStatus"], final[bad_sid]["ErrorCode"]) == ("undelivered",
                                                                             "30003")
    now = datetime.now(UTC)
    delivered = receipt_of(final[ok_sid], now)
    undelivered = receipt_of(final[bad_sid], now)
    assert delivered is not None and delivered.status == "delivered"
    assert undelivered is not None and undelivered.status == "not_delivered"
    assert undelivered.reason == "unreachable handset (twilio 30003)"
    sent = next(p for p, _ in callbacks.received if p["MessageStatus"] == "sent")
    assert receipt_of(sent, now) is None


@pytest.mark.parametrize(
    ("setup", "to", "error", "match"),
    [
        ({}, "0612345678", PermanentProviderError, "21211"),
        ({"unsubscribed_pattern": "0006$"}, "+15005550006", PermanentProviderError, "21610"),
        ({"error_429": 1.0, "retry_after_seconds": 7}, "+15005550006", RetryableProviderError,
         "20429"),
        ({"error_500": 1.0}, "+15005550006", RetryableProviderError, "20500"),
        ({"outage": "503"}, "+15005550006", RetryableProviderError, "20500"),
        ({"token": "wrong"}, "+15005550006", RetryableProviderError, "20003"),
    ],
)
async def test_twilio_errors_map_to_permanent_or_retryable(
    fake: tuple[TestServer, Behaviour, Callbacks], setup: dict[str, Any], to: str,
    error: type[Exception], match: str,
) -> None:
    server, behaviour, _ = fake
    token = setup.pop("token", TOKEN)
    for name, value in setup.items():
        setattr(behaviour, name, re.compile(value) if name.endswith("pattern")
                else value)
    provider = _provider(server, token=token)
    with pytest.raises(error, match=match) as caught:
        await provider.send(_sms(to))
    await provider.close()
    if isinstance(caught.value, RetryableProviderError):
        assert not caught.value.in_doubt  # an answer: certainly not accepted
        if "error_429" in setup:
            assert caught.value.retry_after == 7


async def test_a_provider_that_is_down_is_retryable_and_not_in_doubt() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = TwilioProvider(f"http://127.0.0.1:{port}", SID, TOKEN, from_number="+1500555",
                              timeout=2, max_connections=1)
    with pytest.raises(RetryableProviderError) as caught:
        await provider.send(_sms())
    assert not caught.value.in_doubt


async def test_a_timeout_after_the_request_went_out_is_in_doubt(
    fake: tuple[TestServer, Behaviour, Callbacks]
) -> None:
    server, behaviour, _ = fake
    behaviour.latency_ms = 2000
    provider = _provider(server, timeout=0.2)
    with pytest.raises(RetryableProviderError) as caught:
        await provider.send(_sms())
    assert caught.value.in_doubt


def test_a_messaging_service_replaces_from_and_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="From"):
        TwilioProvider("http://127.0.0.1:1", SID, TOKEN, timeout=1, max_connections=1)
    with pytest.raises(ValueError, match="auth token"):
        TwilioProvider("http://127.0.0.1:1", SID, "", from_number="+1", timeout=1,
                       max_connections=1)


def test_a_callback_without_sid_or_status_is_refused() -> None:
    with pytest.raises(ValueError):
        receipt_of({"MessageStatus": "delivered"}, datetime.now(UTC))
    failed = receipt_of({"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "99999",
                         "ErrorMessage": "odd"}, datetime.now(UTC))
    assert failed is not None and failed.reason == "odd (twilio 99999)"
