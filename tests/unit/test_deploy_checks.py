"""Offline checks of deploy/: the Prometheus rules and the Grafana dashboard name only
documented metrics and have their formats (devtools/promcheck.py, in place of promtool), and
docker-compose.yml runs Prometheus and Grafana with them."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import promcheck

ROOT = Path(__file__).parents[2]
KNOWN = promcheck.documented_metrics()


def rules() -> dict[str, Any]:
    return dict(yaml.safe_load(promcheck.RULES.read_text()))


def dashboard() -> dict[str, Any]:
    return dict(json.loads((promcheck.DASHBOARDS / "sendout.json").read_text()))


def test_the_rules_file_passes() -> None:
    assert promcheck.check_rules(rules(), KNOWN) == []


def test_the_alerts_operators_asked_for_are_there() -> None:
    alerts = {r["alert"]: r for g in rules()["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"SendoutServiceDown", "SendoutConsumerLagGrowing",
                           "SendoutProviderErrorRatio", "SendoutDeadLetters",
                           "SendoutCampaignStalled"}
    assert alerts["SendoutConsumerLagGrowing"]["for"] == "5m"
    assert "> 0.10" in alerts["SendoutProviderErrorRatio"]["expr"]
    assert "[2m]" in alerts["SendoutCampaignStalled"]["expr"]


def test_the_dashboard_passes_and_covers_every_question() -> None:
    data = dashboard()
    assert promcheck.check_dashboard(data, KNOWN) == []
    used: set[str] = set()
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            used |= promcheck.metric_names(target["expr"])[0]
    # Every documented sendout series is on the dashboard (a histogram through its buckets).
    histograms = {n.removesuffix("_bucket") for n in KNOWN if n.endswith("_bucket")}
    series = {n for n in KNOWN if not n.endswith(("_bucket", "_count", "_sum"))}
    missing = {n for n in series
               if (n + "_bucket" if n in histograms else n) not in used}
    assert missing == set()
    assert "up" in used


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda r: r["groups"][0]["rules"][0].update(expr="sendout_nonexistent_total > 0"),
     "unknown metric 'sendout_nonexistent_total'"),
    (lambda r: r["groups"][0]["rules"][1].update({"for": "5 minutes"}), "is not a duration"),
    (lambda r: r["groups"][0]["rules"][0].update(expr="sum(rate(up[5m])"), "unclosed"),
    (lambda r: r["groups"][0]["rules"][0].update(expr="rate(up[5x])"), "bad range"),
    (lambda r: r["groups"][0]["rules"][0].pop("annotations"), "annotation 'summary'"),
    (lambda r: r["groups"][0]["rules"][0].update(labels={}), "severity"),
    (lambda r: r["groups"][0]["rules"][0].update(record="x"), "exactly one of"),
    (lambda r: r["groups"][0]["rules"][0].update(exprr="up"), "unknown key 'exprr'"),
    (lambda r: r["groups"].append(copy.deepcopy(r["groups"][0])), "duplicate group"),
    (lambda r: r["groups"][0]["rules"].append(copy.deepcopy(r["groups"][0]["rules"][0])),
     "duplicate alert"),
    (lambda r: r.update(extra=1), "exactly one key"),
])
def test_the_rules_check_catches(mutate: Any, error: str) -> None:
    data = rules()
    mutate(data)
    errors = promcheck.check_rules(data, KNOWN)
    assert any(error in e for e in errors), errors


def test_the_dashboard_check_catches_an_unknown_metric_and_a_missing_position() -> None:
    data = dashboard()
    target = next(p for p in data["panels"] if p["type"] != "row")["targets"][0]
    target["expr"] = 'sum(rate(sendout_typo_total{a="b"}[5m]))'
    data["panels"][0].pop("gridPos")
    errors = promcheck.check_dashboard(data, KNOWN)
    assert any("sendout_typo_total" in e for e in errors), errors
    assert any("gridPos" in e for e in errors), errors


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (group, topic) (sendout_consumer_lag_records{group="a,b)"}) > 0',
     {"sendout_consumer_lag_records"}),
    ("histogram_quantile(0.99, sum by (le) (rate(sendout_batch_seconds_bucket[5m])))",
     {"sendout_batch_seconds_bucket"}),
    ("a and on (campaign_id) max by (campaign_id) (b offset 2m) unless ignoring(x) c",
     {"a", "b", "c"}),
    ("max_over_time(rate(x_total[1m])[10m:30s]) / 1e3", {"x_total"}),
])
def test_metric_names_of_expressions(expr: str, names: set[str]) -> None:
    found, problems = promcheck.metric_names(expr)
    assert (found, problems) == (names, [])


def test_docker_compose_runs_prometheus_and_grafana_with_these_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    mounted: dict[str, list[str]] = {
        name: [v.split(":")[0] for v in services[name].get("volumes", [])
               if v.startswith("./")]
        for name in ("prometheus", "grafana")
    }
    for paths in mounted.values():
        for path in paths:
            assert (ROOT / path).exists(), path
    assert "./deploy/prometheus/rules.yml" in mounted["prometheus"]
    assert "./deploy/prometheus/prometheus.yml" in mounted["prometheus"]
    assert "./deploy/grafana/dashboards" in mounted["grafana"]
    assert "./deploy/grafana/provisioning" in mounted["grafana"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"sendout-scheduler", "sendout-dispatcher", "sendout-tracker",
                    "sendout-console"}


def test_docker_compose_has_no_default_secrets_and_publishes_on_loopback_only() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for name in ("POSTGRES_PASSWORD", "SENDOUT_ADMIN_TOKEN", "SENDOUT_RECEIPTS_SECRET",
                 "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"(:?[-?][^}]*)?\}", text)
        assert uses, name
        assert all(u.startswith(":?") for u in uses), (name, uses)  # required, no default
    assert "local-demo" not in text
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
