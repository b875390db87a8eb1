"""Where the real Kafka and PostgreSQL come from, in this order:
1. `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` from the environment (`./sendout test` exports
   the local stack's, which it starts first);
2. testcontainers, when a Docker engine answers;
3. the local stack's `.sendout/stack.env`, if it is running.
With none of them, integration and e2e tests fail under CI=true and are skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stack:
    kafka: str
    database_url: str


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def _stack_env_file() -> dict[str, str]:
    path = ROOT / ".sendout" / "stack.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    dsn = os.environ.get("DATABASE_URL")
    if kafka and dsn:
        yield Stack(kafka, dsn)
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with KafkaContainer().with_kraft() as k, PostgresContainer("postgres:16") as pg:
            url = pg.get_connection_url().replace("postgresql+psycopg2://", "postgresql://")
            yield Stack(k.get_bootstrap_server(), url)
        return
    env = _stack_env_file()
    if env.get("KAFKA_BOOTSTRAP_SERVERS") and env.get("DATABASE_URL"):
        yield Stack(env["KAFKA_BOOTSTRAP_SERVERS"], env["DATABASE_URL"])
        return
    message = (
        "no Kafka/PostgreSQL: set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL, run Docker, "
        "or start the local stack (./sendout test does)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
