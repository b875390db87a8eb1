"""Kafka topic names: one place, so producers and consumers cannot drift apart."""

SEND_REQUESTED = "sendout.send-requested.v1"
OUTCOMES = "sendout.outcomes.v1"
RECEIPTS = "sendout.receipts.v1"
CAMPAIGN_LIFECYCLE = "sendout.campaign-lifecycle.v1"
OPT_OUTS = "sendout.opt-outs.v1"
# API tokens issued and revoked, keyed by token hash; compacted (the latest per token is kept).
IDENTITY = "sendout.identity.v1"

ALL = (SEND_REQUESTED, OUTCOMES, RECEIPTS, CAMPAIGN_LIFECYCLE, OPT_OUTS, IDENTITY)
COMPACTED = frozenset({IDENTITY})
# Keyed by campaign id: each record carries its campaign's trace (shared/tracing.py).
CAMPAIGN_KEYED = frozenset({OUTCOMES, RECEIPTS, CAMPAIGN_LIFECYCLE})


def dlq(topic: str) -> str:
    """The dead-letter topic for records of `topic` that can never be processed."""
    return f"{topic}.dlq"
