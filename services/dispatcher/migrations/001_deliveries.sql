-- What each campaign renders with, learnt from `started` lifecycle events.
CREATE TABLE templates (
    campaign_id       uuid PRIMARY KEY,
    organisation_id   uuid,
    template_id       uuid NOT NULL,
    template_version  integer NOT NULL,
    templates         jsonb NOT NULL,   -- {channel: {body, subject}}
    sender            jsonb NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);

-- Campaigns whose send-out was aborted: no provider call starts for them any more.
CREATE TABLE aborted_campaigns (
    campaign_id  uuid PRIMARY KEY,
    aborted_at   timestamptz NOT NULL DEFAULT now()
);

-- Organisations' opted-out addresses: never messaged.
CREATE TABLE opt_outs (
    organisation_id  uuid NOT NULL,
    address          text NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organisation_id, address)
);

-- One row per (campaign, recipient, channel): the dedupe key. A row without an outcome is a
-- claim whose send may or may not have reached the provider (a crash in between); it is retried
-- with the same idempotency key. A row with an outcome is never sent again, only re-reported.
CREATE TABLE deliveries (
    campaign_id   uuid NOT NULL,
    recipient_id  bigint NOT NULL,
    channel       text NOT NULL,
    request_id    uuid NOT NULL,
    outcome       jsonb,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz,
    PRIMARY KEY (campaign_id, recipient_id, channel)
);
