-- Erasure reaches every copy: when a campaign ends, the snapshots of erased voters it held are
-- blanked (as before) and a `RecipientsErased` event naming them is written to the outbox in
-- the same transaction, for the tracker and the dispatchers to blank their copies too. The
-- JSON is shared.events.RecipientsErased; the topic is shared.topics.ERASURES.
CREATE OR REPLACE FUNCTION blank_erased_recipients() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    erased json;
BEGIN
    WITH blanked AS (
        UPDATE recipients
        SET email = NULL, phone = NULL, first_name = NULL, last_name = NULL,
            attributes = '{}'::jsonb, erase_pending = false
        WHERE campaign_id = NEW.id AND erase_pending
        RETURNING id
    )
    SELECT json_agg(json_build_object('campaign_id', NEW.id, 'recipient_id', id) ORDER BY id)
    INTO erased FROM blanked;
    IF erased IS NOT NULL THEN
        INSERT INTO outbox (topic, key, value)
        VALUES ('sendout.erasures.v1', uuid_send(NEW.organisation_id), convert_to(
            json_build_object(
                'event_id', gen_random_uuid(), 'organisation_id', NEW.organisation_id,
                'voter_id', NULL, 'recipients', erased, 'occurred_at', now(),
                'schema_version', 1)::text,
            'UTF8'));
        PERFORM pg_notify('sendout_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
