from typing import Literal

from shared.settings import CommonSettings


class DispatcherSettings(CommonSettings):
    http_port: int = 8002
    provider: Literal["noop", "http"] = "noop"
    # Base URL of an HTTP provider API (the fake provider in tests and the demo).
    provider_url: str = "http://127.0.0.1:8025"
    provider_timeout_seconds: float = 10.0
    # Provider calls in flight at once per process, and the provider's rate limit.
    concurrency: int = 200
    rate_limit_per_second: float = 0.0  # 0 = unlimited
    max_attempts: int = 3
    retry_backoff_seconds: float = 0.2
    batch_max_records: int = 1000
