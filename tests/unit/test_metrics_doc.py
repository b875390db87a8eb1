"""docs/metrics.md lists every series the services define, with its type and labels, and
nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import services.console.app
import services.dispatcher.app
import services.scheduler.app
import services.tracker.app  # noqa: F401  (every service's metrics registered)
from shared import metrics

DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(sendout_[a-z_]+)` \|\s*(\w+)\s*\|([^|]*)\|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            labels = tuple(re.findall(r"`(\w+)`", m.group(3)))
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def exposed_name(metric: MetricWrapperBase) -> str:
    return metric._name + "_total" if metric._type == "counter" else metric._name


def defined() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every sendout_* series registered by the services' modules (most in shared.metrics)."""
    collectors = {id(c): c for c in REGISTRY._names_to_collectors.values()}.values()
    found = {exposed_name(c): (c._type, tuple(c._labelnames)) for c in collectors
             if isinstance(c, MetricWrapperBase) and c._name.startswith("sendout_")}
    for c in collectors:  # collectors of their own say what they expose
        for name, kind, labels in getattr(c, "documented", ()):
            found[name] = (kind, tuple(labels))
    return found


def test_every_series_is_documented_and_every_documented_series_exists() -> None:
    assert documented() == defined()


def test_shared_metrics_are_registered() -> None:
    names = {exposed_name(m) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    assert names | {n for n, _, _ in metrics.PROVIDER_CALLS.documented} <= set(defined())


def test_a_collector_of_its_own_exposes_what_it_documents() -> None:
    metrics.PROVIDER_CALLS.of("doc-test")
    exposed = {(f.name, f.type, tuple(sorted({k for s in f.samples for k in s.labels} - {"le"})))
               for f in metrics.PROVIDER_CALLS.collect()}
    assert exposed == {(name.removesuffix("_total"), kind, tuple(sorted(labels)))
                       for name, kind, labels in metrics.PROVIDER_CALLS.documented}


def test_names_follow_prometheus_conventions() -> None:
    for name, (kind, _) in defined().items():
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
