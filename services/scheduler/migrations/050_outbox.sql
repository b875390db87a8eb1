-- Transactional outbox: events written in the same transaction as the state change they
-- report, published to Kafka after commit by the relay (services/scheduler/outbox_relay.py),
-- in id order, and then deleted.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    -- When the row was written (not when its transaction began): the relay's lag is measured
    -- from it.
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Rows Kafka can never take (e.g. a record larger than the broker accepts), set aside with the
-- error so that one of them does not hold back every event behind it.
CREATE TABLE outbox_parked (
    id bigint PRIMARY KEY,
    topic text NOT NULL,
    key bytea,
    value bytea NOT NULL,
    created_at timestamptz NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    error text NOT NULL
);
