-- Layer 8: the audit log. Every decision (batch items included), error,
-- alert and administrative action, keyed by its id so that a replayed
-- event is ignored, never written twice. Ids are text: a subject may be a
-- client IP, and rows outlive what they mention.
CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    at_ms         BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    subject       TEXT NOT NULL DEFAULT '',
    action        TEXT NOT NULL DEFAULT '',
    resource_type TEXT NOT NULL DEFAULT '',
    resource_id   TEXT NOT NULL DEFAULT '',
    decision      TEXT NOT NULL DEFAULT '',
    layer         TEXT NOT NULL DEFAULT '',
    reason        TEXT NOT NULL DEFAULT '',
    message       TEXT NOT NULL DEFAULT '',
    cache_tier    TEXT NOT NULL DEFAULT '',
    latency_us    BIGINT NOT NULL DEFAULT 0,
    request_id    TEXT NOT NULL DEFAULT '',
    client_ip     TEXT NOT NULL DEFAULT '',
    session_id    TEXT NOT NULL DEFAULT '',
    flags         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_subject ON audit_log (subject, at_ms);
CREATE INDEX audit_log_resource ON audit_log (resource_id, at_ms);
CREATE INDEX audit_log_at ON audit_log (at_ms);

-- Layer 9: kill switches. A change is recorded in the change log (scope
-- 'kill'), so every replica reloads them at once, whoever wrote.
CREATE TABLE kill_switches (
    scope      TEXT NOT NULL CHECK (scope IN ('global', 'team', 'user')),
    target     TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    set_by     TEXT NOT NULL DEFAULT '',
    set_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
);
CREATE FUNCTION authz_kill_switches_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM authz_record('kill', NULL, NULL, NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER kill_switches_changes AFTER INSERT OR UPDATE OR DELETE ON kill_switches
    FOR EACH STATEMENT EXECUTE FUNCTION authz_kill_switches_changed();

-- Layer 10: a user's rate-limit tier (NULL: the configured default tier).
ALTER TABLE users ADD COLUMN tier TEXT;
