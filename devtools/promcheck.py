"""Offline checks of what deploy/ gives Prometheus and Grafana, in Python (no promtool):

- a rules file has Prometheus's format: `groups:` of uniquely named groups, each with `rules:`
  that are either alerting (`alert`, `expr`, optional `for` / `keep_firing_for`, `labels`,
  `annotations`) or recording (`record`, `expr`, `labels`) rules, no unknown key, durations in
  Prometheus's syntax (`30s`, `5m`, `1h30m`), and each alert with a `severity` label and a
  `summary` and `description`;
- every PromQL expression (rules and dashboard panels) is well formed as far as brackets,
  quotes and range selectors go, and names only metrics that docs/metrics.md documents (a
  histogram's `_bucket`, `_count`, `_sum` series included) or Prometheus's own `up`;
- the dashboard is a Grafana dashboard JSON whose panels each have an id, a type, a title, a
  position and targets with a `refId` and an `expr`.

This is not PromQL's full grammar: an expression it accepts could still be refused by
Prometheus for a type error (a range vector where an instant one is needed, say).

Usage: python -m devtools.promcheck  (checks deploy/prometheus/rules.yml and
deploy/grafana/dashboards/*.json against docs/metrics.md; exit status 1 on any error)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
METRICS_DOC = ROOT / "docs" / "metrics.md"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"

BUILTIN = frozenset({"up"})
_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "atan2", "inf", "nan", "start", "end",
})
_AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"(0x[0-9a-fA-F]+|\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+)")
_ALERT_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
_RECORD_KEYS = {"record", "expr", "labels"}
_GROUP_KEYS = {"name", "rules", "interval", "limit", "query_offset", "labels"}


def is_duration(value: object) -> bool:
    return isinstance(value, str) and value != "" and _DURATION.match(value) is not None


def documented_metrics(doc: Path = METRICS_DOC) -> set[str]:
    """The series docs/metrics.md documents, with each histogram's exposed series."""
    names: set[str] = set()
    for line in doc.read_text().splitlines():
        m = re.match(r"^\| `(sendout_[a-z_]+)` \|\s*(\w+)\s*\|", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names |= {m.group(1) + s for s in ("_bucket", "_count", "_sum")}
    return names


def metric_names(expr: str) -> tuple[set[str], list[str]]:
    """(metric names an expression selects, problems with its form)."""
    names: set[str] = set()
    problems: list[str] = []
    stack: list[str] = []
    closing = {")": "(", "]": "[", "}": "{"}
    i, n = 0, len(expr)
    after_grouping = False  # `by` / `without` / `on` / `ignoring` / `group_*` then a label list
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            end = expr.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in "\"'`":
            end = i + 1
            while end < n and expr[end] != c:
                end += 2 if expr[end] == "\\" and c != "`" else 1
            if end >= n:
                problems.append(f"unterminated string at {i}")
                return names, problems
            i = end + 1
            continue
        if c == "{":
            # Label matchers: skip to the matching brace, honouring strings.
            end, depth = i + 1, 1
            while end < n and depth:
                if expr[end] in "\"'`":
                    q = expr[end]
                    end += 1
                    while end < n and expr[end] != q:
                        end += 2 if expr[end] == "\\" else 1
                elif expr[end] == "{":
                    depth += 1
                elif expr[end] == "}":
                    depth -= 1
                end += 1
            if depth:
                problems.append(f"unclosed '{{' at {i}")
                return names, problems
            i = end
            continue
        if c == "[":
            end = expr.find("]", i)
            if end < 0:
                problems.append(f"unclosed '[' at {i}")
                return names, problems
            inside = expr[i + 1:end].strip()
            parts = inside.split(":")
            if len(parts) > 2 or not is_duration(parts[0].strip()) or (
                    len(parts) == 2 and parts[1].strip() and not is_duration(parts[1].strip())):
                problems.append(f"bad range or subquery [{inside}]")
            i = end + 1
            continue
        if c == "(":
            if after_grouping:
                end = expr.find(")", i)
                if end < 0:
                    problems.append(f"unclosed '(' at {i}")
                    return names, problems
                after_grouping = False
                i = end + 1
                continue
            stack.append(c)
            i += 1
            continue
        if c in ")]}":
            if not stack or stack.pop() != closing[c]:
                problems.append(f"unbalanced '{c}' at {i}")
            i += 1
            continue
        m = _NUMBER.match(expr, i)
        if m and (c.isdigit() or c == "."):
            i = m.end()
            # A duration after `offset` (5m) reads as a number then an identifier: skip it.
            unit = re.match(r"(ms|[smhdwy])\b", expr[i:])
            if unit:
                i += unit.end()
            continue
        m = _IDENT.match(expr, i)
        if m:
            word = m.group(0)
            i = m.end()
            rest = expr[i:].lstrip()
            lowered = word.lower()
            if lowered in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                after_grouping = rest.startswith("(")
                continue
            if lowered in _KEYWORDS:
                continue
            if rest.startswith("(") or lowered in _AGGREGATIONS:
                continue  # a function, or an aggregation (`sum by (x) (...)`)
            names.add(word)
            continue
        if c in "+-*/%^=!<>,":
            i += 1
            continue
        problems.append(f"unexpected {c!r} at {i}")
        i += 1
    if stack:
        problems.append(f"unclosed {''.join(stack)!r}")
    return names, problems


def check_expr(expr: object, known: set[str], where: str) -> list[str]:
    if not isinstance(expr, str) or not expr.strip():
        return [f"{where}: expr must be a non-empty string"]
    names, problems = metric_names(expr)
    errors = [f"{where}: {p}" for p in problems]
    errors += [f"{where}: unknown metric {name!r} (not in docs/metrics.md)"
               for name in sorted(names - known - BUILTIN)]
    if not names:
        errors.append(f"{where}: selects no metric")
    return errors


def _strings(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def check_rules(data: Any, known: set[str]) -> list[str]:
    """Errors of a parsed rules file (empty: it is good)."""
    if not isinstance(data, dict) or set(data) != {"groups"}:
        return ["the file must hold exactly one key, 'groups'"]
    groups = data["groups"]
    if not isinstance(groups, list) or not groups:
        return ["'groups' must be a non-empty list"]
    errors: list[str] = []
    seen_groups: set[str] = set()
    for g, group in enumerate(groups):
        if not isinstance(group, dict):
            errors.append(f"group {g}: must be a mapping")
            continue
        name = group.get("name")
        where = f"group {name or g}"
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: 'name' required")
        elif name in seen_groups:
            errors.append(f"{where}: duplicate group name")
        seen_groups.add(str(name))
        for key in set(group) - _GROUP_KEYS:
            errors.append(f"{where}: unknown key {key!r}")
        for key in ("interval", "query_offset"):
            if key in group and not is_duration(group[key]):
                errors.append(f"{where}: {key} {group[key]!r} is not a duration")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            errors.append(f"{where}: 'rules' must be a non-empty list")
            continue
        alerts: set[str] = set()
        for r, rule in enumerate(rules):
            errors += _check_rule(rule, f"{where} rule {r}", known, alerts)
    return errors


def _check_rule(rule: Any, where: str, known: set[str], alerts: set[str]) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: must be a mapping"]
    errors: list[str] = []
    if ("alert" in rule) == ("record" in rule):
        return [f"{where}: exactly one of 'alert' and 'record'"]
    if "alert" in rule:
        name = rule["alert"]
        where = f"{where} ({name})"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            errors.append(f"{where}: alert name must be an identifier")
        if name in alerts:
            errors.append(f"{where}: duplicate alert in its group")
        alerts.add(name)
        allowed = _ALERT_KEYS
        for key in ("for", "keep_firing_for"):
            if key in rule and not is_duration(rule[key]):
                errors.append(f"{where}: {key} {rule[key]!r} is not a duration")
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        if not _strings(labels) or not _strings(annotations):
            errors.append(f"{where}: labels and annotations map strings to strings")
        else:
            if labels.get("severity") not in ("critical", "warning", "info"):
                errors.append(f"{where}: a 'severity' label (critical, warning, info)")
            for key in ("summary", "description"):
                if not annotations.get(key):
                    errors.append(f"{where}: annotation {key!r} required")
    else:
        name = rule["record"]
        where = f"{where} ({name})"
        allowed = _RECORD_KEYS
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            errors.append(f"{where}: record name must be a metric name")
        if "labels" in rule and not _strings(rule["labels"]):
            errors.append(f"{where}: labels map strings to strings")
    for key in set(rule) - allowed:
        errors.append(f"{where}: unknown key {key!r}")
    errors += check_expr(rule.get("expr"), known, where)
    return errors


def check_dashboard(data: Any, known: set[str]) -> list[str]:
    if not isinstance(data, dict) or not isinstance(data.get("panels"), list):
        return ["a dashboard has a 'panels' list"]
    errors: list[str] = []
    if not data.get("title") or not data.get("uid"):
        errors.append("a dashboard has a title and a uid")
    ids: set[int] = set()
    for p, panel in enumerate(_panels(data["panels"])):
        where = f"panel {panel.get('title') or p}"
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in ids:
            errors.append(f"{where}: a unique integer id")
        ids.add(pid if isinstance(pid, int) else -1)
        if not isinstance(panel.get("type"), str) or not panel.get("title"):
            errors.append(f"{where}: type and title required")
        pos = panel.get("gridPos")
        if not isinstance(pos, dict) or not all(isinstance(pos.get(k), int)
                                                for k in ("h", "w", "x", "y")):
            errors.append(f"{where}: gridPos with integer h, w, x, y")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{where}: at least one target")
            continue
        for target in targets:
            if not isinstance(target, dict) or not target.get("refId"):
                errors.append(f"{where}: each target has a refId")
                continue
            errors += check_expr(target.get("expr"), known, f"{where} {target['refId']}")
    return errors


def _panels(panels: Iterable[Any]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        if isinstance(panel, dict):
            yield panel
            yield from _panels(panel.get("panels", []))


def main() -> int:
    known = documented_metrics()
    errors = [f"{RULES.name}: {e}" for e in check_rules(yaml.safe_load(RULES.read_text()), known)]
    for path in sorted(DASHBOARDS.glob("*.json")):
        errors += [f"{path.name}: {e}" for e in check_dashboard(json.loads(path.read_text()),
                                                                known)]
    for error in errors:
        print(error, file=sys.stderr)
    print(f"{'FAILED' if errors else 'ok'}: rules and dashboards checked against "
          f"{len(known)} documented series")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
