"""Dead letters, for operators: list what the services parked on `<topic>.dlq`, and replay it.

    python -m devtools.dlq list [--topic T] [--limit N]
    python -m devtools.dlq replay --topic T (--offset [PARTITION:]OFFSET | --all)
                                  [--dry-run] [--again]

(`./sendout dlq ...` runs it.) Kafka's address comes from `--bootstrap` or
KAFKA_BOOTSTRAP_SERVERS. A topic is named with or without its `.dlq` suffix.

A replay publishes the record's original key and bytes to its original topic (header
`x-source-topic`), where its consumer group processes it again as any record, and marks it
replayed in the consumer group `sendout-dlq-replay`: per DLQ partition, the committed offset is
the point before which everything was replayed, and its metadata lists the offsets beyond that
point replayed one by one. A replayed record is not replayed again unless `--again` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from shared import topics

REPLAY_GROUP = "sendout-dlq-replay"
# Kafka refuses commit metadata over offset.metadata.max.bytes (4096 by default).
MAX_METADATA = 4000


class DlqError(Exception):
    """What the operator asked for cannot be done; the message says why."""


@dataclass
class Replayed:
    """Which offsets of one DLQ partition were replayed: all below `below`, and `also`."""

    below: int = 0
    also: frozenset[int] = frozenset()

    def __contains__(self, offset: int) -> bool:
        return offset < self.below or offset in self.also

    def with_offset(self, offset: int) -> Replayed:
        below, also = self.below, set(self.also) | {offset}
        while below in also:
            also.discard(below)
            below += 1
        return Replayed(below, frozenset(o for o in also if o >= below))

    def metadata(self) -> str:
        text = ",".join(map(str, sorted(self.also)))
        if len(text) > MAX_METADATA:
            raise DlqError("too many records replayed one by one in this partition to record; "
                           "replay the rest with --all")
        return text

    @classmethod
    def of(cls, committed: OffsetAndMetadata | None) -> Replayed:
        if committed is None or committed.offset < 0:
            return cls()
        also = frozenset(int(o) for o in committed.metadata.split(",") if o.strip())
        return cls(committed.offset, also)


def dlq_name(topic: str) -> str:
    return topic if topic.endswith(".dlq") else topics.dlq(topic)


def _header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode("utf-8", "replace")
    return None


def source_topic(record: ConsumerRecord[Any, Any]) -> str:
    return _header(record, "x-source-topic") or record.topic.removesuffix(".dlq")


def show_key(key: bytes | None) -> str:
    if key is None:
        return "-"
    if len(key) == 16:
        return str(uuid.UUID(bytes=key))
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()
    return text if text.isprintable() else key.hex()


def show_bytes(value: bytes | None, width: int = 60) -> str:
    if value is None:
        return "-"
    shown = repr(value[:width])[2:-1]
    return shown + ("…" if len(value) > width else "")


def describe(record: ConsumerRecord[Any, Any], replayed: bool) -> str:
    source = (f"{source_topic(record)} {_header(record, 'x-source-partition') or '?'}:"
              f"{_header(record, 'x-source-offset') or '?'}")
    error = (_header(record, "x-error") or "-").replace("\n", " ")
    if len(error) > 160:
        error = error[:159] + "…"
    attempts = _header(record, "x-attempts")
    service = _header(record, "x-service")
    by = f" [{service}, {attempts} attempt{'s' if attempts != '1' else ''}]" if attempts else ""
    return (f"{record.topic} {record.partition}:{record.offset}"
            f"{'  (replayed)' if replayed else ''}\n"
            f"  from   {source}\n"
            f"  error  {error}{by}\n"
            f"  key    {show_key(record.key)}\n"
            f"  bytes  {show_bytes(record.value)}")


async def partitions_of(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    # Asked first: describing a topic that does not exist creates it where the broker
    # auto-creates topics.
    if topic not in await admin.list_topics():
        raise DlqError(f"no topic {topic}")
    (described,) = await admin.describe_topics([topic])
    if described["error_code"] or not described["partitions"]:
        raise DlqError(f"no topic {topic}")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


class Dlq:
    """One connection to Kafka for reading DLQ topics and what was replayed."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=REPLAY_GROUP,
                                         enable_auto_commit=False, client_id="sendout-dlq")
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="sendout-dlq")

    async def __aenter__(self) -> Dlq:
        await self.consumer.start()
        await self.admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def existing_dlqs(self) -> list[str]:
        return sorted(t for t in await self.admin.list_topics() if t.endswith(".dlq"))

    async def partitions(self, topic: str) -> list[TopicPartition]:
        return await partitions_of(self.admin, topic)

    async def replayed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, Replayed]:
        committed = await self.admin.list_consumer_group_offsets(REPLAY_GROUP, partitions=tps)
        return {tp: Replayed.of(committed.get(tp)) for tp in tps}

    async def mark(self, marks: dict[TopicPartition, Replayed]) -> None:
        if marks:
            await self.consumer.commit(
                {tp: OffsetAndMetadata(r.below, r.metadata()) for tp, r in marks.items()})

    async def read(
        self, tps: Sequence[TopicPartition], start: dict[TopicPartition, int] | None = None,
        limit: int | None = None,
    ) -> tuple[list[ConsumerRecord[Any, Any]], dict[TopicPartition, int]]:
        """The records of `tps` from `start` (default: the oldest kept) to their current end,
        in partition then offset order, at most `limit` of them; and those ends."""
        if not tps:
            return [], {}
        first = await self.consumer.beginning_offsets(tps)
        end = await self.consumer.end_offsets(tps)
        self.consumer.assign(list(tps))
        records: list[ConsumerRecord[Any, Any]] = []
        for tp in tps:
            position = max(first[tp], (start or {}).get(tp, 0))
            if position >= end[tp]:
                continue
            self.consumer.seek(tp, position)
            while position < end[tp] and (limit is None or len(records) < limit):
                batch = await self.consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    if record.offset < end[tp] and (limit is None or len(records) < limit):
                        records.append(record)
                position = await self.consumer.position(tp)
        return records, end


