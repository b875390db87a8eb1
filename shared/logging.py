"""Structured (JSON) logs: one object per line with `ts`, `level`, `service`, `logger`, `msg`,
the current trace (`trace_id`, and `campaign_id` / `event_id` / `parent_trace_id` when known,
see shared/tracing.py) and the call's `extra` fields.

Never a recipient's address or a message's content: fields named like one (`address`, `to`,
`body`, `subject`, ...) are written as "[redacted]" whoever passes them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from shared import tracing

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
REDACTED_FIELDS = frozenset({
    "address", "addresses", "to", "recipient", "recipients", "email", "phone", "body",
    "subject", "content", "text", "variables", "html",
})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = tracing.current()
        if context is not None:
            payload["trace_id"] = context.trace_id
            for name in ("campaign_id", "event_id", "parent_trace_id"):
                value = getattr(context, name)
                if value is not None:
                    payload[name] = value
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                payload[key] = "[redacted]" if key in REDACTED_FIELDS else value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FastStream gives its loggers a coloured text handler of their own, not propagated: they
    # write JSON lines like the rest.
    for name in ("faststream", "faststream.access"):
        own = logging.getLogger(name)
        own.handlers[:] = [handler]
        own.propagate = False
    # aiokafka is chatty at INFO about every rebalance step.
    logging.getLogger("aiokafka").setLevel("WARNING")
    logging.getLogger("uvicorn.access").setLevel("WARNING")
