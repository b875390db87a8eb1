-- Per-message failure isolation: a message's provider call is claimed before it starts, its
-- outcome recorded as calls complete, and a retryable failure handed to a retry schedule.

-- Where a batch of send-request records came from (one row per partition it read), written
-- with its first claim: a redelivered batch finds the claims of its earlier attempts by the
-- offsets it holds, and a fresh batch finds nothing in one index probe.
CREATE TABLE batch_spans (
    batch_id         uuid NOT NULL,
    topic_partition  integer NOT NULL,
    first_offset     bigint NOT NULL,
    last_offset      bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batch_spans_by_offset ON batch_spans (topic_partition, last_offset);

-- Messages whose provider calls may have started: one row per group claimed at once. The
-- owner refreshes `claimed_at` while it works; a key claimed here with no outcome in
-- `deliveries` and a stale claim is in doubt (its call may have reached the provider).
CREATE TABLE claims (
    batch_id       uuid NOT NULL,
    campaign_id    uuid NOT NULL,
    channel        text NOT NULL,
    recipient_ids  bigint[] NOT NULL,
    claimed_by     text NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX claims_by_batch ON claims (batch_id);
CREATE INDEX claims_by_campaign ON claims (campaign_id);

-- One row per campaign that claims go through: an abort sets `aborted_at` under the row's
-- lock, so every claim after it is refused and every claim before it is counted.
CREATE TABLE gates (
    campaign_id  uuid PRIMARY KEY,
    aborted_at   timestamptz
);
INSERT INTO gates (campaign_id, aborted_at)
SELECT campaign_id, aborted_at FROM aborted_campaigns ON CONFLICT DO NOTHING;

-- The retry schedule: messages whose last call failed retryably, or that wait for a
-- provider's breaker to close. status: waiting (until due_at), sending (claimed by `owner`
-- at `claimed_at`, refreshed while it works), settled (outcome recorded, to publish).
CREATE TABLE retries (
    campaign_id   uuid NOT NULL,
    recipient_id  bigint NOT NULL,
    channel       text NOT NULL,
    request       json NOT NULL,
    status        text NOT NULL DEFAULT 'waiting',
    attempts      integer NOT NULL DEFAULT 0,
    first_at      timestamptz NOT NULL DEFAULT now(),
    due_at        timestamptz NOT NULL,
    last_reason   text,
    owner         text,
    claimed_at    timestamptz,
    PRIMARY KEY (campaign_id, recipient_id, channel)
);
CREATE INDEX retries_due ON retries (due_at) WHERE status = 'waiting';
