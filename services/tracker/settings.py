from pydantic import SecretStr

from shared.settings import CommonSettings


class TrackerSettings(CommonSettings):
    http_port: int = 8003
    batch_max_records: int = 5000
    # Shared with the providers: receipts webhook requests are signed with it (HMAC-SHA256).
    # Unset: the webhook refuses every request.
    receipts_secret: SecretStr | None = None
    receipts_max_skew_seconds: int = 300
    # Twilio's status callbacks (POST /providers/twilio/status) are signed with the account's
    # auth token. Unset: that route refuses every request.
    twilio_auth_token: SecretStr | None = None
    # The tracker's public base URL as Twilio calls it (e.g. https://sendout.example.org):
    # the signature covers the full URL. Unset: the URL of the request as it arrives.
    twilio_public_base_url: str | None = None
