"""Rule: an entry point parses, calls one service function (or read), and shapes the answer;
no rule and no SQL.

The tracker's ways in: `http/` (a route module per area, each route a few lines, its
dependencies from the running tracker on `app.state` through FastAPI's `Depends`) and
`kafka.py` (its subscribers: decode, then project into the progress in one transaction).
"""