async def list_records(dlq: Dlq, topic: str | None, limit: int) -> int:
    names = [dlq_name(topic)] if topic else await dlq.existing_dlqs()
    shown = 0
    for name in names:
        tps = await dlq.partitions(name)
        replayed = await dlq.replayed(tps)
        records, _ = await dlq.read(tps)
        waiting = sum(r.offset not in replayed[TopicPartition(name, r.partition)]
                      for r in records)
        if not records and not topic:
            continue
        if shown >= limit:
            print(f"(stopped at --limit {limit})")
            return 0
        print(f"== {name}: {len(records)} record(s), {waiting} not replayed")
        for record in records:
            if shown >= limit:
                print(f"(stopped at --limit {limit})")
                return 0
            done = replayed[TopicPartition(name, record.partition)]
            print(describe(record, record.offset in done))
            shown += 1
    if shown == 0 and not topic:
        print("no dead letters")
    return 0


def parse_offset(text: str, partitions: Sequence[TopicPartition]) -> tuple[TopicPartition, int]:
    partition, sep, offset = text.rpartition(":")
    try:
        wanted = int(offset)
        number = int(partition) if sep else None
    except ValueError:
        raise DlqError(f"--offset {text!r}: expected PARTITION:OFFSET, e.g. 0:42") from None
    if number is None:
        if len(partitions) != 1:
            raise DlqError(f"{partitions[0].topic} has {len(partitions)} partitions: give "
                           "--offset PARTITION:OFFSET (as `dlq list` prints it)")
        return partitions[0], wanted
    tp = next((tp for tp in partitions if tp.partition == number), None)
    if tp is None:
        raise DlqError(f"{partitions[0].topic} has no partition {number}")
    return tp, wanted


async def replay(dlq: Dlq, topic: str, offset: str | None, *, dry_run: bool, again: bool) -> int:
    name = dlq_name(topic)
    tps = await dlq.partitions(name)
    replayed = await dlq.replayed(tps)
    if offset is not None:
        tp, wanted = parse_offset(offset, tps)
        near, _ = await dlq.read([tp], {tp: wanted}, limit=1)
        found = [r for r in near if r.offset == wanted]
        if not found:
            raise DlqError(f"no record at {name} {tp.partition}:{wanted}")
        if wanted in replayed[tp] and not again:
            raise DlqError(f"{name} {tp.partition}:{wanted} was already replayed "
                           "(--again to replay it once more)")
        todo = found
        marks = {tp: replayed[tp].with_offset(wanted)}
    else:
        start = None if again else {tp: replayed[tp].below for tp in tps}
        records, ends = await dlq.read(tps, start)
        todo = [r for r in records
                if again or r.offset not in replayed[TopicPartition(name, r.partition)]]
        # Up to where it read: what arrived meanwhile is for the next replay.
        marks = {tp: Replayed(max(ends[tp], replayed[tp].below)) for tp in tps}
    verb = "would replay" if dry_run else "replayed"
    if not dry_run and todo:
        producer = AIOKafkaProducer(bootstrap_servers=dlq.bootstrap, acks="all",
                                    enable_idempotence=True, client_id="sendout-dlq")
        await producer.start()
        try:
            futures = [
                await producer.send(
                    source_topic(r), r.value, key=r.key,
                    headers=[("content-type", b"application/json"),
                             ("x-replayed-from", f"{r.topic}:{r.partition}:{r.offset}".encode())],
                )
                for r in todo
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
    for r in todo:
        print(f"{verb} {r.topic} {r.partition}:{r.offset} -> {source_topic(r)} "
              f"(key {show_key(r.key)})")
    if not dry_run:
        await dlq.mark(marks)
    print(f"{len(todo)} record(s) {verb}" + ("" if todo or again else
                                             " (already replayed ones skipped; --again)"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sendout dlq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                        help="Kafka's address (default: $KAFKA_BOOTSTRAP_SERVERS)")
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("list", help="print dead letters, oldest first")
    ls.add_argument("--topic", help="one topic (default: every .dlq topic with records)")
    ls.add_argument("--limit", type=int, default=50, help="at most N records (default 50)")
    rp = commands.add_parser("replay", help="publish dead letters again to their topic")
    rp.add_argument("--topic", required=True)
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", help="one record: PARTITION:OFFSET, as `list` prints it")
    which.add_argument("--all", action="store_true", help="every record not yet replayed")
    rp.add_argument("--dry-run", action="store_true", help="print what would be replayed")
    rp.add_argument("--again", action="store_true", help="include records already replayed")
    args = parser.parse_args(argv)
    if not args.bootstrap:
        parser.error("no Kafka address: set KAFKA_BOOTSTRAP_SERVERS or give --bootstrap")
    if args.command == "list" and args.limit < 1:
        parser.error("--limit must be at least 1")

    async def run() -> int:
        async with Dlq(args.bootstrap) as dlq:
            if args.command == "list":
                return await list_records(dlq, args.topic, args.limit)
            return await replay(dlq, args.topic, args.offset, dry_run=args.dry_run,
                                again=args.again)

    try:
        return asyncio.run(run())
    except DlqError as exc:
        print(f"sendout dlq: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
