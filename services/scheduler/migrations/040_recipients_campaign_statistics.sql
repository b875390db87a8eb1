-- Campaign sizes are skewed: one campaign of a million recipients beside many of ten. ANALYZE
-- samples such a table and finds one or a few distinct campaign ids, so the planner expects
-- "recipients of this campaign" to be most of the table and counts them (the campaign view,
-- the start of a send-out) with a sequential scan of all of it — 100+ ms a request for a
-- campaign of one recipient, seen once a 1M campaign was loaded. Declaring campaign ids as
-- many (a campaign a thousand rows on average) keeps those lookups on the
-- (campaign_id, id) index, which suits the big campaign too.
ALTER TABLE recipients ALTER COLUMN campaign_id SET (n_distinct = -0.001);
ANALYZE recipients;
