"""The demo: a 10,000-recipient email campaign, sent out now, with a live progress bar.

Runs against the stack in KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL (the `./sendout demo` command
starts it), starts the three services and a fake provider as processes, and exits non-zero if
the final counters differ from what the demo set up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from devtools.processes import ROOT, start_sendout

FAIL_PATTERN = r"\+bounce@"
FLAKY_PATTERN = r"\+flaky@"
# Accepted by the provider, then reported not delivered by its receipt.
FULL_PATTERN = r"\+full@"
FULL_REASON = "mailbox full"


@dataclass(frozen=True)
class DemoList:
    csv: str
    total: int
    expected_completed: int
    expected_failed: int
    expected_skipped: int
    expected_not_delivered: int


def make_recipients(n: int) -> DemoList:
    """Every 50th recipient has no email (skipped), every 40th otherwise bounces at the
    provider (failed), every 97th fails once and succeeds on retry (completed), and every 30th
    is accepted but its receipt says "mailbox full" (completed, not delivered)."""
    lines = ["email,first_name,last_name,city"]
    completed = failed = skipped = full = 0
    for i in range(n):
        if i % 50 == 0:
            email = ""
            skipped += 1
        elif i % 40 == 0:
            email = f"voter{i}+bounce@example.org"
            failed += 1
        elif i % 97 == 0:
            email = f"voter{i}+flaky@example.org"
            completed += 1
        elif i % 30 == 7:
            email = f"voter{i}+full@example.org"
            completed += 1
            full += 1
        else:
            email = f"voter{i}@example.org"
            completed += 1
        lines.append(f"{email},Voter{i},Demo,Aarhus")
    return DemoList("\n".join(lines) + "\n", n, completed, failed, skipped, full)


def run(n: int, console: Console, email_via: str) -> int:
    kafka = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    database_url = os.environ["DATABASE_URL"]
    demo = make_recipients(n)
    console.print("[bold]Starting Sendout[/] (scheduler, dispatcher, tracker, fake providers)…")
    sendout = start_sendout(
        kafka=kafka, database_url=database_url, log_dir=ROOT / ".sendout" / "logs" / "demo",
        fail_pattern=FAIL_PATTERN, flaky_pattern=FLAKY_PATTERN, email_via=email_via,
    )
    try:
        with httpx.Client(timeout=30, headers=sendout.auth) as http:
            campaign = http.post(f"{sendout.scheduler}/campaigns", json={
                "name": "Election day reminder (demo)",
                "channel": "email",
                "sender": {"name": "Election Office", "email": "office@example.org"},
                "subject": "Your polling station, {{ first_name }}",
                "template": "Hello {{ first_name }} {{ last_name }}, polls in {{ city }} "
                            "open at 8:00.",
            }).raise_for_status().json()
            cid = campaign["id"]
            added = http.post(
                f"{sendout.scheduler}/campaigns/{cid}/recipients.csv",
                content=demo.csv.encode(), headers={"content-type": "text/csv"},
            ).raise_for_status().json()["added"]
            console.print(f"Campaign {cid}: {added} recipients "
                          f"({demo.expected_skipped} without email, "
                          f"{demo.expected_failed} that will bounce, "
                          f"{demo.expected_not_delivered} with a full mailbox)")
            sink = sendout.smtp if email_via == "smtp" else sendout.provider
            http.post(f"{sink}/config", json={"not_delivered_pattern": FULL_PATTERN,
                                              "not_delivered_reason": FULL_REASON})
            t0 = time.monotonic()
            http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now").raise_for_status()
            final = watch(http, sendout.tracker, cid, demo.total, console)
            wall = time.monotonic() - t0
            final = wait_receipts(http, sendout.tracker, cid, final)
            stats = http.get(f"{sink}/requests", params={"limit": 1_000_000}).json()["requests"]
            scheduler_state = wait_scheduler_completed(http, sendout.scheduler, cid)
    finally:
        sendout.processes.stop()

    table = Table(title="Final counts")
    keys = ("total", "pending", "completed", "failed", "skipped", "delivered", "not_delivered")
    for col in ("", *keys):
        table.add_column(col.replace("_", " "), justify="right")
    table.add_row("progress", *(str(final[k]) for k in keys))
    table.add_row("expected", str(demo.total), "0", str(demo.expected_completed),
                  str(demo.expected_failed), str(demo.expected_skipped),
                  str(demo.expected_completed - demo.expected_not_delivered),
                  str(demo.expected_not_delivered))
    console.print(table)
    console.print(f"Wall time from 'Send out now' to nothing pending: {wall:.2f} s "
                  f"({demo.total / wall:,.0f} recipients/s)")
    reasons = final["reasons"]
    console.print(f"Receipts: [green]delivered {final['delivered']}[/] · [red]not delivered "
                  f"{final['not_delivered']}[/] {reasons['not_delivered']}")
    console.print(f"Reasons: failed {reasons['failed']} · skipped {reasons['skipped']}")
    accepted = [r for r in stats if r["status"] in (202, 250)]
    distinct = len({r["idempotency_key"] for r in accepted})
    console.print(f"{'SMTP sink' if email_via == 'smtp' else 'Fake email API'}: "
                  f"{len(accepted)} messages accepted ({distinct} distinct), "
                  f"{len(stats) - len(accepted)} refused (bounces, and flaky "
                  f"recipients' first attempts); the scheduler says the campaign is "
                  f"{scheduler_state}")
    ok = (
        final["total"] == demo.total
        and final["pending"] == 0
        and final["completed"] == demo.expected_completed
        and final["failed"] == demo.expected_failed
        and final["skipped"] == demo.expected_skipped
        and final["not_delivered"] == demo.expected_not_delivered
        and final["delivered"] == demo.expected_completed - demo.expected_not_delivered
        and len(accepted) == distinct == demo.expected_completed
        and scheduler_state == "completed"
    )
    console.print("[bold green]Demo OK: counts are exact.[/]" if ok
                  else "[bold red]Demo FAILED: counts differ from what was set up.[/]")
    return 0 if ok else 1


def watch(http: httpx.Client, tracker: str, cid: str, total: int, console: Console,
          timeout: float = 600.0) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("pending {task.fields[pending]} · [green]completed {task.fields[sent]}"
                   "[/] · [red]failed {task.fields[failed]}[/] · [yellow]skipped "
                   "{task.fields[skipped]}"),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console, refresh_per_second=10) as bar:
        task = bar.add_task("Sending", total=total, pending=total, sent=0, failed=0, skipped=0)
        while True:
            r = http.get(f"{tracker}/campaigns/{cid}/progress")
            if r.status_code == 200 and r.json()["total"] is not None:
                p = r.json()
                bar.update(
                    task,
                    completed=p["completed"] + p["failed"] + p["skipped"],
                    pending=p["pending"], sent=p["completed"], failed=p["failed"],
                    skipped=p["skipped"],
                )
                if p["state"] == "completed":
                    return dict(p)
            if time.monotonic() > deadline:
                raise TimeoutError(f"campaign {cid} still pending after {timeout}s: {r.text}")
            time.sleep(0.1)


def wait_receipts(http: httpx.Client, tracker: str, cid: str, final: dict[str, Any],
                  timeout: float = 30.0) -> dict[str, Any]:
    """Receipts come shortly after the messages: progress once every sent one has its own."""
    deadline = time.monotonic() + timeout
    while final["delivered"] + final["not_delivered"] < final["completed"] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
        final = http.get(f"{tracker}/campaigns/{cid}/progress").raise_for_status().json()
    return final


def wait_scheduler_completed(http: httpx.Client, scheduler: str, cid: str) -> str:
    state = ""
    for _ in range(100):
        state = http.get(f"{scheduler}/campaigns/{cid}").raise_for_status().json()["state"]
        if state == "completed":
            break
        time.sleep(0.1)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--email-via", choices=["http", "smtp"], default="http",
                        help="the fake email API (default) or the SMTP sink")
    args = parser.parse_args()
    sys.exit(run(args.recipients, Console(), args.email_via))


if __name__ == "__main__":
    main()
