"""What the API shows of voters and lists: their rows shaped as the answers' JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def voter_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "external_id": row["external_id"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "email": row["email"],
        "phone": row["phone"],
        "preferred_language": row["preferred_language"],
        "attributes": row["attributes"],
        "opted_out": row["opted_out"],
        "opted_out_at": _iso(row["opted_out_at"]),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def list_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": str(row["id"]), "name": row["name"], "voters": row["voters"],
            "created_at": _iso(row["created_at"])}


def lists_view(rows: list[asyncpg.Record]) -> dict[str, Any]:
    return {"lists": [list_view(r) for r in rows]}


def page_view(rows: list[asyncpg.Record], limit: int) -> dict[str, Any]:
    return {
        "voters": [voter_view(r) for r in rows],
        "next_after": rows[-1]["id"] if len(rows) == limit else None,
    }


def voter_page_view(voter_id: int, page: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **voter_view(page["voter"]),
        "lists": page["lists"],
        "campaigns": [
            {"campaign_id": str(c["campaign_id"]), "name": c["name"], "state": c["state"],
             "recipient_id": c["recipient_id"], "started_at": _iso(c["started_at"]),
             "completed_at": _iso(c["completed_at"])}
            for c in page["campaigns"]
        ],
        "statuses": {"service": "tracker", "path": f"/voters/{voter_id}/history"},
    }


def export_view(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "voter": voter_view(data["voter"]),
        "lists": data["lists"],
        "recipient_snapshots": [
            {**dict(s), "campaign_id": str(s["campaign_id"])}
            for s in data["recipient_snapshots"]
        ],
    }
