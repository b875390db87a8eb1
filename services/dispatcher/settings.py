import os
import socket
import uuid
from typing import Literal

from pydantic import Field, SecretStr

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
    # `twilio`: a Twilio-compatible Messages API (services/dispatcher/providers/twilio.py).
    sms_provider: Literal["noop", "http", "twilio"] = "noop"
    # Failover: a chain of providers per channel, first choice first (e.g. `twilio,http`);
    # set, it replaces the single provider above. See services/dispatcher/providers/failover.py.
    email_providers: str = ""
    sms_providers: str = ""
    # A provider of a chain that failed retryably this many times within the window is
    # passed over (its share goes to the next) for `failover_pause_seconds`, then tried
    # again; a success in between forgives nothing early. 50 in 60 s: GOV.UK Notify's rule.
    failover_errors: int = 50
    failover_window_seconds: float = 60.0
    failover_pause_seconds: float = 30.0
    # Passed over at once after this many calls in a row ended in doubt (timed out) with no
    # answer in between: each leaves its message with that provider.
    failover_doubt_errors: int = 5
    # Kept for one-setting set-ups: SENDOUT_PROVIDER=http sends both channels over HTTP.
    provider: Literal["noop", "http"] | None = None
    provider_url: str = "http://127.0.0.1:8025"
    provider_timeout_seconds: float = 10.0
    # HTTP providers (`http`, `twilio`): calls in flight adapt to the provider
    # (services/dispatcher/limiter.py): from `provider_initial_concurrency`, growing while
    # latency stays flat, shrinking on 429, 503, timeouts or rising latency; never above
    # `provider_max_concurrency` (0: `concurrency`). Off: always the maximum. On by default:
    # on a virtual clock (tests/unit/test_limiter.py) it matches the fixed maximum against a
    # healthy provider (10,000/s at 50 ms from 500), a saturated dispatcher and the fault
    # suite's provider-errors mix (hung calls no longer starve it), and gets through where the
    # fixed maximum gets nothing (a provider answering 429 past its capacity).
    provider_adaptive_concurrency: bool = True
    provider_initial_concurrency: int = 50
    provider_max_concurrency: int = 0
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    # Implicit TLS from the first byte (port 465) instead of STARTTLS.
    smtp_tls: bool = False
    # Sessions kept open per dispatcher process. Ten keep smtp-sink on the loopback busy with
    # PIPELINING (two round trips a message); a distant server wants more.
    smtp_connections: int = 10
    # `lean`: services/dispatcher/providers/smtp.py (pipelining, message bytes built once);
    # `aiosmtplib`: the previous client, one round trip per command.
    smtp_client: Literal["lean", "aiosmtplib"] = "lean"
    # Off: one command per round trip even where the server offers PIPELINING.
    smtp_pipelining: bool = True
    smtp_local_hostname: str = "sendout.local"
    # Twilio (or a Twilio-compatible API at `twilio_base_url`): the account's SID and auth
    # token, the sender (`twilio_from`, or a Messaging Service), and where Twilio posts status
    # callbacks: the tracker's /providers/twilio/status as Twilio reaches it (the tracker
    # verifies them with the same auth token, SENDOUT_TWILIO_AUTH_TOKEN).
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_status_callback: str | None = None
    # Provider calls in flight at once per process (also what a crash of the process can leave
    # in doubt at most), and the provider's rate limit. 500: 10,000 messages a second from a
    # provider answering in 50 ms.
    concurrency: int = 500
    rate_limit_per_second: float = 0.0  # 0 = unlimited
    # The retry schedule: a retryable failure is tried again after base · 2^(attempt-1)
    # seconds (capped, jittered 0.5-1.5x, at least the provider's Retry-After) until the
    # deadline after the first attempt; then it fails with the last reason.
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 300.0
    retry_deadline_seconds: float = 4 * 3600.0
    # A provider whose calls fail retryably (at least `breaker_failure_ratio` of at least
    # `breaker_min_calls` calls within `breaker_window_seconds`) is paused: its messages wait on
    # the retry schedule, and one probe call after `breaker_open_seconds` (doubling up to
    # `breaker_max_open_seconds`) decides when sends resume.
    breaker_window_seconds: float = 10.0
    breaker_min_calls: int = 20
    breaker_failure_ratio: float = 0.5
    breaker_open_seconds: float = 2.0
    breaker_max_open_seconds: float = 30.0
    # A claim (a provider call that may have started) is refreshed by its owner while it
    # works; one older than this was left by a process that died mid-call.
    claim_lease_seconds: float = 15.0
    # A message whose call may have reached the provider when its process died is reported
    # failed `in_doubt` (never a second message to a voter). True: send it again with the same
    # idempotency key, for providers that honour it.
    resend_in_doubt: bool = False
    # Batches' registrations, Kafka positions and claims are kept this long (a redelivery can
    # only come while Kafka still holds the records: its default retention is 7 days).
    claim_retention_hours: float = 168.0
    # How long a rebalance or a stop waits for a batch in flight to settle.
    drain_seconds: float = 25.0
    # Kafka records per batch. A mass send-out's record holds up to the scheduler's
    # `send_batch_size` requests (100): 50 records are up to 5,000 messages.
    batch_max_records: int = 50
    # Consumers of send requests in this process (members of the dispatchers' group, each with
    # its own partitions and batch in flight), so that the CPU works on one batch while another
    # waits on PostgreSQL or Kafka. At most the topic's partitions over all processes.
    consumers: int = 2
    # Outcomes per Kafka record (`OutcomeBatch`, one campaign's) published to the tracker.
    outcome_batch_size: int = 500
    # Outcomes recorded are published once this many are waiting, or once the oldest has
    # waited this long: the tracker pays per poll (one transaction each), so fewer, fuller
    # polls cost it less per outcome; the wait is part of the progress lag.
    outcome_publish_at: int = 500
    outcome_publish_after_seconds: float = 0.05
    # Templates that do more than output variables are rendered in worker processes
    # (services/dispatcher/rendering.py): each message within this much CPU time, at most this
    # long, by this many workers, each limited to this much address space.
    render_time_limit_seconds: float = 0.5
    render_max_output_chars: int = 100_000
    render_workers: int = 1
    render_memory_limit_mb: int = 1024
