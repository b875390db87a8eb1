"""End-to-end throughput benchmark: a campaign from "Send out now" to nothing pending, next to
a bare aiokafka pipe moving the same number of messages.

    .venv/bin/python -m bench.pipeline [--recipients 1000000] [--dispatchers 1]
        [--provider noop|http|smtp] [--latency-ms 50] [--concurrency N] [--no-baseline]
        [--schedule-lag 100] [--abort] [--no-receipts] [--label NAME]

`make bench` / `make bench-quick` run it against the local stack (KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL, else `.sendout/stack.env`). Recipients are loaded by COPY straight into
`scheduler.recipients` of a campaign created through the scheduler's HTTP API (timed on its
own); the services run as real processes (`devtools.processes.start_sendout`). Figures are
printed as a table and written to `bench/results/<label>-<time>.json`. Targets are judged by
reading these figures, never by assertions.

Stages: fan-out = send-now → the scheduler's `fanout_done`; dispatch = first → last
`dispatcher.deliveries.done_at`; tracking = first → last `tracker.recipient_outcomes.recorded_at`.
Progress lag = `recorded_at - occurred_at` per outcome (outcome built in the dispatcher →
counted in the tracker's transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from devtools.processes import ROOT, Sendout, start_sendout

RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# About the size of one SendRequested record as the scheduler produces it.
PAYLOAD_BYTES = 420


def _stack_env() -> dict[str, str]:
    env: dict[str, str] = {}
    path = ROOT / ".sendout" / "stack.env"
    for line in path.read_text().splitlines() if path.exists() else []:
        if "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip()
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    if not env.get("KAFKA_BOOTSTRAP_SERVERS") or not env.get("DATABASE_URL"):
        raise SystemExit("no stack: run `./sendout stack` (or set KAFKA_BOOTSTRAP_SERVERS, "
                         "DATABASE_URL)")
    return env


# --- process figures -------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def stack_cpu_seconds() -> dict[str, float]:
    """CPU of the local Kafka broker and of PostgreSQL (postmaster, its live backends and the
    ones that exited), when this folder's stack runs them."""
    out: dict[str, float] = {}
    kafka_pid = ROOT / ".sendout" / "kafka" / "kafka.pid"
    pg_pid = ROOT / ".sendout" / "pg" / "data" / "postmaster.pid"
    try:
        out["kafka"] = cpu_seconds(int(kafka_pid.read_text().split()[0]))
    except (OSError, ValueError):
        pass
    try:
        master = int(pg_pid.read_text().split()[0])
        fields = _stat(master)
        total = (sum(int(f) for f in fields[11:15])) / CLK_TCK  # utime stime cutime cstime
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    child = _stat(int(proc.name))
                except OSError:
                    continue
                if int(child[1]) == master:
                    total += (int(child[11]) + int(child[12])) / CLK_TCK
        out["postgres"] = total
    except (OSError, ValueError):
        pass
    return out


def service_pids(sendout: Sendout) -> dict[str, int]:
    # The fake provider (an HTTP server sharing the cores) too, when it runs: its CPU is part
    # of what the 50 ms-latency variant costs on this machine, though not Sendout's.
    return {p.name: p.popen.pid for p in sendout.processes.procs
            if p.name in ("scheduler", "tracker", "fake-provider")
            or p.name.startswith("dispatcher")}


# --- bare pipe baseline ----------------------------------------------------------------------

async def _create_topics(kafka: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 8, 1) for n in names])
    finally:
        await admin.close()


