-- Which directory voter an outcome was for (from the outcome event; null for recipients not
-- copied from a voter, and for outcomes recorded before voters existed), so that a voter's
-- page can show what each campaign did for them.
ALTER TABLE recipient_outcomes ADD COLUMN voter_id bigint;

CREATE INDEX recipient_outcomes_voter ON recipient_outcomes (voter_id, occurred_at)
    WHERE voter_id IS NOT NULL;
