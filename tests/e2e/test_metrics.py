"""The operators' view of a campaign: every service's /metrics scraped around a real send-out
agrees with the tracker's progress, counts every provider call, and shows the consumers
caught up; the trace of the campaign reaches every service's logs."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.processes import ROOT, Sendout
from tests.e2e.conftest import FAIL_PATTERN, FLAKY_PATTERN, wait_for_completion
from tests.e2e.helpers import create_campaign, requests_to

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=10).raise_for_status().text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True,
          ) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and match(dict(labels)))


def scrape_all(urls: list[str]) -> Samples:
    summed: dict[tuple[str, frozenset[tuple[str, str]]], float] = defaultdict(float)
    for url in urls:
        for key, v in scrape(url).items():
            summed[key] += v
    return dict(summed)


def test_metrics_of_a_send_out_equal_its_progress(sendout: Sendout, http: httpx.Client) -> None:
    assert "bounce" in FAIL_PATTERN and "flaky" in FLAKY_PATTERN
    n = 300
    tag = uuid.uuid4().hex[:8]
    lines = ["email,first_name"]
    for i in range(n):
        if i % 30 == 0:
            lines.append(f",N{i}")  # skipped: missing_address
        elif i % 25 == 0:
            lines.append(f"m{tag}{i}+bounce@example.org,N{i}")  # failed: SMTP 550
        elif i % 45 == 1:
            lines.append(f"m{tag}{i}+flaky@example.org,N{i}")  # refused once (451), then sent
        else:
            lines.append(f"m{tag}{i}@example.org,N{i}")
    addresses = {line.split(",")[0] for line in lines[1:]} - {""}

    before = scrape_all(sendout.dispatchers)
    fanout_before = total(scrape(sendout.scheduler), "sendout_fanout_messages_total")
    cid = create_campaign(http, sendout)
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/recipients.csv",
                  content=("\n".join(lines) + "\n").encode(), headers={"content-type": "text/csv"})
    assert r.status_code == 201, r.text
    r = http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")
    assert r.status_code == 202, r.text
    # The request on the campaign answers in the campaign's trace.
    assert r.headers["traceparent"].split("-")[1] == uuid.UUID(cid).hex
    final = wait_for_completion(http, sendout.tracker, cid)

    after = scrape_all(sendout.dispatchers)

    def delta(name: str, **want: str) -> float:
        def match(labels: dict[str, str]) -> bool:
            return all(labels.get(k) == v for k, v in want.items())
        return total(after, name, match) - total(before, name, match)

    # Messages by outcome equal the tracker's counters, each under its provider and reason.
    for outcome in ("completed", "failed", "skipped"):
        assert delta("sendout_messages_total", outcome=outcome) == final[outcome], outcome
    assert final["skipped"] == n // 30 and final["failed"] > 0
    assert delta("sendout_messages_total", outcome="completed", provider="smtp",
                 channel="email") == final["completed"]
    assert delta("sendout_messages_total", outcome="failed", reason="smtp_550") == \
        final["failed"]
    assert delta("sendout_messages_total", outcome="skipped", reason="missing_address") == \
        final["skipped"]

    # The latency histogram counted every provider call: one per SMTP transaction the sink
    # saw (the flaky ones twice), whatever its answer.
    calls = requests_to(http, sendout.smtp, addresses)
    assert len(calls) == final["completed"] + final["failed"] + sum(
        1 for a in addresses if "+flaky" in a)
    assert delta("sendout_provider_call_seconds_count", provider="smtp") == len(calls)
    assert delta("sendout_provider_calls_total", provider="smtp") == len(calls)
    assert delta("sendout_provider_calls_total", provider="smtp", result="retryable") == sum(
        1 for a in addresses if "+flaky" in a)
    assert total(after, "sendout_provider_calls_in_flight") == 0

    # The fan-out published one request per recipient.
    assert total(scrape(sendout.scheduler), "sendout_fanout_messages_total") - \
        fanout_before == n

    # Consumer lag returns to 0 for the send requests and the outcomes; the campaign's own
    # series are gone once it completed; the scheduler counts it as completed.
    deadline = time.monotonic() + 60
    while True:
        everyone = scrape_all([*sendout.dispatchers, sendout.tracker, sendout.scheduler])
        lag = {g: total(everyone, "sendout_consumer_lag_records",
                        lambda labels, g=g: labels["group"] == g)
               for g in ("sendout-dispatcher", "sendout-tracker")}
        assigned = {g: sum(1 for (name, labels) in everyone
                           if name == "sendout_consumer_lag_records"
                           and dict(labels)["group"] == g) for g in lag}
        campaign_series = [k for k in everyone if ("campaign_id", cid) in k[1]]
        done = total(everyone, "sendout_campaigns", lambda labels: labels["state"] ==
                     "completed")
        if (all(v == 0 for v in lag.values()) and all(assigned.values())
                and not campaign_series and done >= 1):
            break
        assert time.monotonic() < deadline, (lag, assigned, campaign_series, done)
        time.sleep(0.5)

    # HTTP latency is by route template, never by the campaign's id.
    tracker = scrape(sendout.tracker)
    assert total(tracker, "sendout_http_request_duration_seconds_count",
                 lambda labels: labels["route"] == "/campaigns/{campaign_id}/progress") > 0
    assert not [k for k in tracker if cid in str(k)]

    # The campaign's trace reaches the logs of each service that logged about it, and no log
    # holds a recipient's address.
    logs = ROOT / ".sendout" / "logs" / "e2e"
    traced: set[str] = set()
    for path in logs.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            assert not any(a in line for a in addresses), line
            entry = json.loads(line)
            if entry.get("trace_id") == uuid.UUID(cid).hex:
                traced.add(entry["service"])
    assert traced >= {"scheduler", "dispatcher", "tracker"}, traced
