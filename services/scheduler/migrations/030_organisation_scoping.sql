-- Senders and templates belong to an organisation, like campaigns, voters and lists: a user
-- sees and uses only their organisation's. Rows from before belong to the default one.
ALTER TABLE senders
    ADD COLUMN organisation_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
        REFERENCES organisations (id);
ALTER TABLE templates
    ADD COLUMN organisation_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000001'
        REFERENCES organisations (id);
ALTER TABLE senders ALTER COLUMN organisation_id DROP DEFAULT;
ALTER TABLE templates ALTER COLUMN organisation_id DROP DEFAULT;
ALTER TABLE campaigns ALTER COLUMN organisation_id DROP DEFAULT;
CREATE INDEX campaigns_organisation ON campaigns (organisation_id, created_at DESC);

-- The audit log names the user who acted, not only a name.
ALTER TABLE audit_log ADD COLUMN user_id uuid;
