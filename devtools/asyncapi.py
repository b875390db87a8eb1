"""Sendout's AsyncAPI 3.0 document (docs/asyncapi/sendout.yaml): every Kafka topic, the events
its records hold (JSON Schema from shared/events.py), and which service publishes and which
consumer group consumes it.

Why not FastStream's generator: the subscribers take raw bytes (each record is decoded by
shared/wire.py or a pydantic TypeAdapter, one at a time, so that one bad record cannot block its
batch), so their payloads would document as "bytes"; and FastStream 0.7.8 refuses to build the
schema of a handler taking the broker (`broker: KafkaBroker`) without starting it. So the
consumers are read here from the services' own FastStream routers (topic, group, description),
the publishers are listed below, and the payloads are the pydantic events' schemas.
tests/unit/test_asyncapi.py regenerates the document and compares it with the committed one,
so a change of an event schema or of a consumer shows in review.

Usage: python -m devtools.asyncapi [--write]   (prints, or writes docs/asyncapi/sendout.yaml)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import yaml
from faststream.kafka.subscriber.usecase import LogicSubscriber
from pydantic import TypeAdapter

from shared import events, topics

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "asyncapi" / "sendout.yaml"

# What each topic's records hold, and what they are keyed by.
TOPICS: dict[str, tuple[str, Any, str]] = {
    topics.SEND_REQUESTED: (
        "SendRequestedRecord", events.SendRequested | events.SendRequestedBatch,
        "the (first) recipient id: a batch of one campaign's requests, or one alone",
    ),
    topics.OUTCOMES: (
        "OutcomeRecord", events.OutcomeBatch | events.Outcome,
        "the campaign id: a batch of one campaign's outcomes, or one alone",
    ),
    topics.RECEIPTS: ("DeliveryReported", events.DeliveryReported,
                      "the campaign id (the provider message id before it is known)"),
    topics.CAMPAIGN_LIFECYCLE: ("LifecycleEvent", events.LifecycleEvent, "the campaign id"),
    topics.OPT_OUTS: ("AddressOptedOut", events.AddressOptedOut, "the organisation id"),
    topics.IDENTITY: ("IdentityEvent", events.IdentityEvent,
                      "the token hash (compacted: the latest per token is kept)"),
    topics.ERASURES: ("RecipientsErased", events.RecipientsErased, "the organisation id"),
}

# Publishers, as the services' wiring (services/*/bootstrap.py) declares them.
PUBLISHERS: dict[str, list[tuple[str, str]]] = {
    "scheduler": [
        (topics.SEND_REQUESTED, "The fan-out: recipients and channels to send, in batches of "
         "one campaign's; individual sends through the outbox."),
        (topics.CAMPAIGN_LIFECYCLE, "Campaign lifecycle (started, scheduled, canceled, "
         "aborted), through the outbox."),
        (topics.OPT_OUTS, "Addresses opted out."),
        (topics.IDENTITY, "API tokens issued and revoked."),
        (topics.ERASURES, "Recipients whose voter's personal data was erased, through the "
         "outbox."),
    ],
    "dispatcher": [
        (topics.OUTCOMES, "Sent / failed / skipped, in batches of one campaign's."),
        (topics.CAMPAIGN_LIFECYCLE, "Abort acknowledgements."),
    ],
    "tracker": [
        (topics.CAMPAIGN_LIFECYCLE, "Completed campaigns."),
        (topics.RECEIPTS, "Delivery receipts from providers' webhook."),
    ],
}


def consumers() -> dict[str, list[tuple[str, str | None, str]]]:
    """(topic, group or None for a broadcast consumer, description) of each service's
    subscribers, read from its FastStream routers (built with stand-ins for their
    dependencies: nothing runs)."""
    from services.dispatcher import erasure as dispatcher_erasure
    from services.dispatcher.entrypoints import kafka as dispatcher
    from services.scheduler.entrypoints import kafka as scheduler
    from services.tracker import erasure as tracker_erasure
    from services.tracker.entrypoints import kafka as tracker

    stub = MagicMock()
    routers = {
        "scheduler": [scheduler.kafka_router(stub, stub)],
        "dispatcher": [dispatcher.kafka_router(stub, stub, stub, stub, stub, stub,
                                               instance="x", max_records=1),
                       dispatcher_erasure.kafka_router(stub)],
        "tracker": [tracker.kafka_router(stub, stub, 1), tracker_erasure.kafka_router(stub)],
    }
    found: dict[str, list[tuple[str, str | None, str]]] = {}
    for service, rs in routers.items():
        for router in rs:
            for sub in router.subscribers:
                assert isinstance(sub, LogicSubscriber)  # a KafkaRouter's: topics, group_id
                if not sub.specification.include_in_schema:
                    continue
                for topic in sub.topics:
                    found.setdefault(service, []).append(
                        (topic.name, sub.group_id or None, sub.specification.description or ""))
    return found


def _id(topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", topic.removeprefix("sendout.")).strip("_")


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    for topic, (name, kind, key) in TOPICS.items():
        schema = TypeAdapter(kind).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
        messages[name] = {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "headers": {"$ref": "#/components/schemas/RecordHeaders"},
            "bindings": {"kafka": {"key": {"type": "string", "description": key}}},
        }
        channels[_id(topic)] = {
            "address": topic,
            "description": f"Keyed by {key}. Records that can never be processed go to "
                           f"`{topics.dlq(topic)}` with the error in their headers.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
    schemas["RecordHeaders"] = {
        "type": "object",
        "properties": {
            "content-type": {"const": "application/json"},
            "traceparent": {"type": "string", "description": "W3C trace context: a "
                            "campaign's records carry its trace (trace id = campaign id)",
                            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
        },
    }
    operations: dict[str, Any] = {}
    for service, pubs in PUBLISHERS.items():
        for topic, description in pubs:
            operations[f"{service}_publishes_{_id(topic)}"] = {
                "action": "send", "channel": {"$ref": f"#/channels/{_id(topic)}"},
                "summary": f"{service} publishes", "description": description,
            }
    for service, subs in sorted(consumers().items()):
        for topic, group, description in sorted(subs, key=lambda s: (s[0], s[1] or "")):
            who = group or f"{service}-broadcast"
            by = f"group {group}" if group else "every process, no group"
            operation: dict[str, Any] = {
                "action": "receive", "channel": {"$ref": f"#/channels/{_id(topic)}"},
                "summary": f"{service} consumes ({by})",
                "description": description,
            }
            if group:
                operation["bindings"] = {"kafka": {"groupId": {"type": "string",
                                                               "enum": [group]}}}
            operations[f"{_id(who)}_consumes_{_id(topic)}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Sendout", "version": "1",
                 "description": "The events the Sendout services exchange through Kafka "
                                "(generated by devtools/asyncapi.py; do not edit)."},
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": "kafka:9092", "protocol": "kafka"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    text = render()
    if args.write:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
