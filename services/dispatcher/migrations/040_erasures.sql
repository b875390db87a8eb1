-- Erasure events applied (services/dispatcher/erasure.py): which, when, and how many
-- recipients they named — ids and counts only, no personal data.
CREATE TABLE erasures_applied (
    event_id    uuid PRIMARY KEY,
    recipients  integer NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
