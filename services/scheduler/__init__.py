"""Rule: a campaign changes state only in a use case, as its model decides, in one unit of work.

The scheduler takes operators' commands (HTTP), keeps campaigns, recipients, voters and users
(schema `scheduler`), fans campaigns out into send requests and publishes its events through
the outbox. Rooms: bootstrap.py (settings → the running scheduler's dependencies), app.py (the
HTTP app, built without a database), entrypoints/ (HTTP route modules under http/, the
Kafka subscribers in kafka.py), campaigns/ (the campaign model with the rules of peer to
peer, its use cases, recipients CSV uploads and sends to a voter included, their unit of work,
its read views), identity/ (organisations, users, API tokens, passwords and sign-in:
model, use cases, unit of work), content/ (senders and templates: model, use cases, unit of
work, read views), opt_outs/ (opted-out addresses, by the API or a STOP reply: model, use
cases, unit of work), adapters/ (the asyncpg unit of work; repositories.py, the SQL
of the rooms above that moved), voters/ (the voter directory); the other flat
modules are yet to move into that shape (../../shared/STYLE.md, "Target shape of a service").
"""
