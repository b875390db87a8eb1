"""docs/asyncapi/sendout.yaml is what devtools/asyncapi.py generates from the code: a change of
an event schema, a topic or a consumer group shows in review as a change of that file."""

from __future__ import annotations

import yaml

from devtools import asyncapi
from shared import topics


def test_the_committed_document_matches_the_code() -> None:
    assert asyncapi.OUT.read_text() == asyncapi.render(), (
        "docs/asyncapi/sendout.yaml is stale: run `.venv/bin/python -m devtools.asyncapi "
        "--write` and review the difference")


def test_every_topic_has_its_channel_and_every_reference_resolves() -> None:
    doc = yaml.safe_load(asyncapi.OUT.read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert {c["address"] for c in doc["channels"].values()} == set(topics.ALL)

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [
                r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        target: object = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]


def test_the_consumer_groups_are_the_services() -> None:
    doc = yaml.safe_load(asyncapi.OUT.read_text())
    groups = {op["bindings"]["kafka"]["groupId"]["enum"][0]
              for op in doc["operations"].values() if "bindings" in op}
    assert {"sendout-dispatcher", "sendout-tracker", "sendout-scheduler"} <= groups
    # Every event of the lifecycle topic is documented.
    schemas = doc["components"]["schemas"]
    for event in ("CampaignStarted", "CampaignAborted", "CampaignCompleted",
                  "AbortAcknowledged", "MessageSent", "OutcomeBatch", "SendRequestedBatch"):
        assert event in schemas, event
