"""Dispatchers' abort acknowledgements, collected for the abort requests waiting for them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.events import AbortAcknowledged


@dataclass
class Wait:
    # Instances whose answer is awaited: the dispatchers' group members once they are known.
    expected: set[str] | None = None
    acks: dict[str, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, instances: set[str]) -> None:
        self.expected = set(instances)
        self._check()

    def acknowledged(self, instance: str, settled: int) -> None:
        self.acks[instance] = settled
        self._check()

    def _check(self) -> None:
        # Done once someone answered and every member known answered: silence is no answer.
        if self.expected is not None and self.acks and self.expected <= set(self.acks):
            self.done.set()


class AbortAcks:
    """Collects dispatcher instances' abort acknowledgements for waiting abort requests."""

    def __init__(self) -> None:
        self._waits: dict[uuid.UUID, Wait] = {}

    @contextlib.contextmanager
    def expecting(self, campaign_id: uuid.UUID) -> Iterator[Wait]:
        """Collect the campaign's acknowledgements from now on (before its abort can be
        published: the relay may publish it as soon as the transaction commits)."""
        wait = Wait()
        self._waits[campaign_id] = wait
        try:
            yield wait
        finally:
            self._waits.pop(campaign_id, None)

    def acknowledged(self, event: AbortAcknowledged) -> None:
        wait = self._waits.get(event.campaign_id)
        if wait is not None:
            wait.acknowledged(event.instance, event.settled)
