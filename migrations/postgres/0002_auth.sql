-- Authentication: password hashes, sessions and single-use refresh tokens.
-- Times are unix seconds (BIGINT) so both dialects bind the same types.

ALTER TABLE users ADD COLUMN password_hash TEXT;

CREATE TABLE sessions (
    id             UUID PRIMARY KEY,
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    client_ip      TEXT NOT NULL DEFAULT '',
    user_agent     TEXT NOT NULL DEFAULT '',
    last_seen_at   BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id) WHERE revoked_at IS NULL;

-- Only a SHA-256 of each refresh token is stored; `used_at_ms` (unix
-- milliseconds, to tell a concurrent race from a later reuse) makes it single use.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    session_id  UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at_ms  BIGINT
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- Disabling a user ends all their sessions, whoever writes the flag.
CREATE FUNCTION end_sessions_of_disabled_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions
       SET revoked_at = EXTRACT(EPOCH FROM now())::BIGINT, revoked_reason = 'user disabled'
     WHERE user_id = NEW.id AND revoked_at IS NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_disabled_ends_sessions
    AFTER UPDATE OF disabled ON users
    FOR EACH ROW WHEN (NEW.disabled AND NOT OLD.disabled)
    EXECUTE FUNCTION end_sessions_of_disabled_user();
