-- Nonces of accepted signed webhook requests (shared/webhooks.py): a replay inside the
-- timestamp's skew window is refused. Rows older than twice the window are purged as new
-- requests come.
CREATE TABLE webhook_nonces (
    nonce   text PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_nonces_seen_at ON webhook_nonces (seen_at);
