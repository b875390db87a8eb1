"""Rule: each event is counted once, in the transaction that stores its consumed offset.

The tracker projects outcomes into each campaign's progress and its per-recipient rows
(schema `tracker`), refines them with delivery receipts, and serves progress, the recipient
report and voter history. Rooms: bootstrap.py (settings → pool, broker, publishers,
subscribers and pollers: the running tracker's dependencies), app.py (the HTTP app, built
without a database), entrypoints/ (HTTP route modules under http/, the Kafka subscribers in
kafka.py); the other flat modules are yet to move into that shape (domain.py and service.py
the projection, receipts_*.py the receipts, twilio_callbacks.py Twilio's statuses in our
words, identity.py the tokens, report.py the CSV, *repo.py the SQL;
../../shared/STYLE.md, "Target shape of a service").
"""
