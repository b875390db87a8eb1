"""The fault suite: mass campaigns through all services while something breaks, and what the
provider and the counters say afterwards.

    .venv/bin/python -m bench.faults --recipients N [--case NAME]... [--other N]
        [--outage-seconds S] [--kafka-down-seconds S] [--budget-seconds S] [--no-write]

`make faults` runs every case at 50,000 recipients, `make faults-ci` at 5,000. Against the
local stack (KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL, else `.sendout/stack.env`); the Kafka
and PostgreSQL cases need the stack that `deploy/local/stack.py` started (they restart it on
the same address). The services run as real processes (`devtools.processes`), email sent over
HTTP to the recording fake provider (`devtools.fake_provider`, which tallies acceptances per
idempotency key); the CR/LF case also runs with SMTP against `devtools.fake_smtp`.

Each case runs on fresh campaigns: the main one (N recipients, organisation "faults") and a
small one of another organisation ("bystander"), started once the fault is in place (or over,
for a crash or a restart) and the main campaign 20% settled. Every case checks and prints:
- final: both campaigns reached `completed` (scheduler and tracker) within the time budget;
- lost: recipients x channels without a final outcome in the tracker (must be 0);
- dup keys / dup addresses: idempotency keys, and addresses, the provider accepted more than
  once (must be 0; addresses catch a re-sent message under a new key);
- exact: the tracker's counters = a recount of its per-recipient rows = the provider's tally
  (of distinct keys accepted), give or take the messages in doubt, which the provider may or
  may not have accepted
  (distinct keys accepted = completed);
- other x: the bystander's completion time over its quiet time (measured in `baseline`, must
  be ≤ 2);
- recovery: from the fault's end (process back, broker back, outage over) to the main
  campaign's next settled outcome; wall: send-now to final state;
- in doubt: outcomes failed with reason `in_doubt` (a dispatcher's report of a call that may
  have reached the provider before a crash).
Some cases add their own condition (e.g. the provider cases: 0 failed). The table is printed
and written to docs/reliability.md; the exit status is non-zero if any case failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from bench.pipeline import _stack_env
from devtools.processes import ROOT, Sendout, free_port, start_sendout
from shared import topics

STACK = ROOT / "deploy" / "local" / "stack.py"
REPORT = ROOT / "docs" / "reliability.md"
SUBJECT = "Hi {{ first_name }}"
BODY = "Hello {{ first_name }} {{ last_name }}, polls open at 8:00."
CRLF_NAME = "Ann\r\nBcc: x@example.com"
POISON_BODY = "{{ 1/0 }}"
# The dispatcher's provider timeout in this suite, and how long a "hanging" provider call
# stays silent (longer, so that the client gives up first).
PROVIDER_TIMEOUT = 5.0
HANG_SECONDS = 8.0
# A provider answering in 50 ms, and 50 calls in flight per dispatcher: about 1,000 messages a
# second per dispatcher, slow enough for a fault to land mid-send and light on the cores.
PROVIDER_LATENCY_MS = 50.0
CONCURRENCY = 50
RETRY_BASE_SECONDS = 0.25
RETRY_CAP_SECONDS = 15.0
# One dispatcher alone would take this long in the scaling case: starting two more can take
# up to a minute on a loaded 2-core machine (their joining waits for the group's batches in
# flight), and the scale-down must still land mid-send (at 120 s it once did not, in CI).
SCALE_SECONDS = 180.0


def log(msg: str) -> None:
    print(f"[faults {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


# --- database and HTTP, tolerant of the faults ------------------------------------------------

class Db:
    """A fresh connection per query, retried: PostgreSQL may be restarting."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def fetch(self, sql: str, *args: Any, retry_for: float = 60.0
                    ) -> list[asyncpg.Record]:
        deadline = time.monotonic() + retry_for
        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=5)
                try:
                    return list(await conn.fetch(sql, *args))
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def val(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None


async def call(method: str, url: str, *, token: str | None = None, json_body: Any = None,
               timeout: float = 30.0, retry_for: float = 60.0  # noqa: ASYNC109
               ) -> httpx.Response:
    """One HTTP call, retried on connection errors and 5xx for up to `retry_for` seconds (a
    service may be restarting); the last answer otherwise."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + retry_for
    while True:
        try:
            async with httpx.AsyncClient(timeout=timeout) as http:
                r = await http.request(method, url, json=json_body, headers=headers)
            if r.status_code < 500 or time.monotonic() > deadline:
                return r
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


# --- campaigns -------------------------------------------------------------------------------

@dataclass
class Campaign:
    id: str
    tag: str  # in every recipient's address: the provider's tally is filtered by it
    recipients: int
    token: str
    sent_at: float = 0.0  # monotonic time of send-now
    final_at: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    state: str = ""
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, settled)

    @property
    def settled(self) -> int:
        p = self.progress
        return int(p.get("completed", 0) + p.get("failed", 0) + p.get("skipped", 0))

    @property
    def seconds(self) -> float | None:
        return None if self.final_at is None else self.final_at - self.sent_at


@dataclass
class Suite:
    sendout: Sendout
    db: Db
    kafka: str
    control: str  # the fake provider's control URL (reachable during an outage)
    tokens: dict[str, str]  # organisation → operator token
    recipients: int
    other: int
    budget: float
    outage_seconds: float
    kafka_down_seconds: float = 5.0
    quiet_other_seconds: float | None = None
    quiet_smtp_other_seconds: float | None = None

    @property
    def scheduler(self) -> str:
        return self.sendout.scheduler

    @property
    def tracker(self) -> str:
        return self.sendout.tracker

    async def new_campaign(self, org: str, n: int, *, template_id: str | None = None,
                           crlf_at: int | None = None) -> Campaign:
        token = self.tokens[org]
        tag = f"f{secrets.token_hex(4)}"
        body: dict[str, Any] = {
            "name": f"faults {tag}", "channels": ["email"],
            "sender": {"name": "Election Office", "email": "office@example.org"},
        }
        if template_id:
            body["template_id"] = template_id
        else:
            body |= {"template": BODY, "subject": SUBJECT}
        r = await call("POST", f"{self.scheduler}/campaigns", token=token, json_body=body)
        if r.status_code != 201 and r.status_code != 200:
            raise RuntimeError(f"campaign not created: {r.status_code} {r.text[:300]}")
        cid = str(r.json()["id"])
        conn = await asyncpg.connect(self.db.url)
        try:
            await conn.copy_records_to_table(
                "recipients", schema_name="scheduler",
                columns=["campaign_id", "email", "first_name", "last_name"],
                records=((uuid.UUID(cid), f"r{i}@{tag}.example.org",
                          CRLF_NAME if i == crlf_at else f"Voter{i}", "Faults")
                         for i in range(n)))
            await conn.execute("ANALYZE scheduler.recipients")
        finally:
            await conn.close()
        return Campaign(cid, tag, n, token)

    async def send_now(self, c: Campaign) -> None:
        r = await call("POST", f"{self.scheduler}/campaigns/{c.id}/send-now", token=c.token,
                       retry_for=120)
        if r.status_code != 202:
            raise RuntimeError(f"send-now refused: {r.status_code} {r.text[:300]}")
        c.sent_at = time.monotonic()

    async def poll(self, c: Campaign) -> bool:
        """Refresh progress and state; True once final (completed or aborted everywhere)."""
        try:
            r, s = await asyncio.gather(
                call("GET", f"{self.tracker}/campaigns/{c.id}/progress", token=c.token,
                     timeout=10, retry_for=0),
                call("GET", f"{self.scheduler}/campaigns/{c.id}", token=c.token,
                     timeout=10, retry_for=0))
        except httpx.HTTPError:
            return False
        if r.status_code == 200:
            c.progress = r.json()
            c.samples.append((time.monotonic(), c.settled))
        if s.status_code == 200:
            c.state = s.json().get("state", "")
        final = (c.state in ("completed", "aborted") and c.progress.get("pending") == 0
                 and c.progress.get("state") in ("completed", "aborted"))
        if final and c.final_at is None:
            c.final_at = time.monotonic()
        return final

    async def poll_all(self, campaigns: list[Campaign]) -> bool:
        return all(await asyncio.gather(*(self.poll(c) for c in campaigns)))

    async def wait_settled(self, c: Campaign, fraction: float, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.poll(c) or c.settled >= fraction * c.recipients:
                return True
            await asyncio.sleep(0.2)
        return False

    async def provider_config(self, **body: Any) -> None:
        r = await call("POST", f"{self.control}/config", json_body=body)
        r.raise_for_status()

    async def tally(self, c: Campaign, smtp: bool = False) -> dict[str, Any]:
        base = self.sendout.smtp if smtp else self.control
        r = await call("GET", f"{base}/tally?to_contains={c.tag}.&full=1", timeout=60)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out


# --- one case --------------------------------------------------------------------------------

@dataclass
class Ctx:
    """What a case's fault step sees and sets."""

    suite: Suite
    main: Campaign
    fault_end: float | None = None
    notes: list[str] = field(default_factory=list)
    extra_failures: list[str] = field(default_factory=list)
    smtp: bool = False
    other_check: bool = True
    allow_failed: bool = True
    extra_campaigns: list[Campaign] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    # In-doubt outcomes allowed: 0 unless a dispatcher crashed; then the calls it had in
    # flight (its provider-call slots).
    max_in_doubt: int = 0


@dataclass
class Case:
    name: str
    what: str
    fault: Callable[[Ctx], Awaitable[None]]
    before: Callable[[Suite], Awaitable[dict[str, Any]]] | None = None
    extra_budget: Callable[[Suite], float] = lambda s: 0.0
    # Checks of its own once the campaigns are final (or the budget is spent).
    after: Callable[[Ctx], Awaitable[None]] | None = None


@dataclass
class Result:
    case: str
    ok: bool
    final: bool
    lost: int
    dup_keys: int
    dup_repeats: int
    dup_addresses: int
    exact: bool
    other_ratio: float | None
    recovery: float | None
    wall: float | None
    in_doubt: int
    failed: int
    failures: list[str]
    notes: list[str]
    detail: dict[str, Any]


async def run_case(suite: Suite, case: Case) -> Result:
    log(f"case {case.name}: {case.what}")
    for base in (suite.control, suite.sendout.smtp):
        (await call("POST", f"{base}/reset")).raise_for_status()
    await suite.provider_config(error_500=0, error_429=0, hang=0, outage=None, seed=12,
                                latency_ms=PROVIDER_LATENCY_MS)
    setup = await case.before(suite) if case.before else {}
    main = await suite.new_campaign("faults", suite.recipients, **setup.get("main", {}))
    other = await suite.new_campaign("bystander", suite.other)
    ctx = Ctx(suite, main)
    ctx.setup = setup
    ctx.extra_campaigns = setup.get("extra", [])
    ctx.notes += setup.get("notes", [])
    t0 = time.monotonic()
    budget = suite.budget + case.extra_budget(suite)
    await suite.send_now(main)
    for extra in ctx.extra_campaigns:
        await suite.send_now(extra)
    fault_error: str | None = None
    try:
        async with asyncio.timeout(budget):
            await case.fault(ctx)
    except TimeoutError:
        fault_error = "the fault step did not finish within the budget"
    except Exception as exc:  # the case fails with what happened; the suite goes on
        fault_error = f"fault step: {type(exc).__name__}: {exc}"
    if ctx.fault_end is None:
        ctx.fault_end = time.monotonic()
    await suite.poll(main)
    settled_at_end = main.settled
    # The other organisation's campaign starts at the same point of the main one in every case
    # (its records queue behind what is left of the main campaign's): once the fault is in
    # place or over, and the main campaign 20% settled (if it gets there soon).
    await suite.wait_settled(main, 0.2, min(60.0, budget / 3))
    await suite.send_now(other)
    campaigns = [main, other, *ctx.extra_campaigns]
    deadline = t0 + budget
    while time.monotonic() < deadline:
        if await suite.poll_all(campaigns):
            break
        await asyncio.sleep(0.1)
    if case.after is not None:
        try:
            await case.after(ctx)
        except Exception as exc:
            ctx.extra_failures.append(f"after-check: {type(exc).__name__}: {exc}")
    result = await measure(suite, case, ctx, campaigns, settled_at_end, fault_error)
    if not result.final:
        await abort_leftovers(suite, campaigns)
    return result


async def measure(suite: Suite, case: Case, ctx: Ctx, campaigns: list[Campaign],
                  settled_at_end: int, fault_error: str | None) -> Result:
    main, other = campaigns[0], campaigns[1]
    failures: list[str] = []
    if fault_error:
        failures.append(fault_error)
    final = all(c.final_at is not None for c in campaigns)
    if not final:
        for c in campaigns:
            if c.final_at is None:
                p = c.progress
                failures.append(
                    f"{'main' if c is main else 'other' if c is other else 'extra'} campaign "
                    f"not final: state {c.state or '?'}, tracker {p.get('state')}, "
                    f"pending {p.get('pending')}, settled {c.settled}/{c.recipients}")
    lost = 0
    dup_keys = dup_repeats = dup_addresses = 0
    detail: dict[str, Any] = {}
    exact = True
    for c in campaigns:
        cid = uuid.UUID(c.id)
        rows = {r["status"]: r["n"] for r in await suite.db.fetch(
            "SELECT status, count(*) n FROM tracker.recipient_outcomes "
            "WHERE campaign_id = $1 GROUP BY status", cid)}
        counters = await suite.db.fetch(
            "SELECT coalesce(sum(completed), 0) completed, coalesce(sum(failed), 0) failed, "
            "coalesce(sum(skipped), 0) skipped, coalesce(sum(total), 0) total "
            "FROM tracker.campaign_channels WHERE campaign_id = $1", cid)
        count = dict(counters[0])
        recount = {s: int(rows.get(s, 0)) for s in ("completed", "failed", "skipped")}
        tally = await suite.tally(c, smtp=ctx.smtp)
        addresses: dict[str, int] = {}
        for _key, to, n in tally["per_key"]:
            addresses[to] = addresses.get(to, 0) + n
        c_lost = c.recipients - sum(recount.values())
        lost += max(0, c_lost)
        dup_keys += tally["keys_accepted_more_than_once"]
        dup_repeats += tally["repeated_acceptances"]
        dup_addresses += sum(1 for n in addresses.values() if n > 1)
        # A message in doubt (its process died mid-call) may or may not have reached the
        # provider: the provider's tally lies between what was completed and that plus the
        # messages in doubt.
        c_doubt = int((await suite.db.fetch(
            "SELECT count(*) n FROM tracker.recipient_outcomes WHERE campaign_id = $1 "
            "AND status = 'failed' AND reason LIKE 'in\\_doubt%'", cid))[0]["n"])
        c_exact = (all(int(count[s]) == recount[s] for s in recount)
                   and recount["completed"] <= tally["keys"] <= recount["completed"] + c_doubt)
        if not c_exact:
            exact = False
            failures.append(
                f"counters not exact for {c.tag}: counters "
                f"{ {s: int(count[s]) for s in recount} }, recount {recount}, "
                f"provider keys {tally['keys']} (accepted {tally['accepted']})")
        if c_lost:
            failures.append(f"{c_lost} of {c.recipients} without a final outcome ({c.tag})")
        detail[c.tag] = {"recount": recount, "tally_keys": tally["keys"],
                         "tally_accepted": tally["accepted"],
                         "repeated_sample": dict(list(tally["repeated"].items())[:5])}
    if dup_keys or dup_addresses:
        failures.append(f"provider accepted {dup_keys} keys more than once "
                        f"({dup_repeats} repeats), {dup_addresses} addresses more than once")
    failed_reasons: dict[str, int] = main.progress.get("reasons", {}).get("failed", {})
    in_doubt = sum(n for r, n in failed_reasons.items() if r.startswith("in_doubt"))
    failed = int(main.progress.get("failed", 0))
    if in_doubt > ctx.max_in_doubt:
        failures.append(f"{in_doubt} in doubt, more than the {ctx.max_in_doubt} calls that "
                        "can have been in flight")
    if not ctx.allow_failed and failed:
        top = sorted(failed_reasons.items(), key=lambda kv: -kv[1])[:3]
        failures.append(f"{failed} failed (expected 0): {top}")
    ratio = None
    quiet_time = suite.quiet_smtp_other_seconds if ctx.smtp else suite.quiet_other_seconds
    if case.name in ("baseline", "baseline-smtp"):
        quiet_time = None  # the reference itself
    if other.seconds is not None and quiet_time:
        ratio = other.seconds / quiet_time
        if ctx.other_check and ratio > 2.0:
            failures.append(f"other organisation took {other.seconds:.1f} s, "
                            f"{ratio:.1f}x its quiet {quiet_time:.1f} s")
    if not ctx.other_check:
        ctx.notes.append("other organisation's time not judged (it shares the broken part)")
    recovery = None
    fault_end = ctx.fault_end or main.sent_at
    if (main.final_at is not None and main.final_at <= fault_end) or (
            settled_at_end >= main.recipients):
        recovery = 0.0  # nothing was left to recover
    else:
        after = [t for t, s in main.samples if t > fault_end and s > settled_at_end]
        recovery = (after[0] - fault_end) if after else None
    failures += ctx.extra_failures
    detail["other_seconds"] = other.seconds
    result = Result(
        case=case.name, ok=not failures, final=final, lost=lost, dup_keys=dup_keys,
        dup_repeats=dup_repeats, dup_addresses=dup_addresses, exact=exact,
        other_ratio=ratio, recovery=recovery, wall=main.seconds, in_doubt=in_doubt,
        failed=failed, failures=failures, notes=ctx.notes, detail=detail)
    log(f"case {case.name}: {'PASS' if result.ok else 'FAIL'} — final {final}, lost {lost}, "
        f"dup keys {dup_keys} ({dup_repeats} repeats), dup addresses {dup_addresses}, "
        f"exact {exact}, other x {_f(ratio)}, recovery {_f(recovery)} s, "
        f"wall {_f(main.seconds)} s, in doubt {in_doubt}, failed {failed}")
    for line in failures:
        log(f"  ✗ {line}")
    for line in ctx.notes:
        log(f"  · {line}")
    return result


async def abort_leftovers(suite: Suite, campaigns: list[Campaign]) -> None:
    """A case that did not finish must not hold up the next: abort what is still sending."""
    for c in campaigns:
        if c.final_at is None:
            r = await call("POST", f"{suite.scheduler}/campaigns/{c.id}/abort", token=c.token,
                           timeout=60, retry_for=10)
            log(f"  aborted leftover {c.tag}: {r.status_code}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if await suite.poll_all(campaigns):
            return
        await asyncio.sleep(1)
    log("  leftovers still not final after abort; the next cases may be affected")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


# --- the faults ------------------------------------------------------------------------------

def _procs(suite: Suite, prefix: str) -> list[str]:
    return [p.name for p in suite.sendout.processes.procs
            if p.name.startswith(prefix) and p.popen.poll() is None]


async def ensure_dispatchers(suite: Suite, n: int, env: dict[str, str] | None = None) -> None:
    """Exactly n running dispatchers (graceful stop of extra ones; new ones started together
    and healthy on return), new ones started with `env`."""
    procs = suite.sendout.processes
    running = _procs(suite, "dispatcher")
    for name in running[n:]:
        await asyncio.to_thread(procs.terminate, name)
    for p in list(procs.procs):
        if p.name.startswith("dispatcher") and p.popen.poll() is not None:
            procs.procs.remove(p)
            procs.stopped.discard(p.name)
    for _ in range(n - len(running)):
        port = free_port()
        procs.start(f"dispatcher-{secrets.token_hex(3)}", ["-m", "services.dispatcher"],
                    {**suite.sendout.env, **(env or {}), "SENDOUT_HTTP_PORT": str(port)}, port)
    await asyncio.to_thread(procs.wait_healthy)


async def quiet(ctx: Ctx) -> None:
    await ctx.suite.wait_settled(ctx.main, 0.2, ctx.suite.budget)


async def kill_dispatcher(ctx: Ctx) -> None:
    await ctx.suite.wait_settled(ctx.main, 0.2, ctx.suite.budget)
    name = _procs(ctx.suite, "dispatcher")[0]
    ctx.suite.sendout.processes.kill(name)
    ctx.max_in_doubt = CONCURRENCY
    log(f"  kill -9 {name} at {ctx.main.settled}/{ctx.main.recipients}")
    await asyncio.sleep(2)
    await asyncio.to_thread(ctx.suite.sendout.processes.restart, name)
    ctx.fault_end = time.monotonic()


async def two_dispatchers(suite: Suite) -> dict[str, Any]:
    await ensure_dispatchers(suite, 2)
    await asyncio.sleep(5)  # the group settles before the campaign starts
    return {}


async def kill_tracker(ctx: Ctx) -> None:
    await ctx.suite.wait_settled(ctx.main, 0.3, ctx.suite.budget)
    ctx.suite.sendout.processes.kill("tracker")
    log(f"  kill -9 tracker at {ctx.main.settled}/{ctx.main.recipients}")
    await asyncio.sleep(2)
    await asyncio.to_thread(ctx.suite.sendout.processes.restart, "tracker")
    ctx.fault_end = time.monotonic()


async def kill_scheduler(ctx: Ctx) -> None:
    """kill -9 as soon as the fan-out has published a page (of FANOUT_PAGES) but not all."""
    cid = uuid.UUID(ctx.main.id)
    conn = await asyncpg.connect(ctx.suite.db.url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = await conn.fetchrow(
                "SELECT fanout_after_id, fanout_done FROM scheduler.campaigns WHERE id = $1",
                cid)
            if state["fanout_after_id"] > 0 or state["fanout_done"]:
                break
            await asyncio.sleep(0.005)
        ctx.suite.sendout.processes.kill("scheduler")
        after = await conn.fetchrow(
            "SELECT fanout_after_id, fanout_done, "
            "(SELECT count(*) FROM scheduler.recipients r WHERE r.campaign_id = c.id "
            " AND r.id <= c.fanout_after_id) AS published "
            "FROM scheduler.campaigns c WHERE id = $1", cid)
    finally:
        await conn.close()
    ctx.notes.append(f"killed with {after['published']} of {ctx.main.recipients} recipients "
                     f"fanned out (checkpoint), fanout_done {after['fanout_done']}")
    if after["fanout_done"]:
        ctx.notes.append("the fan-out had finished before the kill: not a mid-fan-out crash")
        ctx.extra_failures.append("the kill did not land mid fan-out")
    await asyncio.sleep(2)
    await asyncio.to_thread(ctx.suite.sendout.processes.restart, "scheduler")
    ctx.fault_end = time.monotonic()


async def restart_kafka(ctx: Ctx) -> None:
    ctx.other_check = False  # the broken part is every organisation's
    await ctx.suite.wait_settled(ctx.main, 0.2, ctx.suite.budget)
    log(f"  stopping Kafka at {ctx.main.settled}/{ctx.main.recipients}")
    t = time.monotonic()
    down = ctx.suite.kafka_down_seconds
    await _stack(ctx, "restart-kafka", "--down", str(down))
    ctx.notes.append(f"Kafka stop + {down:g} s down + start on the same address: "
                     f"{time.monotonic() - t:.1f} s")
    ctx.fault_end = time.monotonic()


async def restart_postgres(ctx: Ctx) -> None:
    ctx.other_check = False  # the broken part is every organisation's
    await ctx.suite.wait_settled(ctx.main, 0.2, ctx.suite.budget)
    log(f"  restarting PostgreSQL at {ctx.main.settled}/{ctx.main.recipients}")
    t = time.monotonic()
    await _stack(ctx, "restart-postgres", "--down", "2")
    ctx.notes.append(f"PostgreSQL stop + 2 s down + start: {time.monotonic() - t:.1f} s")
    ctx.fault_end = time.monotonic()


async def _stack(ctx: Ctx, *args: str) -> None:
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, str(STACK), *args],
                                   capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(f"stack.py {' '.join(args)}: {proc.stderr.strip()[-500:]}")


async def provider_errors(ctx: Ctx) -> None:
    ctx.other_check = False  # the broken part is every organisation's
    await ctx.suite.provider_config(error_500=0.2, error_429=0.05, retry_after_seconds=2,
                                    hang=0.05, hang_seconds=HANG_SECONDS)
    ctx.allow_failed = False
    ctx.fault_end = time.monotonic()
    ctx.notes.append(f"dispatcher provider timeout {PROVIDER_TIMEOUT:g} s, hang "
                     f"{HANG_SECONDS:g} s; faults stay on until the campaign ends")


async def provider_outage(ctx: Ctx) -> None:
    ctx.other_check = False  # the broken part is every organisation's
    await ctx.suite.wait_settled(ctx.main, 0.2, ctx.suite.budget)
    await ctx.suite.provider_config(outage="refuse")
    log(f"  provider down (connections refused) for {ctx.suite.outage_seconds:g} s at "
        f"{ctx.main.settled}/{ctx.main.recipients}")
    await asyncio.sleep(ctx.suite.outage_seconds)
    await ctx.suite.provider_config(outage=None)
    ctx.allow_failed = False
    ctx.fault_end = time.monotonic()


async def crlf_setup(suite: Suite) -> dict[str, Any]:
    return {"main": {"crlf_at": suite.recipients // 2},
            "notes": [f"recipient {suite.recipients // 2}: first_name {CRLF_NAME!r}, "
                      f"subject {SUBJECT!r}"]}


async def crlf_fault(ctx: Ctx) -> None:
    ctx.fault_end = time.monotonic()


async def crlf_smtp_setup(suite: Suite) -> dict[str, Any]:
    # Email over SMTP to the sink: the same campaign, where CR/LF could become a header.
    await ensure_dispatchers(suite, 0)
    await ensure_dispatchers(suite, 1, {"SENDOUT_EMAIL_PROVIDER": "smtp"})
    return await crlf_setup(suite)


async def crlf_smtp_fault(ctx: Ctx) -> None:
    ctx.smtp = True
    ctx.fault_end = time.monotonic()


async def smtp_setup(suite: Suite) -> dict[str, Any]:
    await ensure_dispatchers(suite, 0)
    await ensure_dispatchers(suite, 1, {"SENDOUT_EMAIL_PROVIDER": "smtp"})
    return {}


async def smtp_quiet(ctx: Ctx) -> None:
    """No fault, email over SMTP: the other organisation's quiet time over SMTP, against which
    the CR/LF case over SMTP is judged (SMTP is slower than the HTTP fake)."""
    ctx.smtp = True
    await quiet(ctx)


async def crlf_smtp_after(ctx: Ctx) -> None:
    bcc = await call("GET", f"{ctx.suite.sendout.smtp}/tally?to_contains=x@example.com")
    injected = bcc.json()["accepted"]
    if injected:
        ctx.extra_failures.append(f"the sink accepted {injected} messages for the injected "
                                  "Bcc x@example.com")


async def poison_template_setup(suite: Suite) -> dict[str, Any]:
    token = suite.tokens["faults"]
    notes: list[str] = []
    r = await call("POST", f"{suite.scheduler}/templates", token=token, json_body={
        "name": "poison", "email_subject": "Hi", "email_body": POISON_BODY})
    if r.status_code == 422:
        notes.append(f"POST /templates refused {POISON_BODY!r} with 422 (pass at creation); "
                     "the template was then put in the database directly to test the send")
        r = await call("POST", f"{suite.scheduler}/templates", token=token, json_body={
            "name": "poison", "email_subject": "Hi", "email_body": "Hello"})
        r.raise_for_status()
        template_id = str(r.json()["id"])
        await suite.db.fetch("UPDATE scheduler.template_versions SET email_body = $2 "
                             "WHERE template_id = $1", uuid.UUID(template_id), POISON_BODY)
    else:
        r.raise_for_status()
        template_id = str(r.json()["id"])
        notes.append(f"POST /templates accepted {POISON_BODY!r} ({r.status_code})")
    poison = await suite.new_campaign("faults", 20, template_id=template_id)
    notes.append(f"poison campaign {poison.tag} (20 recipients) sent with the main one; its "
                 "messages must end failed (template_error), the rest unaffected")
    return {"extra": [poison], "notes": notes}


async def poison_template_fault(ctx: Ctx) -> None:
    ctx.fault_end = time.monotonic()


async def poison_records_setup(suite: Suite) -> dict[str, Any]:
    """An undecodable record and a schema-invalid event on every partition of every topic."""
    dlq_before = await dlq_records(suite.kafka)
    producer = AIOKafkaProducer(bootstrap_servers=suite.kafka, acks="all")
    await producer.start()
    admin = AIOKafkaAdminClient(bootstrap_servers=suite.kafka)
    await admin.start()
    sent = 0
    try:
        for topic in topics.ALL:
            parts = await producer.partitions_for(topic)
            for part in sorted(parts):
                for value in (b"\xff\xfe not json \x00",
                              json.dumps({"type": "sendout.nonsense", "id": 7,
                                          "campaign_id": "not-a-uuid"}).encode()):
                    await producer.send_and_wait(topic, value, key=b"poison", partition=part)
                    sent += 1
    finally:
        await producer.stop()
        await admin.close()
    return {"notes": [f"{sent} poison records on {len(topics.ALL)} topics, every partition"],
            "dlq_before": dlq_before}


async def dlq_records(kafka: str) -> dict[str, int]:
    """Records in each `<topic>.dlq` (end offsets summed over partitions; 0 if none)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka)
    producer = AIOKafkaProducer(bootstrap_servers=kafka)  # for partitions_for (metadata)
    await consumer.start()
    await producer.start()
    try:
        out: dict[str, int] = {}
        existing = await consumer.topics()
        for topic in topics.ALL:
            dlq = topics.dlq(topic)
            if dlq not in existing:
                out[dlq] = 0
                continue
            parts = [TopicPartition(dlq, p) for p in await producer.partitions_for(dlq)]
            ends = await consumer.end_offsets(parts) if parts else {}
            out[dlq] = sum(ends.values())
        return out
    finally:
        await producer.stop()
        await consumer.stop()


async def poison_records_after(ctx: Ctx) -> None:
    before = ctx.setup.get("dlq_before", {})
    after = await dlq_records(ctx.suite.kafka)
    got = {t: after[t] - before.get(t, 0) for t in after}
    ctx.notes.append("dead-lettered: " + ", ".join(f"{t} +{n}" for t, n in got.items()))


async def poison_records_fault(ctx: Ctx) -> None:
    ctx.fault_end = time.monotonic()


async def scale_dispatchers(ctx: Ctx) -> None:
    s = ctx.suite
    # Slower provider answers for this case, so that 1 → 3 → 1 happens mid-send at any size.
    # One dispatcher would take about SCALE_SECONDS: time for two more to start (20-60 s on a
    # busy machine), join, and leave again before the end.
    latency = max(PROVIDER_LATENCY_MS, SCALE_SECONDS * 1000 * CONCURRENCY / s.recipients)
    await s.provider_config(latency_ms=latency)
    # The slower provider is every organisation's: the other one's quiet time (at 50 ms) is no
    # reference here.
    ctx.other_check = False
    ctx.notes.append(f"provider latency {latency:g} ms in this case")
    await s.wait_settled(ctx.main, 0.15, s.budget)
    log(f"  scaling 1 → 3 at {ctx.main.settled}/{ctx.main.recipients}")
    t = time.monotonic()
    await ensure_dispatchers(s, 3)
    ctx.notes.append(f"two dispatchers started at {ctx.main.settled}/{ctx.main.recipients}, "
                     f"healthy in {time.monotonic() - t:.1f} s")
    await s.wait_settled(ctx.main, 0.5, s.budget)
    await s.poll(ctx.main)
    log(f"  scaling 3 → 1 (SIGTERM) at {ctx.main.settled}/{ctx.main.recipients}")
    at = ctx.main.settled
    finished_before = ctx.main.final_at is not None or at >= ctx.main.recipients

    async def stop(name: str) -> str:
        t = time.monotonic()
        await asyncio.to_thread(s.sendout.processes.terminate, name)
        return f"{time.monotonic() - t:.1f} s"

    # Both at once: each drains its batch in flight before it leaves, and the campaign goes on
    # meanwhile, so one after the other could outlast the campaign.
    stops = await asyncio.gather(*(stop(name) for name in _procs(s, "dispatcher")[:2]))
    ctx.notes.append(f"two dispatchers stopped (SIGTERM) from {at}/{ctx.main.recipients}, "
                     f"taking {', '.join(stops)}")
    if finished_before:
        ctx.extra_failures.append("the campaign had finished before the scale-down")
    ctx.fault_end = time.monotonic()


def _outage_budget(s: Suite) -> float:
    return s.outage_seconds


CASES: list[Case] = [
    Case("baseline", "no fault (measures the other organisation's quiet time)", quiet),
    Case("kill-dispatcher", "kill -9 of one of 2 dispatchers at 20%", kill_dispatcher,
         before=two_dispatchers),
    Case("kill-tracker", "kill -9 of the tracker at 30%", kill_tracker),
    Case("kill-scheduler", "kill -9 of the scheduler mid fan-out", kill_scheduler),
    Case("restart-kafka", "Kafka stopped at 20%, down a while, started on the same address",
         restart_kafka),
    Case("restart-postgres", "PostgreSQL fast shutdown, down 2 s, started again",
         restart_postgres),
    Case("provider-errors", "provider: 20% 500, 5% 429 Retry-After 2 s, 5% hang past timeout",
         provider_errors, extra_budget=lambda s: 120.0),
    Case("provider-outage", "provider refuses connections for the outage, from 20%",
         provider_outage, extra_budget=_outage_budget),
    Case("scale-dispatchers", "dispatchers 1 → 3 at 15%, 3 → 1 (SIGTERM) at 50%",
         scale_dispatchers),
    Case("crlf-http", "first_name with CR/LF + Bcc into the subject; HTTP provider",
         crlf_fault, before=crlf_setup),
    Case("poison-records", "undecodable + schema-invalid record on every topic/partition",
         poison_records_fault, before=poison_records_setup, after=poison_records_after),
    Case("poison-template", f"a campaign with template {POISON_BODY!r} alongside",
         poison_template_fault, before=poison_template_setup),
    Case("baseline-smtp", "no fault, email over SMTP (the other organisation's quiet time "
         "over SMTP)", smtp_quiet, before=smtp_setup),
    Case("crlf-smtp", "the CR/LF case with email over SMTP (fake SMTP sink)",
         crlf_smtp_fault, before=crlf_smtp_setup, after=crlf_smtp_after),
]


# --- the run ---------------------------------------------------------------------------------

async def _organisation_token(sendout: Sendout, organisation: str) -> str:
    return sendout.new_user(organisation, "operator")["token"]


async def run(args: argparse.Namespace) -> list[Result]:
    env = _stack_env()
    names = args.case or [c.name for c in CASES]
    unknown = set(names) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: "
                         f"{', '.join(c.name for c in CASES)}")
    selected = [c for c in CASES if c.name in names]
    if "crlf-smtp" in names and "baseline-smtp" not in names:
        # Judged against the other organisation's quiet time over SMTP.
        selected.insert(selected.index(next(c for c in selected if c.name == "crlf-smtp")),
                        next(c for c in CASES if c.name == "baseline-smtp"))
    if selected[0].name != "baseline":
        # The other organisation's quiet time comes from the baseline: it always runs first.
        selected.insert(0, CASES[0])
    control_port = free_port()
    sendout = await asyncio.to_thread(
        start_sendout, kafka=env["KAFKA_BOOTSTRAP_SERVERS"], database_url=env["DATABASE_URL"],
        log_dir=ROOT / ".sendout" / "logs" / "faults", email_via="http",
        provider_latency_ms=PROVIDER_LATENCY_MS,
        extra_env={"SENDOUT_LOG_LEVEL": "WARNING",
                   "SENDOUT_PROVIDER_TIMEOUT_SECONDS": str(PROVIDER_TIMEOUT),
                   "SENDOUT_CONCURRENCY": str(CONCURRENCY),
                   # A shorter retry schedule than production's (1 s doubling to 300 s): with
                   # 30% of calls failing at random, some message fails 8 times in a row, and
                   # production's backoff would keep it waiting about 4 minutes.
                   "SENDOUT_RETRY_BASE_SECONDS": str(RETRY_BASE_SECONDS),
                   "SENDOUT_RETRY_CAP_SECONDS": str(RETRY_CAP_SECONDS),
                   # At least 20 pages, so that a crash can land mid fan-out at any size.
                   "SENDOUT_FANOUT_PAGE_SIZE": str(max(100, args.recipients // 20))},
        provider_args=["--control-port", str(control_port)])
    results: list[Result] = []
    try:
        suite = Suite(
            sendout=sendout, db=Db(env["DATABASE_URL"]), kafka=env["KAFKA_BOOTSTRAP_SERVERS"],
            control=f"http://127.0.0.1:{control_port}",
            tokens={"faults": sendout.token,
                    "bystander": await _organisation_token(sendout, "bystander")},
            recipients=args.recipients, other=args.other or max(250, args.recipients // 10),
            budget=args.budget_seconds or 90 + args.recipients / 40,
            outage_seconds=args.outage_seconds, kafka_down_seconds=args.kafka_down_seconds)
        for case in selected:
            t0 = time.monotonic()
            try:
                result = await run_case(suite, case)
            except Exception as exc:
                log(f"case {case.name}: could not run: {type(exc).__name__}: {exc}")
                result = Result(case.name, False, False, -1, -1, -1, -1, False, None, None,
                                None, -1, -1, [f"could not run: {type(exc).__name__}: {exc}"],
                                [], {})
            results.append(result)
            if case.name == "baseline":
                if not result.ok:
                    log("the baseline failed: the other organisation has no quiet time")
                suite.quiet_other_seconds = result.detail.get("other_seconds")
            if case.name == "baseline-smtp":
                suite.quiet_smtp_other_seconds = result.detail.get("other_seconds")
            # Back to the standard shape: one dispatcher, over HTTP.
            if case.name in ("crlf-smtp", "baseline-smtp"):
                await ensure_dispatchers(suite, 0)
            await ensure_dispatchers(suite, 1)
            log(f"case {case.name} took {time.monotonic() - t0:.0f} s")
    finally:
        await asyncio.to_thread(sendout.processes.stop)
    return results


def table(results: list[Result]) -> str:
    head = ("| case | result | final | lost | dup keys (repeats) | dup addresses | counters exact "
            "| other org x quiet | recovery s | wall s | in doubt | failed |")
    lines = [head, "|" + "---|" * 12]
    for r in results:
        lines.append(
            f"| {r.case} | {'pass' if r.ok else '**FAIL**'} | {'yes' if r.final else 'no'} "
            f"| {r.lost} | {r.dup_keys} ({r.dup_repeats}) | {r.dup_addresses} "
            f"| {'yes' if r.exact else 'no'} | {_f(r.other_ratio)} | {_f(r.recovery)} "
            f"| {_f(r.wall)} | {r.in_doubt} | {r.failed} |")
    return "\n".join(lines)


def _sections(text: str) -> dict[str, str]:
    """The report's sections by size ("## 5,000 recipients per case" ...), to keep the other
    sizes' latest runs when one size is written again."""
    found: dict[str, str] = {}
    parts = text.split("\n## ")
    for part in parts[1:]:
        title = part.split("\n", 1)[0].strip()
        if title.endswith("recipients per case"):
            found[title] = "## " + part.rstrip() + "\n"
    return found


def write_report(results: list[Result], args: argparse.Namespace, seconds: float) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    details = []
    for r in results:
        if r.failures or r.notes:
            details.append(f"- **{r.case}**")
            details += [f"  - ✗ {line}" for line in r.failures]
            details += [f"  - {line}" for line in r.notes]
    cases = "\n".join(f"- `{c.name}`: {c.what}" for c in CASES)
    size = f"{args.recipients:,} recipients per case"
    section = f"""## {size}

Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {size}
(the other organisation's campaign: {args.other or max(250, args.recipients // 10):,}),
commit `{commit}`{' (with uncommitted changes)' if dirty else ''}, {os.cpu_count()} cores,
{seconds / 60:.1f} minutes in all.

{table(results)}

Findings:

{chr(10).join(details) if details else 'Every case passed.'}
"""
    head = f"""# Reliability: the fault suite

`make faults` (50,000 recipients per case) and `./sendout faults` (5,000, run by `.ci/run`) run
mass campaigns through all services while something breaks, and check what the provider
received and what the counters say (`bench/faults.py` has the details). Rerun it after any
change to the send path; `make faults FAULTS_ARGS="--case kill-dispatcher"` runs one case
(after `baseline`). Each size's latest run has a section of its own below.

{cases}

Columns: *dup keys* — idempotency keys the provider accepted more than once (repeated
acceptances in brackets); *dup addresses* — addresses that got more than one accepted
message; *counters exact* — tracker counters = recount of per-recipient rows = distinct keys
the provider accepted (completed ≤ accepted ≤ completed + in doubt); *other org x quiet* — the
other organisation's completion time over its time in `baseline` (`baseline-smtp` for the SMTP
case): at most 2 where the fault is one organisation's own (a crash of a Sendout process, bad
input, scaling); reported, not judged, where the broken part is every organisation's (the
provider, Kafka, PostgreSQL); *recovery* — from the fault's end to the main campaign's
next settled outcome; *wall* — send-now to final state; *in doubt* — outcomes failed
`in_doubt`.
"""
    sections = _sections(REPORT.read_text() if REPORT.exists() else "")
    sections[size] = section
    ordered = sorted(sections.items(), key=lambda kv: int(kv[0].split()[0].replace(",", "")))
    text = head + "".join(f"\n{body}" for _, body in ordered)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    log(f"written {REPORT.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=50_000)
    parser.add_argument("--other", type=int, default=0,
                        help="the other organisation's recipients (default: 10%%, at least 250)")
    parser.add_argument("--case", action="append",
                        help=f"run only this case (repeatable): "
                             f"{', '.join(c.name for c in CASES)}")
    parser.add_argument("--outage-seconds", type=float, default=60.0)
    parser.add_argument("--kafka-down-seconds", type=float, default=5.0)
    parser.add_argument("--budget-seconds", type=float, default=0.0,
                        help="time budget per case (default 90 s + 1 s per 40 recipients)")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write docs/reliability.md")
    args = parser.parse_args()
    import uvloop

    t0 = time.monotonic()
    results = uvloop.run(run(args))
    print(table(results))
    if not args.no_write:
        write_report(results, args, time.monotonic() - t0)
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
