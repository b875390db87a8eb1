"""Trace context (W3C Trace Context, OpenTelemetry's propagation format) carried across the
services, so one campaign's path can be followed in the logs of every service.

- A campaign's trace id is its campaign id (32 hex digits are exactly a trace id): whatever
  service handles a campaign's records — the scheduler's fan-out and relay, the dispatchers,
  the tracker — logs under the same `trace_id`, even for records published from the outbox
  long after the HTTP request that caused them.
- An HTTP request joins the trace of the campaign its path names (`/campaigns/{id}/...`);
  another request gets the trace of its incoming `traceparent` header, or a new one. A
  caller's own trace id, when it differs, is logged as `parent_trace_id`. Each response
  carries `traceparent`.
- Each Kafka record carries a `traceparent` header; a consumer's batch is handled (and logs)
  under the trace of its first record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

HEADER = "traceparent"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceContext:
    trace_id: str
    """32 lower-case hex digits, not all zero."""
    campaign_id: str | None = None
    event_id: str | None = None
    parent_trace_id: str | None = None

    def traceparent(self) -> str:
        """A `traceparent` for a call or record made in this context (a new span id)."""
        return f"00-{self.trace_id}-{os.urandom(8).hex()}-01"


_current: ContextVar[TraceContext | None] = ContextVar("sendout_trace", default=None)


def current() -> TraceContext | None:
    return _current.get()


def parse(value: str | bytes | None) -> str | None:
    """The trace id of a valid `traceparent` value, else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "ff" or set(m.group(2)) == {"0"} or set(m.group(3)) == {"0"}:
        return None
    return m.group(2)


def new_trace_id() -> str:
    return os.urandom(16).hex()


def campaign_trace_id(campaign_id: uuid.UUID | str) -> str:
    return uuid.UUID(str(campaign_id)).hex


@contextlib.contextmanager
def use(context: TraceContext | None) -> Iterator[TraceContext | None]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def for_campaign(campaign_id: uuid.UUID | str, **fields: Any) -> TraceContext:
    return TraceContext(campaign_trace_id(campaign_id), campaign_id=str(campaign_id), **fields)


def of_records(records: Sequence[Any]) -> TraceContext | None:
    """The trace of a consumed batch: its first record's `traceparent` (None without one)."""
    for record in records[:1]:
        for key, value in record.headers or ():
            if key == HEADER:
                trace_id = parse(value)
                if trace_id is None:
                    return None
                key = getattr(record, "key", None)
                if isinstance(key, bytes) and key.hex() == trace_id:
                    # Keyed by the campaign whose trace it carries.
                    return TraceContext(trace_id, campaign_id=str(uuid.UUID(bytes=key)))
                return TraceContext(trace_id)
    return None


def record_header(key: bytes | None, campaign_keyed: bool) -> tuple[str, bytes] | None:
    """The `traceparent` header of a record published now: on a topic keyed by campaign id,
    the campaign's trace; otherwise the current trace's (None outside any)."""
    if campaign_keyed and key is not None and len(key) == 16:
        return HEADER, f"00-{key.hex()}-{os.urandom(8).hex()}-01".encode()
    context = _current.get()
    if context is None:
        return None
    return HEADER, context.traceparent().encode()


def log_campaign(logger: logging.Logger, msg: str, campaign_id: uuid.UUID | str,
                 **extra: Any) -> None:
    """Log one line about a campaign, in its trace (whatever trace the caller is in)."""
    with use(for_campaign(campaign_id)):
        logger.info(msg, extra=extra)
