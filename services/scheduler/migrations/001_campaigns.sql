CREATE TABLE senders (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    email          text,
    sms_sender_id  text,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Editing a template adds a version; a campaign pins the version it was created with.
CREATE TABLE template_versions (
    template_id    uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version        integer NOT NULL,
    email_subject  text,
    email_body     text,
    sms_body       text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

CREATE TABLE campaigns (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    kind              text NOT NULL DEFAULT 'mass' CHECK (kind IN ('mass', 'individual')),
    channels          text[] NOT NULL
        CHECK (cardinality(channels) >= 1 AND channels <@ ARRAY['email', 'sms']),
    sender_id         uuid NOT NULL REFERENCES senders (id),
    template_id       uuid NOT NULL,
    template_version  integer NOT NULL,
    state             text NOT NULL DEFAULT 'draft'
        CHECK (state IN ('draft', 'scheduled', 'sending', 'aborting', 'aborted', 'completed')),
    scheduled_for     timestamptz,
    total             integer,
    started_event_id  uuid,
    -- Fan-out checkpoint: every recipient with id <= this was published as send-requested.
    fanout_after_id   bigint NOT NULL DEFAULT 0,
    fanout_done       boolean NOT NULL DEFAULT false,
    -- How many messages were still pending when an abort was acknowledged.
    abort_pending     integer,
    final_counts      jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    aborted_at        timestamptz,
    completed_at      timestamptz,
    FOREIGN KEY (template_id, template_version) REFERENCES template_versions (template_id, version),
    CHECK (state <> 'scheduled' OR scheduled_for IS NOT NULL)
);

CREATE INDEX campaigns_unfinished_fanout ON campaigns (started_at) WHERE NOT fanout_done;
-- The schedule loop's question, "what is due?", answered from a small index.
CREATE INDEX campaigns_due ON campaigns (scheduled_for) WHERE state = 'scheduled';

CREATE TABLE recipients (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id    uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- Normalised (email lower-cased domain, phone E.164) when valid; as given when invalid.
    email          text,
    email_invalid  boolean NOT NULL DEFAULT false,
    phone          text,
    phone_invalid  boolean NOT NULL DEFAULT false,
    first_name     text,
    last_name      text,
    attributes     jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Keyset pagination of a campaign's recipients during fan-out.
CREATE INDEX recipients_campaign_id_id ON recipients (campaign_id, id);

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    action       text NOT NULL,
    actor        text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    details      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_campaign ON audit_log (campaign_id, id);

CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
