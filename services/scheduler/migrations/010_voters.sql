-- Voter directory: voters kept across campaigns, static lists of them, and campaigns that
-- target lists. Recipients stay snapshots: a campaign copies its lists' voters into
-- `recipients` when it starts sending, so editing or deleting a voter never changes a send-out.

-- Substring search over names, emails and phones. In `public` (trusted extension, one per
-- database) so that whichever schema needs trigram operators finds them on its search path.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

-- A voter's identity: its external id, else its email (any case), else its phone. One function,
-- used by the generated column and by the import's staging queries, so they cannot drift apart.
CREATE FUNCTION voter_match_key(external_id text, email text, phone text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
        WHEN external_id IS NOT NULL THEN 'x:' || external_id
        WHEN email IS NOT NULL THEN 'e:' || lower(email)
        WHEN phone IS NOT NULL THEN 'p:' || phone
    END;

CREATE TABLE voters (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Every row names its organisation already (one fixed organisation until organisations
    -- exist), so multi-tenancy needs no data migration. Written explicitly by the code.
    organisation_id     uuid NOT NULL,
    external_id         text,
    first_name          text,
    last_name           text,
    email               text,             -- normalised: domain lower-cased
    phone               text,             -- E.164
    preferred_language  text,
    attributes          jsonb NOT NULL DEFAULT '{}'::jsonb,
    opted_out           boolean NOT NULL DEFAULT false,
    opted_out_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- A voter's identity for upserts (see voter_match_key). Generated, so a CSV re-import is
    -- one INSERT ... ON CONFLICT on its unique index.
    match_key           text GENERATED ALWAYS AS (voter_match_key(external_id, email, phone)) STORED,
    -- What a search matches a substring of (full name, email, phone), lower-cased once here.
    search_text         text GENERATED ALWAYS AS (
        lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '') || ' '
              || coalesce(email, '') || ' ' || coalesce(phone, ''))
    ) STORED,
    CHECK (match_key IS NOT NULL)
);

CREATE UNIQUE INDEX voters_match_key ON voters (organisation_id, match_key);
-- Trigram GIN: `search_text LIKE '%term%'` uses it for any term of 3+ characters (measured in
-- bench/voters_bench.py; a text_pattern_ops btree only serves prefixes of one column).
CREATE INDEX voters_search_trgm ON voters USING gin (search_text gin_trgm_ops);

CREATE TABLE lists (
    id               uuid PRIMARY KEY,
    organisation_id  uuid NOT NULL,
    name             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, name)
);

CREATE TABLE list_members (
    list_id   uuid NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    voter_id  bigint NOT NULL REFERENCES voters (id) ON DELETE CASCADE,
    added_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, voter_id)
);
-- A voter's lists (voter page) and the cascade when a voter is deleted.
CREATE INDEX list_members_voter ON list_members (voter_id);

-- The lists a campaign targets; read once, when the campaign starts sending.
CREATE TABLE campaign_lists (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    list_id      uuid NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    PRIMARY KEY (campaign_id, list_id)
);
CREATE INDEX campaign_lists_list ON campaign_lists (list_id);

-- Recipients snapshotted from voters keep a link to them. Deleting the voter keeps the
-- snapshot (the send-out goes on) and marks it `voter_deleted`.
ALTER TABLE recipients
    ADD COLUMN voter_id bigint REFERENCES voters (id) ON DELETE SET NULL,
    ADD COLUMN voter_deleted boolean NOT NULL DEFAULT false,
    -- Erasure asked while the campaign was still sending: blanked when it ends (trigger below).
    ADD COLUMN erase_pending boolean NOT NULL DEFAULT false;

-- One recipient per voter per campaign (the snapshot relies on it), and a voter's campaigns.
CREATE UNIQUE INDEX recipients_voter_campaign ON recipients (voter_id, campaign_id)
    WHERE voter_id IS NOT NULL;
CREATE INDEX recipients_erase_pending ON recipients (campaign_id) WHERE erase_pending;

-- A trigger rather than a call in the completion code: whatever path ends a campaign
-- (completed, aborted, ended), snapshots of erased voters do not outlive the send-out.
CREATE FUNCTION blank_erased_recipients() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE recipients
    SET email = NULL, phone = NULL, first_name = NULL, last_name = NULL,
        attributes = '{}'::jsonb, erase_pending = false
    WHERE campaign_id = NEW.id AND erase_pending;
    RETURN NULL;
END
$$;

CREATE TRIGGER campaigns_blank_erased_recipients
    AFTER UPDATE OF state ON campaigns
    FOR EACH ROW
    WHEN (NEW.state IN ('completed', 'aborted') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION blank_erased_recipients();
