-- Counters per reason: skipped (opted_out, missing_address, aborted, not_sent, ...), failed
-- (the provider's or renderer's reason) and not delivered (the receipt's reason), per campaign
-- and channel. Updated in the statement that counts the outcomes / receipts, once per batch.
CREATE TABLE campaign_reasons (
    campaign_id  uuid NOT NULL,
    channel      text NOT NULL,
    status       text NOT NULL CHECK (status IN ('failed', 'skipped', 'not_delivered')),
    reason       text NOT NULL,   -- '' when the producer gave none
    n            bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, channel, status, reason)
);
INSERT INTO campaign_reasons (campaign_id, channel, status, reason, n)
SELECT campaign_id, channel, status, coalesce(reason, ''), count(*)
FROM recipient_outcomes WHERE status IN ('failed', 'skipped')
GROUP BY 1, 2, 3, 4;
INSERT INTO campaign_reasons (campaign_id, channel, status, reason, n)
SELECT campaign_id, channel, 'not_delivered', coalesce(delivery_reason, ''), count(*)
FROM recipient_outcomes WHERE delivery = 'not_delivered'
GROUP BY 1, 2, 4;

-- The organisation a campaign belongs to, from its `started` event: progress, recipients,
-- report and voter history are answered only to users of that organisation. Campaigns
-- projected before this column existed stay NULL, i.e. visible to nobody.
ALTER TABLE campaigns ADD COLUMN organisation_id uuid;

-- API tokens as the scheduler issued them (sendout.identity.v1): the tracker authenticates
-- the same `Authorization: Bearer` tokens without calling the scheduler. Hashes only.
CREATE TABLE api_tokens (
    token_hash       bytea PRIMARY KEY,
    user_id          uuid NOT NULL,
    organisation_id  uuid NOT NULL,
    user_name        text NOT NULL,
    revoked_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
