"""Console page-render benchmark: p50/p95 of each screen with a large organisation.

    .venv/bin/python -m bench.console_bench [--voters 100000] [--campaigns 1000] [--requests 40]

Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL (the local stack's `.sendout/stack.env` when unset;
`./sendout stack` starts it). Starts the services and the console as processes, creates an
organisation with that many voters (imported by CSV) and campaigns (drafts with one recipient,
a tenth of them sent), signs in as a person would, then fetches each screen `--requests` times
one after the other and prints the render time (request to last byte, through the console and
the APIs it calls) per screen. Stop `./sendout up` first: it would share the dispatchers' work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
import uuid
from pathlib import Path

import httpx

from devtools.processes import ROOT, start_sendout
from devtools.up import seed, voters_csv


def stack_env() -> tuple[str, str]:
    env = dict(os.environ)
    path = ROOT / ".sendout" / "stack.env"
    if ("KAFKA_BOOTSTRAP_SERVERS" not in env or "DATABASE_URL" not in env) and path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env.setdefault(k.strip(), v.strip())
    return env["KAFKA_BOOTSTRAP_SERVERS"], env["DATABASE_URL"]


async def make_campaigns(scheduler: str, token: str, sender_id: str, template_id: str,
                         n: int) -> list[str]:
    h = {"Authorization": f"Bearer {token}"}
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=scheduler, headers=h, timeout=60) as client:
        async def one(i: int) -> str:
            async with sem:
                r = await client.post("/campaigns", json={
                    "name": f"Bench campaign {i}", "channels": ["email"],
                    "sender_id": sender_id, "template_id": template_id})
                r.raise_for_status()
                cid = r.json()["id"]
                r = await client.post(f"/campaigns/{cid}/recipients", json={"recipients": [
                    {"email": f"bench{i}@example.org", "first_name": "B", "last_name": "Bench",
                     "attributes": {"city": "Aarhus"}}]})
                r.raise_for_status()
                if i % 10 == 0:
                    (await client.post(f"/campaigns/{cid}/send-now")).raise_for_status()
                return str(cid)

        return await asyncio.gather(*(one(i) for i in range(n)))


def sign_in(client: httpx.Client, login: str, password: str) -> None:
    page = client.get("/sign-in").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    r = client.post("/sign-in", data={"csrf": csrf[1], "login": login, "password": password,
                                      "next": "/campaigns"})
    assert r.status_code == 303, r.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voters", type=int, default=100_000)
    parser.add_argument("--campaigns", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    kafka, dsn = stack_env()
    run = uuid.uuid4().hex[:8]
    log_dir = Path(ROOT / ".sendout" / "bench-console")
    sendout = start_sendout(kafka=kafka, database_url=dsn, log_dir=log_dir, email_via="http",
                            console=True)
    try:
        t0 = time.monotonic()
        demo = seed(sendout, organisation=f"Bench {run}", name=f"bench-{run}",
                    password="bench-password", email=None, voters=10)
        h = {"Authorization": f"Bearer {demo.token}", "Content-Type": "text/csv"}
        r = httpx.post(f"{sendout.scheduler}/voters.csv", content=voters_csv(args.voters),
                       headers=h, timeout=600)
        r.raise_for_status()
        cids = asyncio.run(make_campaigns(sendout.scheduler, demo.token, demo.sender_id,
                                          demo.template_id, args.campaigns))
        print(f"set up {args.voters:,} voters and {args.campaigns:,} campaigns in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        assert sendout.console
        with httpx.Client(base_url=sendout.console, timeout=60) as client:
            sign_in(client, demo.login, "bench-password")
            voter = client.get("/voters?q=ada").text
            voter_id = re.search(r'href="/voters/(\d+)"', voter)
            assert voter_id
            screens: dict[str, str] = {
                "campaigns (by state)": "/campaigns",
                "campaign page (sent)": f"/campaigns/{cids[0]}",
                "campaign page (draft)": f"/campaigns/{cids[1]}",
                "create campaign": "/campaigns/new",
                "voters (first page)": "/voters",
                "voters search 'lovelace.1'": "/voters?q=lovelace.1",
                "voter page": f"/voters/{voter_id[1]}",
                "peer to peer: current": "/p2p",
                "templates and senders": "/templates",
            }
            rows: list[tuple[str, float, float]] = []
            for name, path in screens.items():
                client.get(path)  # warm
                times: list[float] = []
                for _ in range(args.requests):
                    start = time.perf_counter()
                    r = client.get(path)
                    times.append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200, (path, r.status_code)
                times.sort()
                p95 = times[min(len(times) - 1, round(0.95 * len(times)) - 1)]
                rows.append((name, statistics.median(times), p95))
        print(f"\n{'screen':<30}{'p50 ms':>10}{'p95 ms':>10}")
        for name, p50, p95 in rows:
            print(f"{name:<30}{p50:>10.1f}{p95:>10.1f}")
        print(f"\nall screens: p95 {max(p95 for _, _, p95 in rows):.1f} ms (the slowest screen's)")
    finally:
        sendout.processes.stop()


if __name__ == "__main__":
    main()
