//! Login storms are shed by expected wait: a login whose hash could not
//! start within `password_max_wait` is refused at once with the time to
//! retry (and audited as shed); one that fits is served.

use std::time::Duration;

use futures::future::join_all;
use tonic::Code;
use tonic_types::StatusExt;
use velro_authz::{audit::AuditFilter, support::duration::HumanDuration};

use crate::common::{
    Db, eventually,
    login::{PASSWORD, auth_server},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_cannot_start_in_time_is_refused_at_once_and_audited() {
    let w = auth_server(Db::Sqlite, |s| {
        // A hash slow enough to queue behind, one hashing thread, and a
        // budget smaller than one hash: only a login that finds the thread
        // free fits.
        s.argon2_memory_kib = 32 * 1024;
        s.argon2_iterations = 2;
        s.password_workers = 1;
        s.password_max_wait = HumanDuration(Duration::from_millis(1));
    })
    .await;
    let users = [
        w.world.viewer,
        w.world.editor,
        w.world.admin,
        w.world.owner,
        w.world.creator,
        w.world.outsider,
    ];
    let answers = join_all(users.iter().map(|u| w.login(*u, PASSWORD))).await;
    let served = answers.iter().filter(|a| a.is_ok()).count();
    let shed: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(served >= 1, "a login that fits is served");
    assert!(
        !shed.is_empty(),
        "six logins at once cannot all start within 1 ms"
    );
    for status in &shed {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("password_max_wait"),
            "{}",
            status.message()
        );
        let retry = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert!(
            retry.is_some_and(|d| d > Duration::ZERO),
            "RetryInfo: {status:?}"
        );
    }
    // A small burst that fits the budget queues instead of failing.
    let one = w.login(w.world.viewer, PASSWORD).await;
    assert!(one.is_ok(), "{one:?}");
    let store = w.db.store().await;
    eventually(
        Duration::from_secs(10),
        "the shed logins audited",
        || async {
            let events = store
                .audit_events(&AuditFilter {
                    limit: 1_000,
                    ..AuditFilter::default()
                })
                .await
                .unwrap();
            let n = events.iter().filter(|e| e.decision == "login_shed").count();
            match n == shed.len() {
                true => Ok(()),
                false => Err(format!("{n} of {} shed logins audited", shed.len())),
            }
        },
    )
    .await;
    w.server.stop().await;
}
