from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devtools.processes import ROOT, Sendout, start_sendout
from tests.conftest import Stack

ADMIN_TOKEN = "e2e-admin-token"
INBOUND_SMS_SECRET = "e2e-inbound-secret"
FAIL_PATTERN = r"\+bounce@"
FLAKY_PATTERN = r"\+flaky@"


@pytest.fixture(scope="session")
def sendout(stack: Stack) -> Iterator[Sendout]:
    """Scheduler, tracker and two dispatcher replicas as processes, with a fake provider."""
    running = start_sendout(
        kafka=stack.kafka,
        database_url=stack.database_url,
        log_dir=ROOT / ".sendout" / "logs" / "e2e",
        fail_pattern=FAIL_PATTERN,
        flaky_pattern=FLAKY_PATTERN,
        dispatchers=2,
        # Modest, so that an abort test can catch a send-out in the middle.
        extra_env={"SENDOUT_CONCURRENCY": "50", "SENDOUT_ADMIN_TOKEN": ADMIN_TOKEN,
                   "SENDOUT_INBOUND_SMS_SECRET": INBOUND_SMS_SECRET,
                   # Every webhook configured, so that each answers as in production
                   # (the fuzz test: unsigned requests are refused, never a 5xx).
                   "SENDOUT_TWILIO_AUTH_TOKEN": "e2e-twilio-auth-token",
                   # Gauges read from Kafka and PostgreSQL (lag, campaigns) refreshed each second.
                   "SENDOUT_METRICS_INTERVAL_SECONDS": "1"},
    )
    try:
        yield running
    finally:
        running.processes.stop()


@pytest.fixture
def http(sendout: Sendout) -> Iterator[httpx.Client]:
    """A client calling as the operator (user "operator" of organisation "default")."""
    with httpx.Client(timeout=30, headers=sendout.auth) as client:
        yield client


def without_receipts(progress: dict[str, Any]) -> dict[str, Any]:
    """Progress without what receipts refine (delivered / not delivered): receipts arrive
    after a campaign completes, so a test of the send-out itself leaves them out."""
    def strip(counts: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in counts.items() if k not in ("delivered", "not_delivered")}
        if "reasons" in out:
            out["reasons"] = {k: v for k, v in out["reasons"].items() if k != "not_delivered"}
        if "by_channel" in out:
            out["by_channel"] = {ch: strip(c) for ch, c in out["by_channel"].items()}
        return out
    return strip(progress)


def bearer(user: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


def wait_for_completion(
    http: httpx.Client, tracker: str, campaign_id: str, timeout: float = 120.0
) -> dict[str, Any]:
    """Poll progress until completed, checking the invariant at every read."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = http.get(f"{tracker}/campaigns/{campaign_id}/progress")
        if r.status_code == 200:
            last = r.json()
            if last["total"] is not None:
                assert (
                    last["pending"] + last["completed"] + last["failed"] + last["skipped"]
                    == last["total"]
                ), last
                if last["state"] == "completed":
                    return last
        time.sleep(0.1)
    raise AssertionError(f"campaign {campaign_id} not completed in {timeout}s: {last}")
