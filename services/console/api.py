"""The scheduler's and the tracker's public HTTP APIs, called with the signed-in user's token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}")

    @property
    def message(self) -> str:
        d = self.detail
        if isinstance(d, dict):
            d = d.get("detail", d)
        if isinstance(d, dict) and "message" in d:
            return str(d["message"])
        if isinstance(d, list):  # pydantic's errors
            return "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in d)
        return str(d)

    @property
    def row_errors(self) -> list[dict[str, Any]]:
        d = self.detail.get("errors") if isinstance(self.detail, dict) else None
        if d is None and isinstance(self.detail, dict):
            inner = self.detail.get("detail")
            d = inner.get("errors") if isinstance(inner, dict) else None
        return list(d or [])


class SignedOut(Exception):
    """The API refused the session's token (revoked): the session ends."""


class Api:
    def __init__(self, scheduler_url: str, tracker_url: str) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        self.scheduler = httpx.AsyncClient(base_url=scheduler_url, timeout=30, limits=limits)
        self.tracker = httpx.AsyncClient(base_url=tracker_url, timeout=30, limits=limits)

    async def close(self) -> None:
        await self.scheduler.aclose()
        await self.tracker.aclose()

    async def sign_in(self, login: str, password: str) -> dict[str, Any]:
        r = await self.scheduler.post("/auth/sign-in", json={"login": login, "password": password})
        if r.status_code != 200:
            raise ApiError(r.status_code, _body(r))
        return dict(r.json())

    async def call(self, token: str, service: str, method: str, path: str,
                   **kwargs: Any) -> Any:
        client = self.scheduler if service == "scheduler" else self.tracker
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        # The tracker learns a new token from Kafka a moment after the scheduler issued it
        # (README: typically well under a second): a fresh sign-in's first calls wait for it.
        deadline = time.monotonic() + (5.0 if service == "tracker" else 0.0)
        while True:
            r = await client.request(method, path, headers=headers, **kwargs)
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if r.status_code == 401:
            raise SignedOut()
        if r.status_code >= 400:
            raise ApiError(r.status_code, _body(r))
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    async def stream(self, token: str, path: str) -> tuple[dict[str, str], AsyncIterator[bytes]]:
        """A tracker download, passed through chunk by chunk (never held whole)."""
        request = self.tracker.build_request(
            "GET", path, headers={"Authorization": f"Bearer {token}"})
        response = await self.tracker.send(request, stream=True)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            if response.status_code == 401:
                raise SignedOut()
            raise ApiError(response.status_code, _body(response))

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        headers = {k: v for k, v in response.headers.items()
                   if k.lower() in ("content-type", "content-disposition")}
        return headers, chunks()


def _body(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text
