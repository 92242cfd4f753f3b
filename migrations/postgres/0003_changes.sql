-- The change log every writer feeds: triggers on the relationship tables
-- record what a change can affect, with a monotonically increasing
-- revision, and notify listeners. Replicas read it to drop cached
-- permission sets; `velro_authz_revision()` gives a writer its revision.

CREATE TABLE authz_changes (
    revision    BIGSERIAL PRIMARY KEY,
    -- 'project' (everything in a project), 'resource' (one id), 'member'
    -- (a user in a team) or 'user' (everything of a user)
    scope       TEXT NOT NULL,
    subject_id  TEXT,
    team_id     TEXT,
    target_id   TEXT,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION velro_authz_revision() RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT COALESCE(MAX(revision), 0) FROM authz_changes
$$;

CREATE FUNCTION authz_record(scope TEXT, subject UUID, team UUID, target UUID) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO authz_changes (scope, subject_id, team_id, target_id)
    VALUES (scope, subject::text, team::text, target::text);
    -- A constant payload: PostgreSQL sends it once per transaction, and
    -- listeners read the log itself, not the payload.
    PERFORM pg_notify('velro_authz_changes', '');
END
$$;

CREATE FUNCTION authz_members_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN PERFORM authz_record('member', OLD.user_id, OLD.team_id, NULL); END IF;
    IF TG_OP <> 'DELETE' THEN PERFORM authz_record('member', NEW.user_id, NEW.team_id, NULL); END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER team_members_changes AFTER INSERT OR UPDATE OR DELETE ON team_members
    FOR EACH ROW EXECUTE FUNCTION authz_members_changed();

CREATE FUNCTION authz_projects_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN PERFORM authz_record('resource', NULL, NULL, NEW.id);
    ELSE PERFORM authz_record('project', NULL, NULL, OLD.id); END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER projects_changes AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION authz_projects_changed();

-- A new generation only ends "not found" answers for its id; a changed or
-- removed one can change answers on it and its media: its project is dropped.
CREATE FUNCTION authz_generations_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN PERFORM authz_record('resource', NULL, NULL, NEW.id);
    ELSE
        PERFORM authz_record('project', NULL, NULL, OLD.project_id);
        IF TG_OP = 'UPDATE' AND NEW.project_id <> OLD.project_id THEN
            PERFORM authz_record('project', NULL, NULL, NEW.project_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER generations_changes AFTER INSERT OR UPDATE OR DELETE ON generations
    FOR EACH ROW EXECUTE FUNCTION authz_generations_changed();

CREATE FUNCTION authz_media_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN PERFORM authz_record('resource', NULL, NULL, OLD.id); END IF;
    IF TG_OP <> 'DELETE' THEN PERFORM authz_record('resource', NULL, NULL, NEW.id); END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER media_changes AFTER INSERT OR UPDATE OR DELETE ON media
    FOR EACH ROW EXECUTE FUNCTION authz_media_changed();

CREATE FUNCTION authz_users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM authz_record('user', OLD.id, NULL, NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER users_changes AFTER UPDATE OF disabled OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION authz_users_changed();
