//! Retention on both databases: a prune removes what may go (old audit
//! events, the change log below every live replica, ended sessions, expired
//! refresh tokens and cache rows) and keeps what must stay.

use uuid::Uuid;
use velro_authz::{
    audit::AuditEvent,
    store::{auth::NewSession, retention::PruneLimits},
    support::clock::now_ms,
};

use crate::common::{Db, TestDb, fixture::World};
use crate::on_both_databases;

const DAY_MS: i64 = 86_400_000;

fn audit_event(at_ms: i64) -> AuditEvent {
    AuditEvent {
        id: Uuid::now_v7(),
        at_ms,
        kind: "decision".into(),
        subject: "retention".into(),
        decision: "allow".into(),
        ..AuditEvent::default()
    }
}

async fn prune_keeps_what_must_stay(kind: Db) {
    let db = TestDb::create(kind).await;
    let world = World::new();
    let store = db.store().await;
    store.insert_dataset(&world.data).await.unwrap();
    let now = now_ms();
    let now_s = now / 1000;

    // Audit: two events past a 90-day retention, two within it.
    let events = [
        audit_event(now - 200 * DAY_MS),
        audit_event(now - 91 * DAY_MS),
        audit_event(now - 89 * DAY_MS),
        audit_event(now),
    ];
    store.insert_audit(&events).await.unwrap();

    // Sessions: revoked a month ago (ended), revoked yesterday (kept for
    // investigations), live; one refresh token expired.
    let (ended, recent, live) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (id, hash, expires) in [
        (ended, "h-ended", now_s + 3600),
        (recent, "h-recent", now_s + 3600),
        (live, "h-live", now_s + 3600),
    ] {
        store
            .create_session(NewSession {
                id,
                user_id: world.viewer,
                client_ip: "192.0.2.1",
                user_agent: "tests",
                now: now_s - 40 * 86_400,
                refresh_hash: hash,
                refresh_expires_at: expires,
            })
            .await
            .unwrap();
    }
    db.execute(&format!(
        "UPDATE sessions SET revoked_at = {} WHERE id = '{ended}'",
        now_s - 30 * 86_400
    ))
    .await;
    db.execute(&format!(
        "UPDATE sessions SET revoked_at = {} WHERE id = '{recent}'",
        now_s - 86_400
    ))
    .await;
    db.execute(&format!(
        "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
         VALUES ('h-old', '{live}', {}, {})",
        now_s - 40 * 86_400,
        now_s - 10 * 86_400
    ))
    .await;

    // Cache tier: one expired row, one live.
    store.store_set("k-old", "x", 1, now_s - 60).await.unwrap();
    store.store_set("k-new", "x", 1, now_s + 600).await.unwrap();

    // Change log: replica A has read up to the middle of it, replica B is
    // further behind but has not been seen for an hour (it no longer counts).
    let newest = store.current_revision().await.unwrap();
    assert!(newest > 10, "the data set wrote the change log ({newest})");
    let floor = newest / 2;
    store.heartbeat("replica-a", floor, now).await.unwrap();
    store
        .heartbeat("replica-b", 1, now - 3_600_000)
        .await
        .unwrap();

    let limits = PruneLimits {
        now_ms: now,
        audit_retention_ms: 90 * DAY_MS,
        replica_timeout_ms: 600_000,
        keep_changes: 0,
        ended_session_grace_s: 7 * 86_400,
    };
    let report = store
        .prune(&limits)
        .await
        .unwrap()
        .expect("no other pruner");
    assert_eq!(report.audit_events, 2, "{report}");
    assert_eq!(report.change_floor, floor, "{report}");
    assert_eq!(report.changes as i64, floor, "{report}");
    assert_eq!(report.refresh_tokens, 1, "{report}");
    assert_eq!(report.sessions, 1, "{report}");
    assert_eq!(report.cache_rows, 1, "{report}");

    assert_eq!(db.number("SELECT COUNT(*) FROM audit_log").await, 2);
    assert_eq!(
        db.number("SELECT COALESCE(MIN(revision), 0) FROM authz_changes")
            .await,
        floor + 1,
        "every revision a live replica may still need is kept"
    );
    assert_eq!(db.number("SELECT COUNT(*) FROM sessions").await, 2);
    assert_eq!(
        db.number(&format!(
            "SELECT COUNT(*) FROM sessions WHERE id = '{ended}'"
        ))
        .await,
        0
    );
    assert_eq!(db.number("SELECT COUNT(*) FROM refresh_tokens").await, 2);
    assert_eq!(db.number("SELECT COUNT(*) FROM permission_cache").await, 1);
    assert_eq!(
        db.number("SELECT COUNT(*) FROM authz_replicas").await,
        1,
        "stale replica forgotten"
    );

    // A second prune finds nothing more; an audit retention of 0 keeps all.
    let again = PruneLimits {
        audit_retention_ms: 0,
        ..limits
    };
    let report = store.prune(&again).await.unwrap().expect("no other pruner");
    assert_eq!(
        (report.audit_events, report.sessions, report.cache_rows),
        (0, 0, 0)
    );
    store.close().await;
}
on_both_databases!(prune_on_both_databases, prune_keeps_what_must_stay);
