-- System API (issue 6): top-up replays, lookups by tid / request id.

-- The balance right after a credit or adjustment, so an idempotent top-up replay can answer
-- exactly what the first call answered. NULL for rows written before this column existed and
-- for charges (which settle many requests at once).
ALTER TABLE ledger ADD COLUMN balance_after bigint;

-- GET /api/admin/logs?tid=…|request_id=… looks rejects and audit entries up by these.
CREATE INDEX ingest_rejects_tid_idx ON ingest_rejects (batch_tid);
CREATE INDEX ingest_rejects_request_idx ON ingest_rejects (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_log_tid_idx ON audit_log (tid) WHERE tid IS NOT NULL;

