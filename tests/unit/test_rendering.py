"""The dispatcher's Renderer: a batch rendered inline or in a worker process, each message with
its own result, a slow template timed out, a stuck worker killed and replaced, the event loop
free throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from services.dispatcher.rendering import Renderer
from shared.templating import TemplateProblem
from tests.unit.test_templating import SLOW


@pytest.fixture
async def renderer() -> AsyncIterator[Renderer]:
    r = Renderer(time_limit_seconds=0.3, workers=2, margin_seconds=2.0)
    await r.start()
    try:
        yield r
    finally:
        await r.close()


def _problem(result: str | TemplateProblem) -> str:
    assert isinstance(result, TemplateProblem), result
    return str(result)


async def test_each_message_has_its_own_result(renderer: Renderer) -> None:
    results = await renderer.render_many(
        "{{ 10 // n }} {{ first_name|upper }}",
        [{"n": 2, "first_name": "a"}, {"n": 0, "first_name": "b"}, {"n": 5},
         {"n": 1, "first_name": "d"}])
    assert results[0] == "5 A" and results[3] == "10 D"
    assert "by zero" in _problem(results[1])
    assert "'first_name' is undefined" in _problem(results[2])


async def test_a_text_and_variables_template_is_rendered_inline_without_a_worker() -> None:
    renderer = Renderer()  # not started: no worker exists
    results = await renderer.render_many("Hi {{ first_name }}",
                                         [{"first_name": "Ada"}, {}, {"first_name": [1]}])
    assert results[0] == "Hi Ada"
    assert "'first_name' is undefined" in _problem(results[1])
    assert "an output got a list" in _problem(results[2])
    assert renderer.worker_pids() == []


async def test_a_hostile_template_fails_only_as_its_messages_outcome(renderer: Renderer) -> None:
    for text in ('{{ "x" * 10**9 }}', "{{ 10**100000 }}", "{{ self }}", "{{ range }}",
                 "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{{ first_name"):
        results = await renderer.render_many(text, [{"first_name": "a"}] * 3)
        assert len(results) == 3 and all("template_error: " in _problem(r) for r in results)
    assert await renderer.render_many("{{ first_name|upper }}", [{"first_name": "a"}]) == ["A"]


async def test_a_slow_template_times_out_while_another_call_completes(renderer: Renderer) -> None:
    async def timed(coro: asyncio.Future[list[str | TemplateProblem]] | object) -> float:
        await coro  # type: ignore[misc]
        return time.monotonic()

    started = time.monotonic()
    slow = asyncio.ensure_future(renderer.render_many(SLOW, [{}, {}]))
    fast = asyncio.ensure_future(
        renderer.render_many("{{ first_name|title }}", [{"first_name": "ada"}] * 100))
    assert await fast == ["Ada"] * 100
    fast_done = time.monotonic()
    results = await slow
    slow_done = time.monotonic()
    assert all("timed out" in _problem(r) for r in results)
    assert fast_done < slow_done
    # Two messages of 0.3 s of CPU each (about 14 s without the limit), with room for a loaded
    # machine.
    assert slow_done - started < 8.0


async def test_the_event_loop_keeps_running_while_a_worker_renders(renderer: Renderer) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    await renderer.render_many(SLOW, [{}, {}, {}])
    elapsed = time.monotonic() - started
    ticker.cancel()
    assert elapsed > 0.5
    assert ticks >= 10  # a loop blocked for the render would not have ticked


async def test_a_stuck_worker_is_killed_and_replaced_and_its_messages_time_out() -> None:
    renderer = Renderer(time_limit_seconds=0.2, workers=1, margin_seconds=0.5)
    await renderer.start()
    try:
        [pid] = renderer.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # stuck as if in one endless C call
        started = time.monotonic()
        results = await renderer.render_many("{{ first_name|upper }}",
                                             [{"first_name": "a"}] * 2)
        # The hard limit is 2 x 0.2 + 0.5 s; with room for a loaded machine.
        assert time.monotonic() - started < 2 * 0.2 + 0.5 + 3.0
        assert [_problem(r) for r in results] == ["template_error: timed out"] * 2
        assert renderer.replacements() == 1
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed (and reaped)
        assert await renderer.render_many("{{ first_name|upper }}",
                                          [{"first_name": "b"}]) == ["B"]
        [new_pid] = renderer.worker_pids()
        assert new_pid != pid
    finally:
        await renderer.close()


async def test_a_worker_that_died_while_idle_is_replaced_before_the_next_batch() -> None:
    renderer = Renderer(workers=1)
    await renderer.start()
    try:
        [pid] = renderer.worker_pids()
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        assert await renderer.render_many("{{ n * 2 }}", [{"n": 21}]) == ["42"]
        assert renderer.worker_pids() != [pid]
    finally:
        await renderer.close()
    assert renderer.worker_pids() == []


async def test_a_cancelled_call_hands_its_worker_back_only_when_the_worker_is_done() -> None:
    renderer = Renderer(time_limit_seconds=0.3, workers=1)
    await renderer.start()
    try:
        slow = asyncio.ensure_future(renderer.render_many(SLOW, [{}]))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The next batch waits for the worker, then gets its own results, not the slow one's.
        assert await renderer.render_many("{{ n + 1 }}", [{"n": 1}, {"n": 2}]) == ["2", "3"]
        assert renderer.replacements() == 0
    finally:
        await renderer.close()


async def test_a_batch_of_several_templates_is_rendered_in_order(renderer: Renderer) -> None:
    items = [("Hi {{ first_name }}", {"first_name": "a"}),
             ("{{ first_name|upper }}", {"first_name": "b"}),
             ("Hi {{ first_name }}", {"first_name": "c"}),
             ("{{ 1/0 }}", {}),
             ("{{ first_name|upper }}", {"first_name": "d"})]
    results = await renderer.render_each(items)
    assert results[:3] == ["Hi a", "B", "Hi c"] and results[4] == "D"
    assert "by zero" in _problem(results[3])
