"""Prometheus metrics shared by the services (one registry per process)."""

from prometheus_client import Counter, Histogram

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
    "unavailable, retried without limit; error: any other, counted towards the DLQ)",
    ["service", "topic", "cause"],
)
BATCH_SECONDS = Histogram(
    "sendout_batch_seconds",
    "Time to process one consumed batch",
    ["service", "topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
