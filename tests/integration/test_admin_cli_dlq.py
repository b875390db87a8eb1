"""The operator CLI's dead letters (`sendout-admin dlq ...`) against the real Kafka: it runs
devtools.dlq's list and replay, with their errors (and Kafka's) as one line."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from shared import topics
from tests.conftest import ROOT, Stack
from tests.integration.test_dead_letters import _all_records, _produce, _topic

pytestmark = pytest.mark.integration


def _admin(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.admin", "dlq", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )


async def test_the_admin_cli_lists_and_replays_dead_letters(stack: Stack) -> None:
    topic = await _topic(stack, partitions=1)
    dlq = topics.dlq(topic)
    for i in range(2):
        await _produce(stack, dlq, [(f"key-{i}".encode(), f'{{"n": {i}}}'.encode())], headers=[
            ("x-error", f"ValueError: bad {i}".encode()), ("x-attempts", b"5"),
            ("x-service", b"tracker"), ("x-source-topic", topic.encode()),
            ("x-source-partition", b"0"), ("x-source-offset", str(7 + i).encode())])

    listed = _admin("list", "--topic", topic, bootstrap=stack.kafka)
    assert listed.returncode == 0, listed.stderr
    assert f"== {dlq}: 2 record(s), 2 not replayed" in listed.stdout
    assert f"{dlq} 0:1\n  from   {topic} 0:8\n  error  ValueError: bad 1" in listed.stdout

    one = _admin("replay", "--topic", dlq, "--offset", "0:1", bootstrap=stack.kafka)
    assert one.returncode == 0, one.stderr
    assert f"replayed {dlq} 0:1 -> {topic}" in one.stdout
    assert [(r.key, r.value) for r in await _all_records(stack, topic)] == [
        (b"key-1", b'{"n": 1}')]

    twice = _admin("replay", "--topic", dlq, "--offset", "0:1", bootstrap=stack.kafka)
    assert twice.returncode == 1 and "error: " in twice.stderr
    assert "already replayed" in twice.stderr and "Traceback" not in twice.stderr

    rest = _admin("replay", "--topic", topic, "--all", bootstrap=stack.kafka)
    assert rest.returncode == 0 and "1 record(s) replayed" in rest.stdout, rest.stderr
    assert sorted(r.key for r in await _all_records(stack, topic)) == [b"key-0", b"key-1"]
    assert "2 record(s), 0 not replayed" in _admin("list", "--topic", topic,
                                                   bootstrap=stack.kafka).stdout

    both = _admin("replay", "--topic", topic, bootstrap=stack.kafka)
    assert both.returncode == 2 and "exactly one of --offset P:O and --all" in both.stderr

    unknown = f"test.none-{uuid.uuid4().hex[:8]}"
    refused = _admin("list", "--topic", unknown, bootstrap=stack.kafka)
    assert refused.returncode == 1 and f"no topic {unknown}.dlq" in refused.stderr

    # Nothing listens on port 9: a one-line error, not a traceback.
    down = _admin("list", bootstrap="127.0.0.1:9")
    assert down.returncode == 1 and "Kafka at 127.0.0.1:9" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr
