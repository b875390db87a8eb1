"""Rule: an entry point parses, calls one use case, and shapes the answer; no rule and no SQL.

The scheduler's ways in: `http/` (a route module per area, each route a few lines, its
dependencies from the running scheduler on `app.state` through FastAPI's `Depends`) and
`kafka.py` (its subscribers: decode, then a use case over a unit of work).
"""
