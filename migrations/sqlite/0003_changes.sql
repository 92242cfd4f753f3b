-- The change log every writer feeds: triggers on the relationship tables
-- record what a change can affect, with a monotonically increasing
-- revision. Replicas poll it to drop cached permission sets; a writer's
-- revision is `SELECT COALESCE(MAX(revision), 0) FROM authz_changes`.

CREATE TABLE authz_changes (
    revision    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'project' (everything in a project), 'resource' (one id), 'member'
    -- (a user in a team) or 'user' (everything of a user)
    scope       TEXT NOT NULL,
    subject_id  TEXT,
    team_id     TEXT,
    target_id   TEXT,
    changed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TRIGGER team_members_insert AFTER INSERT ON team_members BEGIN
    INSERT INTO authz_changes (scope, subject_id, team_id) VALUES ('member', NEW.user_id, NEW.team_id);
END;
CREATE TRIGGER team_members_update AFTER UPDATE ON team_members BEGIN
    INSERT INTO authz_changes (scope, subject_id, team_id) VALUES ('member', OLD.user_id, OLD.team_id);
    INSERT INTO authz_changes (scope, subject_id, team_id) VALUES ('member', NEW.user_id, NEW.team_id);
END;
CREATE TRIGGER team_members_delete AFTER DELETE ON team_members BEGIN
    INSERT INTO authz_changes (scope, subject_id, team_id) VALUES ('member', OLD.user_id, OLD.team_id);
END;

CREATE TRIGGER projects_insert AFTER INSERT ON projects BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('resource', NEW.id);
END;
CREATE TRIGGER projects_update AFTER UPDATE ON projects BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('project', OLD.id);
END;
CREATE TRIGGER projects_delete AFTER DELETE ON projects BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('project', OLD.id);
END;

CREATE TRIGGER generations_insert AFTER INSERT ON generations BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('resource', NEW.id);
END;
CREATE TRIGGER generations_update AFTER UPDATE ON generations BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('project', OLD.project_id);
    INSERT INTO authz_changes (scope, target_id)
        SELECT 'project', NEW.project_id WHERE NEW.project_id <> OLD.project_id;
END;
CREATE TRIGGER generations_delete AFTER DELETE ON generations BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('project', OLD.project_id);
END;

CREATE TRIGGER media_insert AFTER INSERT ON media BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('resource', NEW.id);
END;
CREATE TRIGGER media_update AFTER UPDATE ON media BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('resource', OLD.id);
END;
CREATE TRIGGER media_delete AFTER DELETE ON media BEGIN
    INSERT INTO authz_changes (scope, target_id) VALUES ('resource', OLD.id);
END;

CREATE TRIGGER users_disabled_changes AFTER UPDATE OF disabled ON users BEGIN
    INSERT INTO authz_changes (scope, subject_id) VALUES ('user', OLD.id);
END;
CREATE TRIGGER users_delete_changes AFTER DELETE ON users BEGIN
    INSERT INTO authz_changes (scope, subject_id) VALUES ('user', OLD.id);
END;
