"""Maps domain errors to HTTP once, at the edge: 404 not found, 409 wrong state, 422 invalid."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def install(
    app: FastAPI,
    *,
    not_found: type[Exception],
    conflict: type[Exception],
    invalid: type[Exception],
) -> None:
    async def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    async def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "state": getattr(exc, "state", None)}, status_code=409
        )

    async def _invalid(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "errors": getattr(exc, "errors", [])}, status_code=422
        )

    app.add_exception_handler(not_found, _not_found)
    app.add_exception_handler(conflict, _conflict)
    app.add_exception_handler(invalid, _invalid)
