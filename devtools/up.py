"""`./sendout up`: the whole of Sendout on this machine — Kafka, PostgreSQL, the three services,
fake email/SMS providers and the console — with a demo organisation, a demo user who signs in
with a password, and sample voters, senders, templates and campaigns. Runs until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from devtools.processes import ROOT, Sendout, start_sendout

DEMO_ORGANISATION = "Demo Election Office"
DEMO_USER = "demo"
DEMO_EMAIL = "demo@example.org"
DEMO_PASSWORD = "sendout-demo"
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret",
         "Niklaus", "Radia", "Tim", "Sophie", "John", "Katherine", "Dennis", "Hedy", "Linus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
        "Hamilton", "Wirth", "Perlman", "Berners-Lee", "Wilson", "Backus", "Johnson"]


@dataclass(frozen=True)
class Demo:
    organisation: str
    login: str
    password: str
    user: dict[str, str]
    token: str
    sender_id: str
    template_id: str
    list_id: str


def create_person(sendout: Sendout, organisation: str, name: str, password: str,
                  email: str | None = None) -> dict[str, str]:
    """A user who can sign in to the console (admin API), known to the tracker on return."""
    body: dict[str, Any] = {"organisation": organisation, "name": name, "password": password}
    if email:
        body["email"] = email
    r = httpx.post(f"{sendout.scheduler}/admin/users", json=body,
                   headers={"X-Sendout-Admin-Token": sendout.admin_token}, timeout=30)
    r.raise_for_status()
    user: dict[str, str] = r.json()
    sendout.wait_token_known(user["token"])
    return user


def voters_csv(n: int) -> str:
    lines = ["external_id,first_name,last_name,email,phone,city"]
    for i in range(n):
        first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
        email = f"{first}.{last}.{i}@example.org".lower() if i % 10 != 9 else ""
        phone = f"+45{30100000 + i}" if i % 7 != 6 else ""  # valid Danish mobiles
        lines.append(f"v{i},{first},{last},{email},{phone},Aarhus")
    return "\n".join(lines) + "\n"


def seed(sendout: Sendout, *, organisation: str = DEMO_ORGANISATION, name: str = DEMO_USER,
         password: str = DEMO_PASSWORD, email: str | None = DEMO_EMAIL,
         voters: int = 200) -> Demo:
    user = create_person(sendout, organisation, name, password, email)
    h = {"Authorization": f"Bearer {user['token']}"}
    s = sendout.scheduler

    def post(path: str, **kwargs: Any) -> Any:
        r = httpx.post(f"{s}{path}", headers={**h, **kwargs.pop("headers", {})}, timeout=60,
                       **kwargs)
        r.raise_for_status()
        return r.json()

    def first(path: str, key: str, name: str) -> str | None:
        r = httpx.get(f"{s}{path}", headers=h, timeout=60)
        r.raise_for_status()
        return next((x["id"] for x in r.json()[key] if x["name"] == name), None)

    list_id = first("/lists", "lists", "Aarhus volunteers")
    if list_id is not None:  # seeded before (the same database): use what is there
        return Demo(organisation, name, password, user, user["token"],
                    str(first("/senders", "senders", "Election Office")),
                    str(first("/templates", "templates", "Polling reminder")), list_id)
    sender = post("/senders", json={"name": "Election Office", "email": "office@example.org",
                                    "sms_sender_id": "Election"})
    template = post("/templates", json={
        "name": "Polling reminder", "email_subject": "Your polling station, {{ first_name }}",
        "email_body": "Dear {{ first_name }} {{ last_name }},\n\nYour polling station in "
                      "{{ city }} is open 8:00-20:00.",
        "sms_body": "Hi {{ first_name }}, polls in {{ city }} are open 8-20."})
    post("/templates", json={"name": "Thank you", "email_subject": "Thank you",
                             "email_body": "Thank you for voting, {{ first_name }}.",
                             "sms_body": "Thank you for voting, {{ first_name }}."})
    the_list = post("/lists", json={"name": "Aarhus volunteers"})
    post(f"/lists/{the_list['id']}/voters.csv", content=voters_csv(voters),
         headers={"Content-Type": "text/csv"})
    return Demo(organisation, name, password, user, user["token"], sender["id"],
                template["id"], the_list["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("SENDOUT_CONSOLE_PORT",
                                                                       "8080")))
    parser.add_argument("--voters", type=int, default=200)
    args = parser.parse_args()
    kafka, dsn = os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"]
    print("starting the services, the fake providers and the console ...", flush=True)
    sendout = start_sendout(kafka=kafka, database_url=dsn, log_dir=ROOT / ".sendout" / "up",
                            email_via="http", console=True, console_port=args.port,
                            provider_latency_ms=20)
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        seed(sendout, voters=args.voters)
        print(f"""
Sendout is running.

  Console:   {sendout.console}
  Sign in:   {DEMO_USER} (or {DEMO_EMAIL}) / password {DEMO_PASSWORD}
  APIs:      scheduler {sendout.scheduler} · tracker {sendout.tracker}
  Messages:  the fake provider records them: {sendout.provider}/requests
  Logs:      .sendout/up/

Press Ctrl-C to stop.""", flush=True)
        while not stop:
            time.sleep(0.5)
            for proc in sendout.processes.procs:
                if proc.popen.poll() is not None:
                    print(f"{proc.name} exited:\n{proc.tail()}", file=sys.stderr)
                    stop = True
    finally:
        print("stopping ...", flush=True)
        sendout.processes.stop()


if __name__ == "__main__":
    main()
