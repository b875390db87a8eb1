"""Rule: each (campaign, recipient, channel) is claimed before its provider call and sent once.

The dispatcher consumes send requests, renders each template (sandboxed), calls the channel's
provider with bounded concurrency and a rate limit, and publishes outcomes (schema
`dispatcher`: deliveries, claims, the retry schedule). Rooms: bootstrap.py (settings → pool,
providers, renderer, the dispatcher, broker and loops), app.py (the HTTP app: health and
metrics, built without a database), entrypoints/ (the Kafka subscribers in kafka.py),
providers/ (one module per provider adapter, the failover chain, and registry.py, which builds
them from the settings); the other flat modules are yet to move into that shape (service.py
and domain.py the sending rules, repo.py the SQL; ../../shared/STYLE.md, "Target shape of a
service").
"""
