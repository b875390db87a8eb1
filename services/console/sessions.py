"""Server-side sessions: the browser holds only a random id (HttpOnly, SameSite=Lax cookie);
the user's API token and the CSRF token stay here. In memory: a restart signs everyone out."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "sendout_session"


@dataclass
class Session:
    id: str
    token: str
    user_id: str
    name: str
    organisation: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_seen: float = 0.0
    # Messages for the next page shown ("Sent", an error), then dropped.
    flashes: list[tuple[str, str]] = field(default_factory=list)
    # A rejected CSV upload's per-row errors, shown once on the campaign page.
    csv_errors: list[dict[str, object]] = field(default_factory=list)

    def flash(self, kind: str, text: str) -> None:
        self.flashes.append((kind, text))

    def take_flashes(self) -> list[tuple[str, str]]:
        taken, self.flashes = self.flashes, []
        return taken

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented or "", self.csrf)


class FailedSignIns:
    """Failed sign-ins per browser address: at most `limit` in a sliding `window` (seconds).
    The scheduler limits per login as well; it sees only the console's address."""

    def __init__(self, limit: int = 20, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.failures: dict[str, list[float]] = {}

    def blocked(self, client: str) -> bool:
        now = self.clock()
        recent = [t for t in self.failures.get(client, []) if now - t <= self.window]
        if recent:
            self.failures[client] = recent
        else:
            self.failures.pop(client, None)
        return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        self.failures.setdefault(client, []).append(self.clock())


class SessionStore:
    def __init__(self, idle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.sessions: dict[str, Session] = {}

    def create(self, *, token: str, user_id: str, name: str, organisation: str) -> Session:
        self._expire()
        session = Session(secrets.token_urlsafe(32), token, user_id, name, organisation,
                          last_seen=self.clock())
        self.sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self.sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen > self.idle_seconds:
            del self.sessions[session_id]
            return None
        session.last_seen = now
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self.sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s.id for s in self.sessions.values()
                    if now - s.last_seen > self.idle_seconds]:
            del self.sessions[sid]