async def _delete_topics(kafka: str, names: list[str]) -> None:
    """The pipe's topics go once measured: a 1M run leaves ~1 GB in them, and the disk's
    writeback of old runs' logs slowed later runs (iowait)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


def _producer(kafka: str) -> Any:
    from aiokafka import AIOKafkaProducer

    # The services' producer settings (acks=all, idempotence, linger 5 ms, 256 KiB batches).
    return AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True,
                            linger_ms=5, max_batch_size=256 * 1024)


def _consumer(kafka: str, topic: str, group: str) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(topic, bootstrap_servers=kafka, group_id=group,
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            max_partition_fetch_bytes=4 * 1024 * 1024)


async def _relay(kafka: str, src: str, dst: str, n: int) -> None:
    """Consumer group member: batch in → produce each record on → await acks → commit."""
    consumer = _consumer(kafka, src, f"{src}-relay")
    producer = _producer(kafka)
    await consumer.start()
    await producer.start()
    seen = 0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            futures = [await producer.send(dst, r.value, key=r.key)
                       for recs in batches.values() for r in recs]
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
            seen += len(futures)
    finally:
        await producer.stop()
        await consumer.stop()


def _relay_process(kafka: str, src: str, dst: str, n: int) -> None:
    import uvloop

    uvloop.run(_relay(kafka, src, dst, n))


async def bare_pipe(kafka: str, n: int) -> dict[str, float]:
    """produce n → (relay process: consume → produce) → consume n; all batched, no services."""
    tag = uuid.uuid4().hex[:8]
    src, dst = f"bench.pipe-a.{tag}", f"bench.pipe-b.{tag}"
    await _create_topics(kafka, [src, dst])
    relay = multiprocessing.get_context("spawn").Process(
        target=_relay_process, args=(kafka, src, dst, n))
    relay.start()
    sink = _consumer(kafka, dst, f"{dst}-sink")
    await sink.start()
    producer = _producer(kafka)
    await producer.start()
    await asyncio.sleep(3)  # group joins settle before the clock starts
    payload = b"x" * PAYLOAD_BYTES
    t0 = time.monotonic()

    async def produce() -> None:
        futures = []
        for i in range(n):
            futures.append(await producer.send(src, payload, key=str(i).encode()))
            if len(futures) >= 10_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)

    producing = asyncio.create_task(produce())
    got = 0
    while got < n:
        batches = await sink.getmany(timeout_ms=500, max_records=10_000)
        got += sum(len(v) for v in batches.values())
    elapsed = time.monotonic() - t0
    await producing
    await producer.stop()
    await sink.stop()
    relay.join(30)
    await _delete_topics(kafka, [src, dst])
    return {"messages": n, "seconds": round(elapsed, 2), "per_second": round(n / elapsed)}


# --- the campaign ----------------------------------------------------------------------------

async def create_campaign(http: httpx.AsyncClient, scheduler: str, channel: str) -> str:
    r = await http.post(f"{scheduler}/campaigns", json={
        "name": f"bench {channel}", "channel": channel,
        "sender": {"name": "Election Office", "email": "office@example.org",
                   "sms_sender_id": "ELECTION"},
        "subject": "Your polling station, {{ first_name }}",
        "template": "Hello {{ first_name }} {{ last_name }}, polls open at 8:00.",
    })
    r.raise_for_status()
    return str(r.json()["id"])


async def copy_recipients(database_url: str, campaign_id: str, n: int) -> float:
    """COPY n recipients into the scheduler's table; seconds taken."""
    cid = uuid.UUID(campaign_id)
    t0 = time.monotonic()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table(
            "recipients", schema_name="scheduler",
            columns=["campaign_id", "email", "phone", "first_name", "last_name"],
            records=((cid, f"voter{i}@example.org", f"+4520{i:06d}"[:12], f"Voter{i}", "Bench")
                     for i in range(n)),
        )
    finally:
        await conn.close()
    return time.monotonic() - t0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def rival_campaign(http: httpx.AsyncClient, sendout: Sendout, database_url: str,
                         channel: str, n: int, *, delay: float) -> dict[str, Any]:
    """A small campaign sent `delay` seconds after the big one was: how long it takes (send-now
    to nothing pending) while the big one's requests are queued ahead of it."""
    await asyncio.sleep(delay)
    cid = await create_campaign(http, sendout.scheduler, channel)
    await copy_recipients(database_url, cid, n)
    t0 = time.monotonic()
    (await http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")).raise_for_status()
    while True:
        r = await http.get(f"{sendout.tracker}/campaigns/{cid}/progress")
        if r.status_code == 200 and r.json()["total"] and r.json()["pending"] == 0:
            break
        await asyncio.sleep(0.05)
    return {"recipients": n, "sent_after_seconds": delay,
            "seconds": round(time.monotonic() - t0, 2)}


async def run_campaign(sendout: Sendout, database_url: str, n: int, channel: str,
                       abort_after: int | None = None, rival: int = 0) -> dict[str, Any]:
    pids = service_pids(sendout)
    async with httpx.AsyncClient(timeout=120, headers=sendout.auth) as http:
        cid = await create_campaign(http, sendout.scheduler, channel)
        copy_s = await copy_recipients(database_url, cid, n)
        db = await asyncpg.connect(database_url)
        await db.execute("ANALYZE scheduler.recipients")
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu0.update(stack_cpu_seconds())
        t0 = time.monotonic()
        wall0 = time.time()
        (await http.post(f"{sendout.scheduler}/campaigns/{cid}/send-now")).raise_for_status()
        rival_task = asyncio.create_task(rival_campaign(
            http, sendout, database_url, channel, rival, delay=3.0)) if rival else None
        fanout_s: float | None = None
        abort_answer: float | None = None
        last: dict[str, Any] = {}
        while True:
            now = time.monotonic()
            if fanout_s is None and await db.fetchval(
                    "SELECT fanout_done FROM scheduler.campaigns WHERE id = $1", uuid.UUID(cid)):
                fanout_s = now - t0
            r = await http.get(f"{sendout.tracker}/campaigns/{cid}/progress")
            if r.status_code == 200:
                last = r.json()
                done = last["completed"] + last["failed"] + last["skipped"]
                if abort_after is not None and abort_answer is None and done >= abort_after:
                    (await http.post(f"{sendout.scheduler}/campaigns/{cid}/abort")
                     ).raise_for_status()
                    abort_answer = time.time()
                if last["total"] and last["pending"] == 0:
                    break
            await asyncio.sleep(0.1)
        e2e_s = time.monotonic() - t0
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cpu1.update(stack_cpu_seconds())
        c = uuid.UUID(cid)
        disp = await db.fetchrow(
            "SELECT count(*) n, extract(epoch FROM max(done_at) - min(done_at)) s, "
            "extract(epoch FROM min(done_at)) first FROM dispatcher.deliveries "
            "WHERE campaign_id = $1", c)
        track = await db.fetchrow(
            "SELECT count(*) n, extract(epoch FROM max(recorded_at) - min(recorded_at)) s "
            "FROM tracker.recipient_outcomes WHERE campaign_id = $1", c)
        lags = [float(x) for x in await db.fetchval(
            "SELECT array_agg(extract(epoch FROM recorded_at - occurred_at)) "
            "FROM tracker.recipient_outcomes WHERE campaign_id = $1", c) or []]
        await db.close()
        result: dict[str, Any] = {
            "campaign_id": cid,
            "recipients": n,
            "copy_seconds": round(copy_s, 2),
            "copy_per_second": round(n / copy_s),
            "e2e_seconds": round(e2e_s, 2),
            "e2e_per_second": round(n / e2e_s),
            "final_progress": last,
            "stages_per_second": {
                "fanout": round(n / fanout_s) if fanout_s else None,
                "dispatch": round(disp["n"] / float(disp["s"])) if disp["s"] else None,
                "tracking": round(track["n"] / float(track["s"])) if track["s"] else None,
            },
            "stage_seconds": {
                "fanout": round(fanout_s, 2) if fanout_s else None,
                "first_dispatch_after_send_now": round(float(disp["first"]) - wall0, 2)
                if disp["first"] else None,
                "dispatch": round(float(disp["s"] or 0), 2),
                "tracking": round(float(track["s"] or 0), 2),
            },
            "progress_lag_seconds": {"p50": round(_pct(lags, 0.5), 3),
                                     "p99": round(_pct(lags, 0.99), 3),
                                     "max": round(max(lags), 3) if lags else None},
            "peak_rss_mib": {name: round(peak_rss_mib(pid), 1) for name, pid in pids.items()},
            "cpu_seconds_per_1k": {name: round((cpu1[name] - cpu0[name]) / n * 1000, 3)
                                   for name in cpu1 if name in cpu0},
        }
        if abort_answer is not None:
            result["abort"] = await abort_figures(http, sendout, abort_answer)
        if rival_task is not None:
            result["rival"] = await rival_task
        return result


async def abort_figures(http: httpx.AsyncClient, sendout: Sendout,
                        answered: float) -> dict[str, Any]:
    """Time from the abort's answer to the last provider call (the fake provider's log)."""
    assert sendout.provider
    total = (await http.get(f"{sendout.provider}/stats")).json()["requests"]
    tail = (await http.get(f"{sendout.provider}/requests",
                           params={"offset": max(0, total - 20_000), "limit": 20_000})).json()
    last_call = max(r["at"] for r in tail["requests"]) if tail["requests"] else answered
    return {"provider_calls": total,
            "last_call_after_answer_seconds": round(last_call - answered, 3)}


async def schedule_lag(sendout: Sendout, database_url: str, campaigns: int) -> dict[str, Any]:
    """`campaigns` small campaigns all due at the same second: started_at - scheduled_for."""
    async with httpx.AsyncClient(timeout=60, headers=sendout.auth) as http:
        ids = [await create_campaign(http, sendout.scheduler, "email") for _ in range(campaigns)]
        for cid in ids:
            await copy_recipients(database_url, cid, 10)
        at = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
        for cid in ids:
            (await http.post(f"{sendout.scheduler}/campaigns/{cid}/schedule",
                             json={"at": at.isoformat()})).raise_for_status()
        lags: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            views = [(await http.get(f"{sendout.scheduler}/campaigns/{cid}")).json()
                     for cid in ids]
            if all(v.get("started_at") for v in views):
                lags = [(datetime.fromisoformat(v["started_at"])
                         - datetime.fromisoformat(v["scheduled_for"])).total_seconds()
                        for v in views]
                break
            await asyncio.sleep(0.5)
    return {"campaigns": campaigns, "started": len(lags),
            "p50": round(_pct(lags, 0.5), 3), "p99": round(_pct(lags, 0.99), 3),
            "max": round(max(lags), 3) if lags else None}


# --- main ------------------------------------------------------------------------------------

def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    if "campaign" in result:
        c = result["campaign"]
        rows += [
            ("recipients", f"{c['recipients']:,}"),
            ("COPY load", f"{c['copy_seconds']} s ({c['copy_per_second']:,}/s)"),
            ("end to end", f"{c['e2e_seconds']} s → {c['e2e_per_second']:,} recipients/s"),
        ]
        if "baseline" in result:
            b = result["baseline"]
            rows += [("bare aiokafka pipe", f"{b['seconds']} s → {b['per_second']:,} msg/s"),
                     ("ratio e2e / pipe", f"{result['ratio']:.2f}")]
        for stage, v in c["stages_per_second"].items():
            rows.append((f"stage {stage}", f"{v:,}/s" if v else "-"))
        lag = c["progress_lag_seconds"]
        rows.append(("progress lag p50 / p99", f"{lag['p50']} s / {lag['p99']} s"))
        for name, v in c["peak_rss_mib"].items():
            rows.append((f"peak RSS {name}", f"{v} MiB"))
        for name, v in c["cpu_seconds_per_1k"].items():
            rows.append((f"CPU s / 1k {name}", f"{v}"))
        if "abort" in c:
            rows.append(("abort answer → last provider call",
                         f"{c['abort']['last_call_after_answer_seconds']} s"))
        if "rival" in c:
            rows.append((f"rival of {c['rival']['recipients']:,}: alone / sent 3 s in",
                         f"{result['rival_alone']['seconds']} s / {c['rival']['seconds']} s"))
    if "schedule_lag" in result:
        s = result["schedule_lag"]
        rows.append((f"schedule lag ({s['campaigns']} due together) p50 / p99",
                     f"{s['p50']} s / {s['p99']} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _start_smtp_sink() -> tuple[subprocess.Popen[bytes], int]:
    """Postfix's smtp-sink on a free loopback port (`apt-get install postfix`)."""
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(sink):
        raise SystemExit("smtp-sink not found: apt-get install postfix")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("smtp-sink did not start")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = _stack_env()
    kafka, database_url = env["KAFKA_BOOTSTRAP_SERVERS"], env["DATABASE_URL"]
    result: dict[str, Any] = {"args": vars(args), "started": datetime.now(UTC).isoformat(),
                              "nproc": os.cpu_count()}
    extra_env = {"SENDOUT_LOG_LEVEL": "WARNING"}
    if args.concurrency:
        extra_env["SENDOUT_CONCURRENCY"] = str(args.concurrency)
    http_provider = args.provider == "http" or args.abort
    sink = None
    if args.provider == "smtp":
        # Email over SMTP to Postfix's smtp-sink (a real, fast SMTP server on this machine).
        sink, sink_port = _start_smtp_sink()
        extra_env.update({"SENDOUT_EMAIL_PROVIDER": "smtp", "SENDOUT_SMS_PROVIDER": "noop",
                          "SENDOUT_SMTP_HOST": "127.0.0.1", "SENDOUT_SMTP_PORT": str(sink_port)})
    elif not http_provider:
        extra_env["SENDOUT_EMAIL_PROVIDER"] = "noop"
        extra_env["SENDOUT_SMS_PROVIDER"] = "noop"
    sendout = start_sendout(
        kafka=kafka, database_url=database_url, log_dir=ROOT / ".sendout" / "logs" / "bench",
        use_fakes=http_provider, provider_latency_ms=args.latency_ms,
        dispatchers=args.dispatchers, extra_env=extra_env,
    )
    try:
        if args.no_receipts and sendout.provider:
            # The fake posts no delivery receipts: what the provider's latency alone costs.
            async with httpx.AsyncClient() as http:
                r = await http.post(f"{sendout.provider}/config", json={"receipts_url": None})
                r.raise_for_status()
        if args.schedule_lag:
            result["schedule_lag"] = await schedule_lag(sendout, database_url, args.schedule_lag)
        if args.recipients:
            # SMS goes to the fake HTTP provider when one runs (email would go to the SMTP sink).
            channel = "sms" if http_provider else "email"
            if args.rival:
                async with httpx.AsyncClient(timeout=120, headers=sendout.auth) as http:
                    result["rival_alone"] = await rival_campaign(
                        http, sendout, database_url, channel, args.rival, delay=0.0)
            result["campaign"] = await run_campaign(
                sendout, database_url, args.recipients, channel,
                abort_after=args.recipients // 20 if args.abort else None, rival=args.rival)
    finally:
        sendout.processes.stop()
        if sink is not None:
            sink.terminate()
            sink.wait(5)
    if args.recipients and not args.no_baseline:
        result["baseline"] = await bare_pipe(kafka, args.recipients)
        result["ratio"] = round(result["campaign"]["e2e_per_second"]
                                / result["baseline"]["per_second"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--provider", choices=["noop", "http", "smtp"], default="noop")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--schedule-lag", type=int, default=0, metavar="CAMPAIGNS")
    parser.add_argument("--abort", action="store_true",
                        help="abort after 5%% of the recipients have an outcome (http provider)")
    parser.add_argument("--no-receipts", action="store_true",
                        help="the fake HTTP provider posts no delivery receipts")
    parser.add_argument("--rival", type=int, default=0, metavar="RECIPIENTS",
                        help="also send a campaign of this many recipients 3 s into the big "
                        "one (and once alone before it): its time to complete")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(main_async(args))
    print(table(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    label = args.label or f"{args.provider}-{args.recipients}-d{args.dispatchers}"
    path = RESULTS / f"{label}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
