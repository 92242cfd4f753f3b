-- Security events carry the client's user agent; every event the trace it
-- belongs to (W3C trace id), so a decision can be found from a trace.
-- Expand-only: an older binary ignores both columns.
ALTER TABLE audit_log ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';
