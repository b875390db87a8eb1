import os
import socket
import uuid
from typing import Literal

from pydantic import Field

from shared.settings import CommonSettings


def _instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class DispatcherSettings(CommonSettings):
    http_port: int = 8002
    # Names this process in abort acknowledgements; unique per process.
    instance_id: str = Field(default_factory=_instance_id)
    # Which adapter sends each channel. `http`: a JSON messaging API (the fake provider in tests
    # and the demo); `smtp`: an SMTP server (email only); `noop`: accept, send nothing.
    email_provider: Literal["noop", "http", "smtp"] = "noop"
    sms_provider: Literal["noop", "http"] = "noop"
    # Kept for one-setting set-ups: SENDOUT_PROVIDER=http sends both channels over HTTP.
    provider: Literal["noop", "http"] | None = None
    provider_url: str = "http://127.0.0.1:8025"
    provider_timeout_seconds: float = 10.0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_connections: int = 10
    # Provider calls in flight at once per process, and the provider's rate limit.
    concurrency: int = 200
    rate_limit_per_second: float = 0.0  # 0 = unlimited
    max_attempts: int = 3
    retry_backoff_seconds: float = 0.2
    # Kafka records per batch. A mass send-out's record holds up to the scheduler's
    # `send_batch_size` requests (100): 50 records are up to 5,000 messages.
    batch_max_records: int = 50
    # Consumers of send requests in this process (members of the dispatchers' group, each with
    # its own partitions and batch in flight), so that the CPU works on one batch while another
    # waits on PostgreSQL or Kafka. At most the topic's partitions over all processes.
    consumers: int = 2
    # Outcomes per Kafka record (`OutcomeBatch`, one campaign's) published to the tracker.
    outcome_batch_size: int = 500
    # Templates that do more than output variables are rendered in worker processes
    # (services/dispatcher/rendering.py): each message within this much CPU time, at most this
    # long, by this many workers, each limited to this much address space.
    render_time_limit_seconds: float = 0.5
    render_max_output_chars: int = 100_000
    render_workers: int = 1
    render_memory_limit_mb: int = 1024
