-- The database tier of the permission-set cache: computed sets shared by
-- replicas, versioned by change-log revision like the Redis tier. UNLOGGED:
-- it is a cache, a crash may empty it, and it costs no WAL.
CREATE UNLOGGED TABLE permission_cache (
    cache_key   TEXT PRIMARY KEY,
    payload     TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
