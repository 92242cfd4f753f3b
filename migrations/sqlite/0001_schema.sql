-- The relationship model the decision path reads (SQLite dialect: UUIDs as
-- canonical lowercase text). Every lookup it makes is by primary key.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    disabled    INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE teams (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE team_members (
    team_id     TEXT NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user_idx ON team_members (user_id);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES users (id),
    team_id     TEXT REFERENCES teams (id) ON DELETE SET NULL,
    visibility  TEXT NOT NULL CHECK (visibility IN ('private', 'team', 'public')),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX projects_team_idx ON projects (team_id);
CREATE INDEX projects_owner_idx ON projects (owner_id);

CREATE TABLE generations (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    created_by  TEXT NOT NULL REFERENCES users (id),
    parent_id   TEXT REFERENCES generations (id) ON DELETE SET NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX generations_project_idx ON generations (project_id);
CREATE INDEX generations_parent_idx ON generations (parent_id);
CREATE INDEX generations_creator_idx ON generations (created_by, created_at DESC);

CREATE TABLE media (
    id             TEXT PRIMARY KEY,
    generation_id  TEXT NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    object_key     TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('image', 'video')),
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX media_generation_idx ON media (generation_id);
