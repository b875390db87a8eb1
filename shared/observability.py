"""What every service reports about itself besides its own domain: HTTP request latency by
route (and webhook results), the trace context of each request, and its consumer groups' lag
from the consumers' own positions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faststream.kafka import KafkaBroker

from shared import tracing
from shared.metrics import CONSUMER_LAG, HTTP_REQUEST_SECONDS, WEBHOOK_REQUESTS
from shared.pollers import Poller

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CAMPAIGN_PATH = re.compile(r"^/campaigns/([0-9a-fA-F-]{36})(?:/|$)")


def webhook_result(status: int) -> str:
    if status < 300:
        return "accepted"
    if status in (401, 403):
        return "rejected"
    if status < 500:
        return "invalid"
    return "error"


class HttpMetrics:
    """ASGI middleware: each request's duration by route template (`/campaigns/{campaign_id}`,
    never the raw path, so the series stay bounded; `unmatched` for a path no route has), and
    the result of requests to the routes named in `webhooks` ({route template: webhook name}).
    Each request runs under its trace context (shared.tracing) and its response carries
    `traceparent`."""

    def __init__(self, app: ASGIApp, *, service: str,
                 webhooks: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.service = service
        self.webhooks = dict(webhooks or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = request_trace(scope)
        status = 500
        header = (b"traceparent", context.traceparent().encode())

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        started = time.perf_counter()
        try:
            with tracing.use(context):
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUEST_SECONDS.labels(
                self.service, scope.get("method", ""), template, f"{status // 100}xx"
            ).observe(time.perf_counter() - started)
            webhook = self.webhooks.get(template)
            if webhook is not None:
                WEBHOOK_REQUESTS.labels(webhook, webhook_result(status)).inc()


def request_trace(scope: Scope) -> tracing.TraceContext:
    incoming = None
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            incoming = tracing.parse(value)
            break
    m = _CAMPAIGN_PATH.match(scope.get("path", ""))
    if m is not None:
        with contextlib.suppress(ValueError):
            context = tracing.for_campaign(m.group(1))
            if incoming is not None and incoming != context.trace_id:
                return tracing.TraceContext(context.trace_id, campaign_id=context.campaign_id,
                                            parent_trace_id=incoming)
            return context
    return tracing.TraceContext(incoming or tracing.new_trace_id())


# Consumer lag ---------------------------------------------------------------------------------

async def measure_lag(consumers: Iterable[tuple[str, Any]]) -> dict[tuple[str, str, int], int]:
    """{(group, topic, partition): end offset - committed offset} for the partitions assigned
    to these (group, aiokafka consumer) pairs. A partition never committed counts from the
    consumer's position."""
    lags: dict[tuple[str, str, int], int] = {}
    for group, consumer in consumers:
        assigned = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not assigned:
            continue
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            committed = await consumer.committed(tp)
            if committed is None:
                try:
                    committed = await asyncio.wait_for(consumer.position(tp), 2.0)
                except Exception:  # unassigned meanwhile, or no position yet
                    continue
            lags[(group, tp.topic, tp.partition)] = max(0, ends[tp] - committed)
    return lags


def group_consumers(broker: KafkaBroker) -> list[tuple[str, Any]]:
    """The started group consumers of a broker's subscribers (broadcast ones have no lag)."""
    found = []
    for subscriber in broker.subscribers:
        group = getattr(subscriber, "group_id", None)
        consumer = getattr(subscriber, "consumer", None)
        if group and consumer is not None:
            found.append((group, consumer))
    return found


class LagMonitor:
    """Sets `sendout_consumer_lag_records` every `interval` seconds from this process's group
    consumers; a partition no longer assigned here loses its series."""

    def __init__(self, broker: KafkaBroker, *, interval: float = 10.0) -> None:
        self._broker = broker
        self._shown: set[tuple[str, str, int]] = set()
        self._poller = Poller("consumer lag", self.update, interval)

    def start(self) -> None:
        self._poller.start()

    async def stop(self) -> None:
        await self._poller.stop()
        self._forget(set(self._shown))
        self._shown = set()

    async def update(self) -> dict[tuple[str, str, int], int]:
        lags = await measure_lag(group_consumers(self._broker))
        for (group, topic, partition), lag in lags.items():
            CONSUMER_LAG.labels(group, topic, str(partition)).set(lag)
        self._forget(self._shown - set(lags))
        self._shown = set(lags)
        return lags

    def _forget(self, keys: set[tuple[str, str, int]]) -> None:
        for group, topic, partition in keys:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(group, topic, str(partition))
