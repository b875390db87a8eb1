-- One row per campaign: its state and when it moved.
CREATE TABLE campaigns (
    campaign_id   uuid PRIMARY KEY,
    state         text NOT NULL DEFAULT 'sending'
        CHECK (state IN ('sending', 'aborting', 'completed', 'aborted')),
    started       boolean NOT NULL DEFAULT false,  -- the `started` event (with totals) was seen
    started_at    timestamptz,
    aborted_at    timestamptz,
    completed_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Counters per campaign and channel: updated once per consumed batch, never per message.
CREATE TABLE campaign_channels (
    campaign_id   uuid NOT NULL,
    channel       text NOT NULL,
    total         integer,               -- known once the `started` event is seen
    completed     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    skipped       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, channel)
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
