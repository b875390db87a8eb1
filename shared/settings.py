"""Settings common to every service, read from the environment only (prefix `SENDOUT_`).

The bare `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` are accepted too, since that is what the
local stack, docker-compose and test harness export.
"""

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENDOUT_", extra="ignore")

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("SENDOUT_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/sendout",
        validation_alias=AliasChoices("SENDOUT_DATABASE_URL", "DATABASE_URL"),
    )
    # Partitions of topics Sendout creates; bounds how many consumers of a group share work.
    kafka_partitions: int = 8
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    db_pool_max: int = 10
    # How often the gauges read from elsewhere are refreshed: consumer lag, campaigns.
    metrics_interval_seconds: float = 10.0
