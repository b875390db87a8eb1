"""The operator CLI (`./sendout admin ...`, `sendout-admin`): users and tokens, campaigns,
their live progress, aborts, reports and dead letters, through the services' HTTP APIs (and
devtools.dlq for dead letters)."""
