-- Sessions join the change log: revoking or removing one records its id
-- (scope 'resource'), so every replica drops what it cached about it.

CREATE TRIGGER sessions_revoked_changes AFTER UPDATE OF revoked_at, user_id ON sessions
WHEN NEW.revoked_at IS NOT OLD.revoked_at OR NEW.user_id IS NOT OLD.user_id BEGIN
    INSERT INTO authz_changes (scope, subject_id, target_id) VALUES ('resource', OLD.user_id, OLD.id);
END;
CREATE TRIGGER sessions_deleted_changes AFTER DELETE ON sessions BEGIN
    INSERT INTO authz_changes (scope, subject_id, target_id) VALUES ('resource', OLD.user_id, OLD.id);
END;
