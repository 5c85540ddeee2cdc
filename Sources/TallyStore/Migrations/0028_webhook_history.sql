-- The webhook outbox keeps its history for a while, not for ever (found by a review).
--
-- Every event stays in webhook_outbox once delivered or dead-lettered, so the table, and the
-- counts `tally webhooks list` reads for each endpoint, grew with every event ever sent. The
-- dispatcher now deletes, once an hour, the rows that left the queue more than the history's
-- length ago (30 days unless `tally serve --webhook-history-days` says otherwise), reading
-- them through this index; pending rows are never deleted.

CREATE INDEX webhook_outbox_history_idx ON webhook_outbox (created_at) WHERE status <> 'pending';
