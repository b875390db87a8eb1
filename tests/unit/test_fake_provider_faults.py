"""The fake provider's injected faults and its tally of acceptances per idempotency key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools import fake_provider, lean_http


@pytest.fixture
async def fake() -> AsyncIterator[tuple[int, fake_provider.Faults]]:
    behaviour = fake_provider.Behaviour()
    faults = fake_provider.Faults()
    routes = fake_provider.create_routes(behaviour, fake_provider.ReceiptPoster(behaviour), faults)
    server = await lean_http.serve(routes, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], faults
    server.close()


async def _call(port: int, method: str, path: str, body: Any = None,
                key: str | None = None) -> tuple[int, dict[str, str], Any] | None:
    """One request on a fresh connection; None if the server hung up without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b"" if body is None else json.dumps(body).encode()
    extra = f"Idempotency-Key: {key}\r\n" if key else ""
    writer.write((f"{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}"
                  f"content-length: {len(payload)}\r\n\r\n").encode() + payload)
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
    except asyncio.IncompleteReadError:
        writer.close()
        return None
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    data = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    return int(lines[0].split(" ")[1]), headers, json.loads(data)


def _message(to: str) -> dict[str, str]:
    return {"to": to, "channel": "sms", "body": "hi"}


async def test_tally_counts_every_acceptance_of_a_key(fake: tuple[int, Any]) -> None:
    port, _ = fake
    for key, to in [("k1", "a@x"), ("k1", "a@x"), ("k2", "b@y"), ("k1", "a@x")]:
        answer = await _call(port, "POST", "/messages", _message(to), key)
        assert answer is not None and answer[0] == 202
    _, _, tally = await _call(port, "GET", "/tally")  # type: ignore[misc]
    assert tally["accepted"] == 4 and tally["keys"] == 2
    assert tally["keys_accepted_more_than_once"] == 1
    assert tally["repeated_acceptances"] == 2 and tally["repeated"] == {"k1": 3}
    _, _, only_y = await _call(port, "GET", "/tally?to_contains=%40y&full=1")  # type: ignore[misc]
    assert only_y["accepted"] == 1 and only_y["per_key"] == [["k2", "b@y", 1]]


async def test_injected_errors_are_not_acceptances(fake: tuple[int, Any]) -> None:
    port, _ = fake
    answer = await _call(port, "POST", "/config",
                         {"error_429": 1.0, "retry_after_seconds": 7})
    assert answer is not None and answer[0] == 200
    status, headers, _ = await _call(port, "POST", "/messages", _message("a@x"), "k")  # type: ignore[misc]
    assert status == 429 and headers["retry-after"] == "7"
    await _call(port, "POST", "/config", {"error_429": 0, "error_500": 1.0})
    assert (await _call(port, "POST", "/messages", _message("a@x"), "k"))[0] == 500  # type: ignore[index]
    await _call(port, "POST", "/config", {"error_500": 0, "outage": "503"})
    assert (await _call(port, "POST", "/messages", _message("a@x"), "k"))[0] == 503  # type: ignore[index]
    _, _, tally = await _call(port, "GET", "/tally")  # type: ignore[misc]
    assert tally["accepted"] == 0


async def test_a_hang_closes_without_accepting(fake: tuple[int, Any]) -> None:
    port, _ = fake
    await _call(port, "POST", "/config", {"hang": 1.0, "hang_seconds": 0.2})
    t0 = asyncio.get_running_loop().time()
    assert await _call(port, "POST", "/messages", _message("a@x"), "k") is None
    assert asyncio.get_running_loop().time() - t0 >= 0.2
    _, _, tally = await _call(port, "GET", "/tally")  # type: ignore[misc]
    assert tally["accepted"] == 0


async def test_fractions_are_validated(fake: tuple[int, Any]) -> None:
    port, _ = fake
    answer = await _call(port, "POST", "/config", {"error_500": 0.7, "hang": 0.5})
    assert answer is not None and answer[0] == 400


async def test_refuse_outage_stops_listening_and_resumes_on_the_same_port() -> None:
    behaviour = fake_provider.Behaviour()
    main_port, control_port = _free(), _free()
    task = asyncio.create_task(fake_provider.serve(behaviour, "127.0.0.1", main_port,
                                                   control_port))
    try:
        for _ in range(50):
            try:
                await _call(control_port, "GET", "/health")
                break
            except OSError:
                await asyncio.sleep(0.05)
        await _call(control_port, "POST", "/config", {"outage": "refuse"})
        with pytest.raises(OSError):
            await _call(main_port, "POST", "/messages", _message("a@x"), "k")
        await _call(control_port, "POST", "/config", {"outage": None})
        answer = await _call(main_port, "POST", "/messages", _message("a@x"), "k")
        assert answer is not None and answer[0] == 202
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _free() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
