-- Delivery receipts refine a `completed` recipient into delivered / not delivered, and the
-- recipient report needs the address each message went to (carried on outcome events).
ALTER TABLE recipient_outcomes
    ADD COLUMN address         text,
    ADD COLUMN delivery        text CHECK (delivery IN ('delivered', 'not_delivered')),
    ADD COLUMN delivery_reason text,
    ADD COLUMN delivered_at    timestamptz;

-- Receipts name only the provider's message id.
CREATE INDEX recipient_outcomes_provider_message ON recipient_outcomes (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Counted once per recipient × channel (the first final receipt wins), per batch of receipts.
ALTER TABLE campaign_channels
    ADD COLUMN delivered     bigint NOT NULL DEFAULT 0,
    ADD COLUMN not_delivered bigint NOT NULL DEFAULT 0;

-- A receipt that overtook its outcome (the provider answered before our outcome reached the
-- tracker): kept here and applied in the transaction that projects the outcome. The first
-- receipt for a message id wins here too.
CREATE TABLE receipts_pending (
    provider_message_id  text PRIMARY KEY,
    status               text NOT NULL CHECK (status IN ('delivered', 'not_delivered')),
    reason               text,
    reported_at          timestamptz NOT NULL,
    event_id             uuid NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now()
);
