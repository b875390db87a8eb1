"""Metrics, trace context and structured logs, each against its contract."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client import REGISTRY

from services.dispatcher.metrics import MeteredProvider, OutcomeCounter, metered
from services.dispatcher.providers import (
    NoopProvider,
    OutgoingMessage,
    PermanentProviderError,
    RetryableProviderError,
)
from shared import topics, tracing
from shared.kafka import _trace_headers
from shared.logging import JsonFormatter
from shared.metrics import reason_class
from shared.observability import HttpMetrics, webhook_result
from shared.wire import MessageFailed, MessageSent, MessageSkipped


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# Reasons --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("reason", "label"), [
    (None, ""),
    ("SMTP 550: 5.1.1 mailbox unavailable", "smtp_550"),
    ("HTTP 503: busy", "http_503"),
    ("gave up after 6 attempts: HTTP 503: busy", "gave_up"),
    ("missing_address", "missing_address"),
    ("template_error: 'x' is undefined", "template_error"),
    ("Opted Out!", "opted_out"),
])
def test_reason_class_is_the_reasons_kind_not_its_text(reason: str | None, label: str) -> None:
    assert reason_class(reason) == label


def test_reason_classes_are_bounded() -> None:
    labels = {reason_class(f"weird{i}: text") for i in range(300)}
    assert "other" in labels and len(labels) <= 101


# Provider calls -------------------------------------------------------------------------------

class _Scripted:
    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.in_flight_seen: list[float] = []
        self.closed = False

    async def send(self, message: OutgoingMessage) -> str:
        self.in_flight_seen.append(value("sendout_provider_calls_in_flight", provider="t1"))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return str(result)

    async def close(self) -> None:
        self.closed = True


MESSAGE = OutgoingMessage(channel="email", to="a@example.org", sender="s@example.org",
                          subject="s", body="b", idempotency_key="k")


async def test_metered_provider_times_and_counts_every_call_by_result() -> None:
    inner = _Scripted("id-1", RetryableProviderError("HTTP 503"),
                      PermanentProviderError("HTTP 400"), ValueError("bug"))
    provider = MeteredProvider(inner, "t1")
    before = {r: value("sendout_provider_calls_total", provider="t1", result=r)
              for r in ("accepted", "retryable", "permanent", "error")}
    count_before = value("sendout_provider_call_seconds_count", provider="t1")

    assert await provider.send(MESSAGE) == "id-1"
    for exc in (RetryableProviderError, PermanentProviderError, ValueError):
        with pytest.raises(exc):
            await provider.send(MESSAGE)

    after = {r: value("sendout_provider_calls_total", provider="t1", result=r) - before[r]
             for r in before}
    assert after == {"accepted": 1, "retryable": 1, "permanent": 1, "error": 1}
    assert value("sendout_provider_call_seconds_count", provider="t1") - count_before == 4
    # In flight while each call runs, none once they ended.
    assert inner.in_flight_seen == [1, 1, 1, 1]
    assert value("sendout_provider_calls_in_flight", provider="t1") == 0
    await provider.close()
    assert inner.closed


def test_one_provider_serving_two_channels_is_wrapped_once() -> None:
    shared, other = NoopProvider(), NoopProvider()
    wrapped = metered({"email": shared, "sms": shared}, {"email": "http", "sms": "http"})
    assert wrapped["email"] is wrapped["sms"]
    apart = metered({"email": shared, "sms": other}, {"email": "smtp", "sms": "http"})
    assert apart["email"] is not apart["sms"]


def test_outcomes_are_counted_by_channel_provider_outcome_and_reason() -> None:
    counter = OutcomeCounter({"email": "smtp", "sms": "http"})
    labels = [("email", "smtp", "completed", ""), ("email", "smtp", "failed", "smtp_550"),
              ("sms", "http", "skipped", "opted_out")]
    before = [value("sendout_messages_total", channel=c, provider=p, outcome=o, reason=r)
              for c, p, o, r in labels]
    outcomes = [
        MessageSent(campaign_id=uuid.uuid4(), recipient_id=1, channel="email"),
        MessageSent(campaign_id=uuid.uuid4(), recipient_id=2, channel="email"),
        MessageFailed(campaign_id=uuid.uuid4(), recipient_id=3, channel="email",
                      reason="SMTP 550: mailbox unavailable", address="x@example.org"),
        MessageSkipped(campaign_id=uuid.uuid4(), recipient_id=4, channel="sms",
                       reason="opted_out"),
    ]
    counter.count([(o, b"") for o in outcomes])
    after = [value("sendout_messages_total", channel=c, provider=p, outcome=o, reason=r)
             for c, p, o, r in labels]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]


# HTTP -----------------------------------------------------------------------------------------

def _app() -> FastAPI:
    app = FastAPI()
    seen: list[tracing.TraceContext | None] = []
    app.state.seen = seen

    @app.get("/campaigns/{campaign_id}")
    async def one(campaign_id: str) -> dict[str, str]:
        seen.append(tracing.current())
        return {"id": campaign_id}

    @app.post("/hook")
    async def hook(ok: bool = True) -> dict[str, str]:
        if not ok:
            raise HTTPException(401, "bad signature")
        return {}

    app.add_middleware(HttpMetrics, service="t", webhooks={"/hook": "test_hook"})
    return app


async def test_http_latency_is_by_route_template_and_webhooks_by_result() -> None:
    app = _app()
    route = {"service": "t", "method": "GET", "route": "/campaigns/{campaign_id}",
             "status": "2xx"}
    before = value("sendout_http_request_duration_seconds_count", **route)
    hook = {r: value("sendout_webhook_requests_total", webhook="test_hook", result=r)
            for r in ("accepted", "rejected")}
    unmatched = value("sendout_http_request_duration_seconds_count", service="t",
                      method="GET", route="unmatched", status="4xx")
    cid = uuid.uuid4()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        r = await client.get(f"/campaigns/{cid}")
        await client.get(f"/campaigns/{uuid.uuid4()}")
        await client.post("/hook")
        await client.post("/hook", params={"ok": "false"})
        await client.get("/nowhere/at/all")

    assert value("sendout_http_request_duration_seconds_count", **route) - before == 2
    assert value("sendout_webhook_requests_total", webhook="test_hook",
                 result="accepted") - hook["accepted"] == 1
    assert value("sendout_webhook_requests_total", webhook="test_hook",
                 result="rejected") - hook["rejected"] == 1
    assert value("sendout_http_request_duration_seconds_count", service="t", method="GET",
                 route="unmatched", status="4xx") - unmatched == 1
    # The request on a campaign runs in, and answers with, that campaign's trace.
    context = app.state.seen[0]
    assert context.trace_id == cid.hex and context.campaign_id == str(cid)
    assert tracing.parse(r.headers["traceparent"]) == cid.hex


async def test_a_callers_traceparent_is_kept() -> None:
    app = _app()
    theirs = "0af7651916cd43dd8448eb211c80319c"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        r = await client.post("/hook", headers={"traceparent": f"00-{theirs}-b7ad6b7169203331-01"})
        cid = uuid.uuid4()
        await client.get(f"/campaigns/{cid}",
                         headers={"traceparent": f"00-{theirs}-b7ad6b7169203331-01"})
    assert tracing.parse(r.headers["traceparent"]) == theirs
    # On a campaign's path the campaign's trace wins; the caller's is kept as its parent.
    assert app.state.seen[0].trace_id == cid.hex
    assert app.state.seen[0].parent_trace_id == theirs


def test_webhook_results() -> None:
    assert [webhook_result(s) for s in (202, 401, 403, 413, 422, 503)] == [
        "accepted", "rejected", "rejected", "invalid", "invalid", "error"]


# Trace context --------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    None, "", "garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
])
def test_invalid_traceparents_are_ignored(header: str | None) -> None:
    assert tracing.parse(header) is None


def test_records_on_campaign_keyed_topics_carry_the_campaigns_trace() -> None:
    cid = uuid.uuid4()
    headers = dict(_trace_headers(topics.OUTCOMES)(cid.bytes))
    assert tracing.parse(headers["traceparent"]) == cid.hex
    # Not keyed by campaign: the current trace's, and none outside one.
    assert "traceparent" not in dict(_trace_headers(topics.SEND_REQUESTED)(b"\x00" * 16))
    with tracing.use(tracing.for_campaign(cid)):
        headers = dict(_trace_headers(topics.SEND_REQUESTED)(b"\x00" * 16))
    assert tracing.parse(headers["traceparent"]) == cid.hex


def test_a_batch_takes_its_first_records_trace() -> None:
    cid = uuid.uuid4()
    first = SimpleNamespace(headers=[("content-type", b"application/json"),
                                     ("traceparent", tracing.for_campaign(cid).traceparent()
                                      .encode())])
    other = SimpleNamespace(headers=[])
    context = tracing.of_records([first, other])
    assert context is not None and context.trace_id == cid.hex and context.campaign_id is None
    assert tracing.of_records([other, first]) is None
    # A record keyed by the campaign whose trace it carries names the campaign too.
    keyed = SimpleNamespace(headers=first.headers, key=cid.bytes)
    assert tracing.of_records([keyed]).campaign_id == str(cid)  # type: ignore[union-attr]


async def test_the_trace_does_not_leak_between_tasks() -> None:
    async def inside() -> str | None:
        with tracing.use(tracing.TraceContext(tracing.new_trace_id())):
            await asyncio.sleep(0)
            return tracing.current().trace_id  # type: ignore[union-attr]

    assert await inside() and tracing.current() is None


# Logs -----------------------------------------------------------------------------------------

def _format(record_extra: dict[str, Any], context: tracing.TraceContext | None) -> dict[str, Any]:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "sent %d",
                                    "args": (3,), **record_extra})
    with tracing.use(context):
        return dict(json.loads(JsonFormatter("dispatcher").format(record)))


def test_logs_are_json_with_service_and_trace() -> None:
    cid = uuid.uuid4()
    line = _format({"event_id": "e1"}, tracing.for_campaign(cid))
    assert line["service"] == "dispatcher" and line["msg"] == "sent 3"
    assert line["trace_id"] == cid.hex and line["campaign_id"] == str(cid)
    assert line["event_id"] == "e1"
    assert "trace_id" not in _format({}, None)


def test_logs_never_hold_an_address_or_a_body() -> None:
    line = _format({"address": "a@example.org", "to": "+447700900123", "body": "Hi Ann",
                    "subject": "Hello Ann", "topic": "t"}, None)
    assert "a@example.org" not in json.dumps(line) and "Hi Ann" not in json.dumps(line)
    assert line["address"] == line["to"] == line["body"] == "[redacted]"
    assert line["topic"] == "t"


def test_faststreams_own_logs_are_json_too(capsys: pytest.CaptureFixture[str]) -> None:
    import faststream._internal.logger.logging  # noqa: F401  (creates its coloured handler)

    from shared.logging import configure
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    fs = logging.getLogger("faststream")
    fs_saved = fs.handlers[:], fs.propagate
    try:
        configure("tracker")
        fs.info("Consumer x assigned to partitions")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["msg"] == "Consumer x assigned to partitions"
        assert json.loads(line)["service"] == "tracker"
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        fs.handlers[:], fs.propagate = fs_saved
