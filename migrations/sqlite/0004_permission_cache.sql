-- The database tier of the permission-set cache: computed sets shared by
-- replicas, versioned by change-log revision like the Redis tier.
CREATE TABLE permission_cache (
    cache_key   TEXT PRIMARY KEY,
    payload     TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
