"""A batch's Recorder is freed by reference counting when its batch is done: its outcomes must
not wait for the cyclic garbage collector (at full speed that left every batch's outcomes in
memory until a collection found them: a tenth of the dispatcher's CPU, twice its memory)."""

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from services.dispatcher import domain
from services.dispatcher.domain import Outcome, Request
from services.dispatcher.service import Recorder, Result, Retry
from tests.factories import send_requested


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _write(group: list[tuple[Request, Result]]) -> list[tuple[Outcome, bytes]]:
    await asyncio.sleep(0)
    return [(r, r.to_bytes()) for _, r in group if not isinstance(r, Retry)]


@pytest.mark.usefixtures("no_cyclic_collector")
def test_a_drained_recorder_is_freed_without_the_cyclic_collector() -> None:
    published: list[int] = []

    async def publish(outcomes: list[tuple[Outcome, bytes]]) -> None:
        published.append(len(outcomes))

    async def batch() -> weakref.ref[Recorder]:
        recorder = Recorder(_write, publish, publish_at=2, publish_after=0.01)
        for n in range(5):
            req = send_requested(recipient_id=n)
            recorder.add(req, domain.sent(req, f"p{n}"))
        await recorder.drain()
        assert [o.recipient_id for o, _ in recorder.outcomes] == [0, 1, 2, 3, 4]
        return weakref.ref(recorder)

    ref = asyncio.run(batch())
    assert sum(published) == 5
    assert ref() is None, "the recorder (and its batch's outcomes) outlived its batch"
