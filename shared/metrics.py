"""Prometheus metrics of the services (one registry per process). Every series is documented
in docs/metrics.md; tests/unit/test_metrics_doc.py keeps the two in step.

Labels are bounded: no recipient, address or message text is ever a label value; a failure's
reason is reduced to its class (`reason_class`), and per-campaign series exist only while the
campaign is in flight.
"""

from __future__ import annotations

import re
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Kafka plumbing (shared/kafka.py) -------------------------------------------------------------

EVENTS_CONSUMED = Counter(
    "sendout_events_consumed_total", "Events consumed, by topic", ["service", "topic"]
)
EVENTS_PUBLISHED = Counter(
    "sendout_events_published_total", "Events published, by topic", ["service", "topic"]
)
DEAD_LETTERS = Counter(
    "sendout_dead_letters_total", "Records sent to a DLQ, by source topic", ["service", "topic"]
)
REDELIVERIES = Counter(
    "sendout_redeliveries_total",
    "Batches rewound to be processed again, by topic and cause (transient: infrastructure "
    "unavailable, retried without limit; error: any other, counted towards the DLQ; "
    "deliberate: left by a stopping consumer or taken back after a takeover)",
    ["service", "topic", "cause"],
)
BATCH_SECONDS = Histogram(
    "sendout_batch_seconds",
    "Time to process one consumed batch",
    ["service", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "sendout_consumer_lag_records",
    "Records of a partition not yet committed by its consumer group (end offset minus the "
    "group's committed offset), for the partitions assigned to this process",
    ["group", "topic", "partition"],
)

# Messages (dispatcher, tracker) ---------------------------------------------------------------

MESSAGES = Counter(
    "sendout_messages_total",
    "Messages reported by the dispatcher, by channel, provider, outcome (completed, failed, "
    "skipped) and reason class (empty for completed)",
    ["channel", "provider", "outcome", "reason"],
)
RECEIPTS_CONSUMED = Counter(
    "sendout_receipts_total",
    "Delivery receipts consumed by the tracker, by status (delivered, not_delivered)",
    ["status"],
)
class ProviderCalls(Collector):
    """`sendout_provider_calls_total`, `sendout_provider_call_seconds` and
    `sendout_provider_calls_in_flight`, kept in plain numbers of the event loop's thread
    (where every call and every scrape runs) and read at scrape time: the metric objects'
    locks and label look-ups cost ten times the call of a no-op provider itself."""

    RESULTS = ("accepted", "retryable", "permanent", "error")
    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
    # (exposed name, type, labels): for the documentation's test, as a metric object has.
    documented = (
        ("sendout_provider_calls_total", "counter", ("provider", "result")),
        ("sendout_provider_call_seconds", "histogram", ("provider",)),
        ("sendout_provider_calls_in_flight", "gauge", ("provider",)),
    )

    def __init__(self) -> None:
        self._stats: dict[str, ProviderStats] = {}

    def of(self, provider: str) -> ProviderStats:
        return self._stats.setdefault(provider, ProviderStats(len(self.BUCKETS)))

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        calls, seconds, in_flight = self._families()
        for name, stats in list(self._stats.items()):
            for result, n in zip(self.RESULTS, stats.results, strict=True):
                calls.add_metric([name, result], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, self.BUCKETS), "+Inf"), stats.buckets, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            seconds.add_metric([name], buckets, stats.seconds)
            in_flight.add_metric([name], stats.in_flight)
        return [calls, seconds, in_flight]

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "sendout_provider_calls",
                "Provider calls, by provider and result (accepted, retryable, permanent, error)",
                labels=["provider", "result"]),
            HistogramMetricFamily(
                "sendout_provider_call_seconds",
                "Duration of one provider call, whatever its result", labels=["provider"]),
            GaugeMetricFamily(
                "sendout_provider_calls_in_flight", "Provider calls started and not yet ended",
                labels=["provider"]),
        )


class ProviderStats:
    """One provider's numbers (see ProviderCalls); `results` in ProviderCalls.RESULTS order,
    `buckets` per bucket (not cumulative), the last one above every bound."""

    __slots__ = ("buckets", "in_flight", "results", "seconds")

    def __init__(self, bounds: int) -> None:
        self.in_flight = 0
        self.results = [0, 0, 0, 0]
        self.buckets = [0] * (bounds + 1)
        self.seconds = 0.0


PROVIDER_CALLS = ProviderCalls()
REGISTRY.register(PROVIDER_CALLS)

# Campaigns (scheduler, tracker) ---------------------------------------------------------------

FANOUT_MESSAGES = Counter(
    "sendout_fanout_messages_total",
    "Send requests (one per recipient and channel) published by the scheduler's fan-out",
)
CAMPAIGNS = Gauge(
    "sendout_campaigns", "Campaigns by state, as the scheduler's database holds them",
    ["state"],
)
CAMPAIGN_PENDING = Gauge(
    "sendout_campaign_pending_messages",
    "Messages of a campaign in flight (sending or aborting) without an outcome yet, by channel; "
    "a campaign's series is removed once it is completed or aborted",
    ["campaign_id", "channel"],
)
CAMPAIGN_SETTLED = Gauge(
    "sendout_campaign_settled_messages",
    "Messages of a campaign in flight with an outcome (completed, failed or skipped), by "
    "channel; removed with the campaign's pending series",
    ["campaign_id", "channel"],
)

# HTTP (shared/observability.py) ---------------------------------------------------------------

HTTP_REQUEST_SECONDS = Histogram(
    "sendout_http_request_duration_seconds",
    "HTTP requests served, by service, method, route template and status class (2xx...)",
    ["service", "method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_REQUESTS = Counter(
    "sendout_webhook_requests_total",
    "Webhook requests (provider receipts, inbound SMS), by webhook and result (accepted, "
    "rejected: bad or missing signature, invalid: refused content, error)",
    ["webhook", "result"],
)


# Reasons --------------------------------------------------------------------------------------

_MAX_REASONS = 100
_reasons: set[str] = set()
_reasons_lock = threading.Lock()
_CODE = re.compile(r"^(HTTP|SMTP) (\d{3})")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def reason_class(reason: str | None) -> str:
    """A failure's or skip's reason as a bounded label value: `http_503`, `smtp_550`,
    `gave_up`, or the reason's text before its first colon, in lower snake case (at most 40
    characters); once 100 distinct classes were seen in this process, `other`."""
    if not reason:
        return ""
    if reason.startswith("gave up after"):
        label = "gave_up"
    elif (m := _CODE.match(reason)) is not None:
        label = f"{m.group(1).lower()}_{m.group(2)}"
    else:
        label = _NOT_WORD.sub("_", reason.split(":", 1)[0].lower()).strip("_")[:40] or "other"
    if label in _reasons:
        return label
    with _reasons_lock:
        if len(_reasons) >= _MAX_REASONS:
            return "other"
        _reasons.add(label)
    return label
