"""The transactional outbox's writing side: a use case hands its events' records to `add`
inside the transaction of the state change they report. They are published to Kafka after
the commit by the relay (`outbox_relay`), so a rolled-back change publishes nothing, a
committed one is published, and no Kafka round trip happens while a row lock is held.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from services.scheduler.errors import Invalid
from shared import topics
from shared.db import Conn
from shared.events import (
    AddressOptedOut,
    ApiTokenIssued,
    ApiTokenRevoked,
    Event,
    RecipientsErased,
)

# Notified at commit (NOTIFY is transactional): wakes the relay at once.
CHANNEL = "sendout_outbox"

# (topic, key, value): a Kafka record to be.
Record = tuple[str, bytes | None, bytes]

# Below what a Kafka record may be by default (the producer's max_request_size and the
# broker's message.max.bytes, about 1 MiB, include the batch's own overhead).
MAX_RECORD_BYTES = 1_000_000


def record_size_error(key: bytes | None, value: bytes) -> str | None:
    """Why Kafka could never take this record, if it could not."""
    size = len(value) + (len(key) if key is not None else 0)
    if size > MAX_RECORD_BYTES:
        return f"a record of {size} bytes; Kafka takes at most {MAX_RECORD_BYTES}"
    return None


def check(records: Sequence[Record]) -> None:
    """Refuse records Kafka could never take (an unknown topic, too large), with the change
    they report, rather than accept them and never publish them."""
    unknown = {topic for topic, _, _ in records} - set(topics.ALL)
    if unknown:
        raise ValueError(f"no such topic: {sorted(unknown)}")
    for _, key, value in records:
        error = record_size_error(key, value)
        if error is not None:
            raise Invalid(f"this cannot be sent: {error} (a recipient's data too large?)")


async def add(conn: Conn, records: Sequence[Record]) -> int | None:
    """Write `records` to be published once the caller's transaction commits, in this order;
    the id of the last one (None if none)."""
    if not records:
        return None
    if not conn.is_in_transaction():
        # Outside a transaction the row would be published with no state change to go with it.
        raise RuntimeError("outbox records are written inside the state change's transaction")
    check(records)
    last: int = await conn.fetchval(
        """
        WITH written AS (
            INSERT INTO outbox (topic, key, value)
            SELECT r.topic, r.key, r.value
            FROM unnest($1::text[], $2::bytea[], $3::bytea[]) WITH ORDINALITY
                AS r(topic, key, value, n)
            ORDER BY r.n
            RETURNING id
        )
        SELECT max(id), pg_notify($4, '') FROM written
        """,
        [r[0] for r in records], [r[1] for r in records], [r[2] for r in records], CHANNEL,
    )
    return last


def lifecycle(event: Event) -> Record:
    return topics.CAMPAIGN_LIFECYCLE, event.campaign_id.bytes, event.to_bytes()


def opt_out(event: AddressOptedOut) -> Record:
    return topics.OPT_OUTS, event.organisation_id.bytes, event.to_bytes()


def erasure(event: RecipientsErased) -> Record:
    return topics.ERASURES, event.organisation_id.bytes, event.to_bytes()


def identity(events: Iterable[ApiTokenIssued | ApiTokenRevoked]) -> list[Record]:
    return [(topics.IDENTITY, bytes.fromhex(e.token_hash), e.to_bytes()) for e in events]


def send_requests(records: Iterable[tuple[bytes, bytes]]) -> list[Record]:
    return [(topics.SEND_REQUESTED, key, value) for key, value in records]
