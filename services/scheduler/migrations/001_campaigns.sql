CREATE TABLE campaigns (
    id                        uuid PRIMARY KEY,
    name                      text NOT NULL,
    channel                   text NOT NULL CHECK (channel IN ('email', 'sms')),
    sender_name               text NOT NULL,
    sender_email              text,
    sender_sms_id             text,
    subject                   text,
    template_id               uuid NOT NULL,
    template_version          integer NOT NULL,
    template_body             text NOT NULL,
    state                     text NOT NULL DEFAULT 'draft'
        CHECK (state IN ('draft', 'scheduled', 'sending', 'aborting', 'aborted', 'completed')),
    total                     integer,
    started_event_id          uuid,
    -- Fan-out checkpoint: every recipient with id <= this was published as send-requested.
    fanout_after_id           bigint NOT NULL DEFAULT 0,
    fanout_done               boolean NOT NULL DEFAULT false,
    final_counts              jsonb,
    created_at                timestamptz NOT NULL DEFAULT now(),
    started_at                timestamptz,
    completed_at              timestamptz
);

CREATE INDEX campaigns_unfinished_fanout ON campaigns (id) WHERE state = 'sending' AND NOT fanout_done;

CREATE TABLE recipients (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    email        text,
    phone        text,
    first_name   text,
    last_name    text,
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Keyset pagination of a campaign's recipients during fan-out.
CREATE INDEX recipients_campaign_id_id ON recipients (campaign_id, id);

CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
