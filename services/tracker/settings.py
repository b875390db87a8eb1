from pydantic import SecretStr

from shared.settings import CommonSettings


class TrackerSettings(CommonSettings):
    http_port: int = 8003
    batch_max_records: int = 5000
    # Shared with the providers: receipts webhook requests are signed with it (HMAC-SHA256).
    # Unset: the webhook refuses every request.
    receipts_secret: SecretStr | None = None
    receipts_max_skew_seconds: int = 300
