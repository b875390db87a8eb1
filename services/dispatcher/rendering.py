"""Rendering a batch of messages with a time limit, off the event loop.

A template that is only text and `{{ name }}` outputs is rendered inline, in the calling
coroutine (shared.templating.inline_renderer: nothing in it can loop or grow). Any other
template is rendered in a worker process, one call per batch (a list of variables in, a list of
results out), each message within a CPU time limit enforced inside the worker (a SIGPROF timer
interrupts a Jinja loop), under an address-space limit. If a worker does not answer within
messages x limit + a margin — stuck in one long C call, say — it is killed and replaced and
that call's messages get "template_error: timed out". Each message has its own result: a
problem with one never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import templating
from shared.templating import TemplateProblem

log = logging.getLogger(__name__)

# What a worker is given beyond messages x limit before it is considered stuck: the pickling
# of a batch both ways, and a loaded machine.
_MARGIN_SECONDS = 5.0
# How long a new worker (an interpreter importing Jinja) may take to say it is ready; its
# start is not counted in any batch's time.
_STARTUP_SECONDS = 30.0


@dataclass(frozen=True)
class _Job:
    template: str
    variables: list[Mapping[str, Any]]


class Renderer:
    """Renders each message of a batch, inline or in a worker process; never raises for a
    template's problem, never blocks the event loop, never hangs."""

    def __init__(self, *, time_limit_seconds: float = 0.5, max_output_chars: int = 100_000,
                 workers: int = 1, memory_limit_mb: int = 1024,
                 margin_seconds: float = _MARGIN_SECONDS) -> None:
        if workers < 1:
            raise ValueError("a renderer needs at least one worker")
        self.time_limit_seconds = time_limit_seconds
        self.max_output_chars = max_output_chars
        self.margin_seconds = margin_seconds
        self._workers = [_Worker(time_limit_seconds, max_output_chars, memory_limit_mb)
                         for _ in range(workers)]
        self._idle: asyncio.Queue[_Worker] | None = None
        # One thread per worker waits on its pipe, so the event loop never does.
        self._threads = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="sendout-render")

    async def start(self) -> None:
        """Starts the worker processes (else the first template that needs one does)."""
        if self._idle is not None:
            return
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        await asyncio.gather(*(loop.run_in_executor(self._threads, w.ensure_started)
                               for w in self._workers))
        for worker in self._workers:
            self._idle.put_nowait(worker)

    async def render_many(
        self, template: str, variables: Sequence[Mapping[str, Any]]
    ) -> list[str | TemplateProblem]:
        """Each message's text, or the TemplateProblem that is its outcome, in order."""
        if not variables:
            return []
        inline = templating.inline_renderer(template)
        if inline is not None:
            return [_inline(inline, item, self.max_output_chars) for item in variables]
        if self._idle is None:
            await self.start()
            assert self._idle is not None
        job = _Job(template, [dict(item) for item in variables])
        deadline = len(job.variables) * self.time_limit_seconds + self.margin_seconds
        worker = await self._idle.get()
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._threads, worker.call, job, deadline)
        try:
            return await asyncio.shield(call)
        finally:
            # A cancelled caller does not get the worker back to the pool before its call ends.
            call.add_done_callback(lambda _: self._release(worker))

    async def render_each(
        self, items: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[str | TemplateProblem]:
        """`render_many` for a batch of (template, variables) pairs of any templates — bodies
        and subjects of several campaigns — with one call per distinct template, the calls
        concurrent (as many at once as there are workers); the results in the items' order."""
        groups: dict[str, list[int]] = {}
        for i, (template, _) in enumerate(items):
            groups.setdefault(template, []).append(i)
        results: list[str | TemplateProblem | None] = [None] * len(items)

        async def group(template: str, indexes: list[int]) -> None:
            rendered = await self.render_many(template, [items[i][1] for i in indexes])
            for i, result in zip(indexes, rendered, strict=True):
                results[i] = result

        await asyncio.gather(*(group(t, ix) for t, ix in groups.items()))
        return [r if r is not None else TemplateProblem("not rendered") for r in results]

    def _release(self, worker: _Worker) -> None:
        if self._idle is not None:
            self._idle.put_nowait(worker)

    async def close(self) -> None:
        """Stops the workers (a call in flight gets "rendering failed" results)."""
        for worker in self._workers:
            worker.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def worker_pids(self) -> list[int]:
        """The worker processes' ids (for operators and tests)."""
        return [pid for w in self._workers if (pid := w.pid()) is not None]

    def replacements(self) -> int:
        """Workers killed and replaced so far (stuck or dead)."""
        return sum(w.replaced for w in self._workers)


def _inline(
    render: Any, variables: Mapping[str, Any], max_output_chars: int
) -> str | TemplateProblem:
    try:
        return str(render(variables, max_output_chars))
    except TemplateProblem as problem:
        return problem


class _Worker:
    """One worker process (`python -m services.dispatcher.rendering`) and the pipes to it:
    length-prefixed pickles on its stdin and stdout. Used by one thread at a time.

    A plain subprocess rather than multiprocessing's spawn: that re-imports the parent's main
    module in the child (the whole service), and fails when the main module is unguarded.
    """

    def __init__(self, time_limit_seconds: float, max_output_chars: int,
                 memory_limit_mb: int) -> None:
        self._args = [str(time_limit_seconds), str(max_output_chars), str(memory_limit_mb)]
        self._process: subprocess.Popen[bytes] | None = None
        self.replaced = 0
        self.closed = False

    def ensure_started(self) -> None:
        """A running worker, ready for a batch (none once closed or if it could not start)."""
        if self.closed or (self._process is not None and self._process.poll() is None):
            return
        self._kill()
        process = subprocess.Popen(
            [sys.executable, "-m", "services.dispatcher.rendering", *self._args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, cwd=_PROJECT_ROOT,
            start_new_session=True,  # a Ctrl-C to the service is the service's to handle
        )
        assert process.stdout is not None
        ready: object
        try:
            ready = _read_frame(process.stdout.fileno(), time.monotonic() + _STARTUP_SECONDS)
        except (TimeoutError, EOFError, OSError, pickle.UnpicklingError) as exc:
            ready = exc
        self._process = process
        if ready != _READY:
            log.error("render worker did not start: %r", ready)
            self._kill()

    def call(self, job: _Job, deadline: float) -> list[str | TemplateProblem]:
        self.ensure_started()
        process = self._process
        if process is None:
            reason = "the renderer is closed" if self.closed else "no worker could start"
            return _each_failed(job, f"rendering failed ({reason})")
        assert process.stdin is not None and process.stdout is not None
        try:
            data = _frame((job.template, job.variables))
        except Exception as exc:  # a value pickle refuses is these messages' problem
            problem = TemplateProblem(f"variables the renderer cannot take ({type(exc).__name__})")
            return [problem for _ in job.variables]
        until = time.monotonic() + deadline
        try:
            _write(process.stdin.fileno(), data)
            results: list[str | TemplateProblem] = _read_frame(process.stdout.fileno(), until)
            return results
        except TimeoutError:
            reason = "timed out"
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            reason = "rendering failed (the worker stopped)"
            log.warning("render worker stopped: %s", type(exc).__name__)
        if self.closed:
            return _each_failed(job, "rendering failed (the renderer is closed)")
        log.warning("render worker replaced: %s for %d messages", reason, len(job.variables))
        self._kill()
        self.replaced += 1  # its successor starts with the next batch
        return _each_failed(job, reason)

    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        self.closed = True
        self._kill()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("render worker %d did not end after SIGKILL", process.pid)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def _each_failed(job: _Job, reason: str) -> list[str | TemplateProblem]:
    """The same problem for every message of the job."""
    return [TemplateProblem(reason) for _ in job.variables]


_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
_LENGTH = struct.Struct("!Q")
_READY = "ready"


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int, until: float | None) -> bytes:
    chunks: list[bytes] = []
    while size:
        if until is not None:
            left = until - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, until: float | None) -> Any:
    (size,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size, until))
    return pickle.loads(_read_exact(fd, size, until))  # our own worker's answer


def _serve(time_limit_seconds: float, max_output_chars: int, memory_limit_mb: int) -> None:
    """The worker process: render batches read from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the worker ends
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    _write(stdout, _frame(_READY))
    while True:
        try:
            template, variables = _read_frame(stdin, None)
        except EOFError:
            return
        results = templating.render_batch(template, variables,
                                          time_limit_seconds=time_limit_seconds,
                                          max_output_chars=max_output_chars)
        _write(stdout, _frame(results))


if __name__ == "__main__":
    _serve(float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
