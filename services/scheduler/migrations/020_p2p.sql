-- Organisations, users and their API tokens (stored hashed: a leaked table is no key).
CREATE TABLE organisations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The organisation every row belonged to before organisations existed.
INSERT INTO organisations (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'default');

CREATE TABLE users (
    id               uuid PRIMARY KEY,
    organisation_id  uuid NOT NULL REFERENCES organisations (id),
    name             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, name)
);

CREATE TABLE api_tokens (
    token_hash  bytea PRIMARY KEY,   -- sha256 of the token
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

ALTER TABLE campaigns
    ADD COLUMN organisation_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
        REFERENCES organisations (id),
    DROP CONSTRAINT campaigns_kind_check,
    ADD CONSTRAINT campaigns_kind_check CHECK (kind IN ('mass', 'individual', 'p2p'));

-- Peer to peer: a recipient is sent only once a user pressed SEND for them.
ALTER TABLE recipients
    ADD COLUMN pressed_at  timestamptz,
    ADD COLUMN pressed_by  uuid;
CREATE INDEX recipients_pressed ON recipients (campaign_id, id) WHERE pressed_at IS NOT NULL;

-- One campaign at a time per user: the primary key is the rule, so two concurrent requests
-- cannot both win. A row lives from "start sending" until the campaign ends.
CREATE TABLE p2p_senders (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    started_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX p2p_senders_campaign ON p2p_senders (campaign_id);

-- Per-organisation suppression list: an address here is never messaged.
CREATE TABLE opt_outs (
    organisation_id  uuid NOT NULL REFERENCES organisations (id),
    address          text NOT NULL,   -- E.164 phone or normalised email
    source           text NOT NULL,   -- 'inbound_sms' | 'api'
    keyword          text,
    at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organisation_id, address)
);
