-- Sessions join the change log: revoking or removing one records its id
-- (scope 'resource'), so every replica drops what it cached about it.

CREATE FUNCTION authz_sessions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM authz_record('resource', OLD.user_id, NULL, OLD.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER sessions_revoked_changes AFTER UPDATE OF revoked_at, user_id ON sessions
    FOR EACH ROW WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at OR NEW.user_id <> OLD.user_id)
    EXECUTE FUNCTION authz_sessions_changed();
CREATE TRIGGER sessions_deleted_changes AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION authz_sessions_changed();
