"""Rule: each (campaign, recipient, channel) is claimed before its provider call and sent once.

The dispatcher consumes send requests, renders each template (sandboxed), calls the channel's
provider with bounded concurrency and a rate limit, and publishes outcomes (schema
`dispatcher`: deliveries, claims, the retry schedule). Rooms: bootstrap.py (settings → pool,
providers and their registry, renderer, the dispatcher, broker and loops), app.py (the HTTP
app: health and metrics, built without a database), entrypoints/ (the Kafka subscribers in
kafka.py); the other flat modules are yet to move into that shape (service.py and domain.py
the sending rules, repo.py the SQL, providers.py, smtp.py, twilio.py, failover.py the provider
adapters; ../../shared/STYLE.md, "Target shape of a service").
"""
