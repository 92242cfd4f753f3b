-- Each replica reports how far it has read the change log, so that the
-- log can be pruned below what every live replica has passed.
CREATE TABLE authz_replicas (
    replica_id        TEXT PRIMARY KEY,
    applied_revision  BIGINT NOT NULL,
    seen_at_ms        BIGINT NOT NULL
);
