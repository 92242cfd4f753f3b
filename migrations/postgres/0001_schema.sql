-- The relationship model the decision path reads. Every lookup it makes is
-- by primary key; the other indexes serve writers, cascades and warming.

CREATE TABLE users (
    id          UUID PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE teams (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE team_members (
    team_id     UUID NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user_idx ON team_members (user_id);

CREATE TABLE projects (
    id          UUID PRIMARY KEY,
    owner_id    UUID NOT NULL REFERENCES users (id),
    team_id     UUID REFERENCES teams (id) ON DELETE SET NULL,
    visibility  TEXT NOT NULL CHECK (visibility IN ('private', 'team', 'public')),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX projects_team_idx ON projects (team_id);
CREATE INDEX projects_owner_idx ON projects (owner_id);

CREATE TABLE generations (
    id          UUID PRIMARY KEY,
    project_id  UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    created_by  UUID NOT NULL REFERENCES users (id),
    parent_id   UUID REFERENCES generations (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX generations_project_idx ON generations (project_id);
CREATE INDEX generations_parent_idx ON generations (parent_id);
CREATE INDEX generations_creator_idx ON generations (created_by, created_at DESC);

CREATE TABLE media (
    id             UUID PRIMARY KEY,
    generation_id  UUID NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    object_key     TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('image', 'video')),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX media_generation_idx ON media (generation_id);
