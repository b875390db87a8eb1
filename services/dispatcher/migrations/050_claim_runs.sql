-- Claims hold their recipient ids as runs of consecutive ids (a worker's step claims a run
-- of a batch's recipients, nearly always one range): a few bytes where an array of every
-- id took kilobytes, compressed and parsed again on every step. Rows written before keep
-- their array until they are pruned.
ALTER TABLE claims ADD COLUMN recipient_runs int8multirange;
ALTER TABLE claims ALTER COLUMN recipient_ids DROP NOT NULL;
