from pydantic import SecretStr

from shared.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    http_port: int = 8001
    fanout_page_size: int = 5000
    # Send requests per Kafka record (`SendRequestedBatch`): per-record costs are paid once per
    # batch. The dispatchers' `batch_max_records` counts these records.
    send_batch_size: int = 100
    # How often to look for send-outs whose fan-out no process is driving (e.g. after a crash).
    fanout_rescan_seconds: float = 5.0
    # Phone numbers without a country code are read as numbers of this region.
    default_phone_region: str = "DK"
    # How often the schedule loop looks for due campaigns (bounds the schedule lag).
    schedule_poll_seconds: float = 0.2
    # How often the outbox relay looks for unpublished events when no notification woke it
    # (a commit's NOTIFY wakes it at once).
    outbox_poll_seconds: float = 1.0
    # How long an abort waits for every dispatcher's acknowledgement before answering anyway.
    abort_ack_timeout_seconds: float = 10.0
    # Enables POST /admin/users (creating users and their API tokens) for whoever has it.
    admin_token: str | None = None
    # Shared with the SMS provider: inbound messages (STOP replies) must be signed with it.
    inbound_sms_secret: SecretStr | None = None
    # Twilio's inbound messages (POST /organisations/{id}/inbound-sms/twilio) are signed with
    # the account's auth token; the public base URL is the one Twilio calls (the signature
    # covers the full URL; unset: the request's URL as it arrives).
    twilio_auth_token: SecretStr | None = None
    twilio_public_base_url: str | None = None
