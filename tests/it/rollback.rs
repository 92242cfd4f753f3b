//! Rolling back across a migration: the current binary starts on a schema
//! one migration ahead of it (a newer release migrated, then was rolled
//! back), on both databases.

use velro_authz::proto::Decision;

use crate::common::{
    Db, TestDb, TestServer,
    fixture::{World, authorize},
    settings,
};
use crate::on_both_databases;

async fn starts_on_a_newer_schema(kind: Db) {
    let db = TestDb::create(kind).await;
    let world = World::new();
    db.store().await.insert_dataset(&world.data).await.unwrap();
    // A release ahead of this one added a column (expand) and recorded its
    // migration.
    db.execute("ALTER TABLE users ADD COLUMN locale TEXT NOT NULL DEFAULT 'en'")
        .await;
    let checksum = match kind {
        Db::Postgres => "'\\x00'::bytea",
        Db::Sqlite => "X'00'",
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'a future release', TRUE, {checksum}, 1)"
    ))
    .await;
    let mut s = settings(&db.url);
    s.migrate_on_start = true;
    let server = TestServer::start(s).await;
    let r = server
        .decide(authorize(
            world.viewer,
            "read",
            "project",
            world.team.project,
        ))
        .await;
    assert_eq!(r.decision(), Decision::Allow);
    server.stop().await;
}
on_both_databases!(
    the_current_binary_starts_on_a_schema_one_migration_ahead,
    starts_on_a_newer_schema
);
