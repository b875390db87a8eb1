-- Per-campaign counters: one row updated once per consumed batch, never per message.
CREATE TABLE campaigns (
    campaign_id   uuid PRIMARY KEY,
    total         integer,               -- known once the `started` event is seen
    channel       text,
    completed     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    skipped       bigint NOT NULL DEFAULT 0,
    state         text NOT NULL DEFAULT 'sending' CHECK (state IN ('sending', 'completed')),
    started_at    timestamptz,
    completed_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per recipient × channel that reached a terminal state. Its primary key is what makes
-- counting idempotent: an outcome seen twice inserts nothing the second time.
CREATE TABLE recipient_outcomes (
    campaign_id          uuid NOT NULL,
    recipient_id         bigint NOT NULL,
    channel              text NOT NULL,
    status               text NOT NULL CHECK (status IN ('completed', 'failed', 'skipped')),
    reason               text,
    provider_message_id  text,
    event_id             uuid NOT NULL,
    occurred_at          timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, recipient_id, channel)
);

-- Offsets applied, written in the same transaction as their effects.
CREATE TABLE consumer_offsets (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
