"""The SMTP provider alone against Postfix's smtp-sink: emails/s in one process.

    .venv/bin/python -m bench.smtp_provider [--emails 50000] [--connections 10]
        [--in-flight 500] [--client lean|aiosmtplib] [--no-pipelining]

Starts smtp-sink on a free loopback port (`apt-get install postfix`; it starts no daemon),
sends the emails through the dispatcher's provider (`send()` per message, `--in-flight` calls
at once as the dispatcher makes them), prints emails/s and the CPU seconds this process used
per 1,000 emails, and checks the sink's count equals the emails accepted. No Kafka, no
PostgreSQL: this bounds what the provider can give the end-to-end figure (`make bench
BENCH_ARGS="--provider smtp"`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import uvloop

from services.dispatcher.providers import OutgoingMessage, Provider, SmtpProvider
from services.dispatcher.providers.smtp import LeanSmtpProvider, SmtpOptions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace, port: int) -> int:
    provider: Provider
    if args.client == "lean":
        provider = LeanSmtpProvider(
            SmtpOptions("127.0.0.1", port, pipelining=not args.no_pipelining),
            connections=args.connections)
    else:
        provider = SmtpProvider("127.0.0.1", port, connections=args.connections, timeout=30)
    body = ("Dear voter,\n\nYour polling station is open from 8am to 8pm at the town hall.\n"
            "Bring a proof of identity.\n\n-- The election office\n")
    counter = iter(range(args.emails))
    accepted = failed = 0

    async def worker() -> None:
        nonlocal accepted, failed
        for n in counter:
            message = OutgoingMessage("email", f"voter{n}@example.org",
                                      "Election office <office@example.org>",
                                      "Your polling station", body, f"bench-{n}")
            try:
                await provider.send(message)
                accepted += 1
            except Exception:  # counted and reported below
                failed += 1

    cpu, start = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.in_flight)))
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    await provider.close()
    print(f"client={args.client} pipelining={not args.no_pipelining} "
          f"connections={args.connections} in_flight={args.in_flight}")
    print(f"{accepted} accepted, {failed} failed in {elapsed:.2f} s: "
          f"{accepted / elapsed:,.0f} emails/s; "
          f"{cpu / max(accepted, 1) * 1e6:.0f} µs CPU per email in this process")
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--client", choices=["lean", "aiosmtplib"], default="lean")
    parser.add_argument("--no-pipelining", action="store_true")
    args = parser.parse_args()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(sink):
        raise SystemExit("smtp-sink not found: apt-get install postfix")
    port = _free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    # Its counters go to a file: a pipe nobody reads while we send would fill and stall it.
    counters = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sink, *user, "-c", f"127.0.0.1:{port}", "1024"],
                            stdout=counters)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        accepted = uvloop.run(run(args, port))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
    counters.seek(0)
    output = counters.read()
    # `-c` prints running counters ("sess=N quit=N mesg=N"); its last is what the sink received.
    counts = re.findall(r"mesg=(\d+)", output)
    if counts:
        received = int(counts[-1])
        print(f"smtp-sink received {received}"
              f" ({'equals' if received == accepted else 'DIFFERS FROM'} accepted)")


if __name__ == "__main__":
    main()
