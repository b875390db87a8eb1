"""Rule: an entry point decodes, hands the batch to the dispatcher or a repository call, and
publishes what comes back through a declared publisher; no rule of its own.

The dispatcher's ways in: `kafka.py` (its subscribers: send requests in, outcomes out; the
lifecycle and opt-outs it must know). Its HTTP app (app.py) has only health and metrics.
"""
