-- Fencing a batch of send-request records that another consumer has taken over.
--
-- Every attempt at a batch registers here (with its Kafka positions in `batch_spans`) before
-- it claims a message, and supersedes every earlier attempt at any of those positions. A
-- superseded attempt's claims are refused from then on (each claim holds its batch's row in
-- share mode, the takeover updates it), so the messages it had not claimed yet are the new
-- attempt's alone: a consumer that kept going after a rebalance moved its partition away
-- cannot send what the partition's new owner sends.
CREATE TABLE batches (
    batch_id       uuid PRIMARY KEY,
    owner          text NOT NULL,
    superseded_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- (Batches of earlier versions have spans and claims but no row here: their claims are read
-- as before; there is nothing to fence once those processes are gone.)
