-- Authentication: password hashes, sessions and single-use refresh tokens.
-- Times are unix seconds (INTEGER) so both dialects bind the same types.

ALTER TABLE users ADD COLUMN password_hash TEXT;

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    client_ip      TEXT NOT NULL DEFAULT '',
    user_agent     TEXT NOT NULL DEFAULT '',
    last_seen_at   INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id) WHERE revoked_at IS NULL;

-- Only a SHA-256 of each refresh token is stored; `used_at_ms` (unix
-- milliseconds, to tell a concurrent race from a later reuse) makes it single use.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at_ms  INTEGER
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- Disabling a user ends all their sessions, whoever writes the flag.
CREATE TRIGGER users_disabled_ends_sessions
    AFTER UPDATE OF disabled ON users
    WHEN NEW.disabled = 1 AND OLD.disabled = 0
BEGIN
    UPDATE sessions
       SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER), revoked_reason = 'user disabled'
     WHERE user_id = NEW.id AND revoked_at IS NULL;
END;
