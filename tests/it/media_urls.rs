//! Layer 6: an allowed media read carries a signed URL; a presented URL is
//! checked without the database, with a distinct reason for each refusal.

use std::time::Duration;

use uuid::Uuid;
use velro_authz::{
    app::config::Settings,
    layers::media_access::signer::UrlKey,
    proto::{self, Consistency, Decision},
    support::duration::HumanDuration,
};

use crate::{
    common::{Db, TestServer, fixture::authorize, proxy::Proxy, settings, world_server},
    on_both_databases,
};

fn keys(s: &mut Settings, ids: &[&str]) {
    s.media_urls.keys = ids
        .iter()
        .map(|id| UrlKey {
            id: (*id).to_owned(),
            secret: format!("{id}: a secret long enough for HMAC-SHA256"),
        })
        .collect();
    s.media_urls.base_url = "https://media.velro.test/o".to_owned();
}

/// Presents `url` for `action` on `media` from `ip`, as an anonymous caller.
fn present(url: &str, action: &str, media: Uuid, ip: &str) -> proto::AuthorizeRequest {
    // Someone the store does not know: the URL is the whole credential.
    let mut request = authorize(Uuid::new_v4(), action, "media", media);
    request.context = Some(proto::RequestContext {
        ip: ip.into(),
        signed_url: url.into(),
        ..Default::default()
    });
    request
}

#[track_caller]
fn refused(r: &proto::AuthorizeResponse, reason: &str) {
    assert_eq!(r.decision(), Decision::Deny, "{r:?}");
    assert_eq!(r.reason, reason, "{r:?}");
    assert_eq!(r.decided_by, "media_access");
}

async fn round_trip(kind: Db) {
    let (_db, w, server) = world_server(kind, |s| keys(s, &["k1"])).await;
    let r = server
        .decide(authorize(w.viewer, "read", "media", w.team.media))
        .await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    let signed = r
        .signed_url
        .clone()
        .unwrap_or_else(|| panic!("no signed URL: {r:?}"));
    assert_eq!(signed.key_id, "k1");
    assert!(
        signed.url.starts_with("https://media.velro.test/o/media/"),
        "{signed:?}"
    );
    let lifetime = signed.expires_at - velro_authz::support::clock::now_unix() as i64;
    assert!(
        (295..=300).contains(&lifetime),
        "default lifetime 5 min: {lifetime}"
    );
    // No URL for other actions, other kinds, or a deny.
    for request in [
        authorize(w.editor, "write", "media", w.team.media),
        authorize(w.viewer, "read", "generation", w.team.generation),
        authorize(w.outsider, "read", "media", w.team.media),
    ] {
        assert!(server.decide(request).await.signed_url.is_none());
    }

    let computed = "velro_authz_permission_computations_total";
    let before = server.metric(computed).await;
    let r = server
        .decide(present(&signed.url, "read", w.team.media, "192.0.2.1"))
        .await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    assert_eq!(r.decided_by, "media_access");
    assert_eq!(r.reason, "SIGNED_URL");
    assert_eq!(r.source(), proto::PermissionSource::None);
    assert_eq!(
        server.metric(computed).await,
        before,
        "a signed URL needs no permission set"
    );
    let tampered = signed.url.replace(".png", ".jpg");
    let unknown = signed.url.replace("kid=k1", "kid=k0");
    for (url, action, media, reason) in [
        (
            signed.url.as_str(),
            "write",
            w.team.media,
            "SIGNED_URL_READ_ONLY",
        ),
        (
            &signed.url,
            "read",
            w.public.media,
            "SIGNED_URL_WRONG_RESOURCE",
        ),
        (&tampered, "read", w.team.media, "SIGNED_URL_BAD_SIGNATURE"),
        (&unknown, "read", w.team.media, "SIGNED_URL_UNKNOWN_KEY"),
        (
            "https://elsewhere/x",
            "read",
            w.team.media,
            "SIGNED_URL_MALFORMED",
        ),
    ] {
        refused(
            &server.decide(present(url, action, media, "")).await,
            reason,
        );
    }
    server.stop().await;
}
on_both_databases!(signed_urls_round_trip, round_trip);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_binding_rotation_and_expiry() {
    let (db, w, server) = world_server(Db::Sqlite, |s| {
        keys(s, &["old"]);
        s.media_urls.bind_ip = true;
    })
    .await;
    let mut request = authorize(w.viewer, "read", "media", w.team.media);
    request.context = Some(proto::RequestContext {
        ip: "192.0.2.7".into(),
        ..Default::default()
    });
    let old_url = server.decide(request).await.signed_url.unwrap().url;
    assert!(old_url.contains("&ip=192.0.2.7"), "{old_url}");
    let r = server
        .decide(present(&old_url, "read", w.team.media, "192.0.2.7"))
        .await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    refused(
        &server
            .decide(present(&old_url, "read", w.team.media, "192.0.2.8"))
            .await,
        "SIGNED_URL_IP_MISMATCH",
    );
    refused(
        &server
            .decide(present(&old_url, "read", w.team.media, ""))
            .await,
        "SIGNED_URL_IP_MISMATCH",
    );
    server.stop().await;

    // Rotation: a new signing key; URLs of the old one verify until it is removed.
    let mut s = settings(&db.url);
    keys(&mut s, &["old", "new"]);
    let rotated = TestServer::start(s.clone()).await;
    let fresh = rotated
        .decide(authorize(w.viewer, "read", "media", w.team.media))
        .await
        .signed_url
        .unwrap();
    assert_eq!(fresh.key_id, "new");
    let r = rotated
        .decide(present(&old_url, "read", w.team.media, "192.0.2.7"))
        .await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    rotated.stop().await;
    keys(&mut s, &["new"]);
    s.media_urls.lifetime = HumanDuration(Duration::from_secs(1));
    let pruned = TestServer::start(s).await;
    refused(
        &pruned
            .decide(present(&old_url, "read", w.team.media, "192.0.2.7"))
            .await,
        "SIGNED_URL_UNKNOWN_KEY",
    );
    let r = pruned
        .decide(present(&fresh.url, "read", w.team.media, ""))
        .await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");

    // Expiry: a one-second URL, presented once its second is over.
    let short = pruned
        .decide(authorize(w.viewer, "read", "media", w.team.media))
        .await
        .signed_url
        .unwrap();
    let wait = short.expires_at + 1 - velro_authz::support::clock::now_unix() as i64;
    tokio::time::sleep(Duration::from_secs(wait.clamp(0, 3) as u64)).await;
    refused(
        &pruned
            .decide(present(&short.url, "read", w.team.media, ""))
            .await,
        "SIGNED_URL_EXPIRED",
    );
    pruned.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_is_checked_while_the_database_is_down() {
    let proxy = Proxy::postgres().await;
    let (_db, w, server) = world_server(Db::Postgres, |s| {
        keys(s, &["k1"]);
        s.database_url = proxy.route(&s.database_url);
        s.db_acquire_timeout = HumanDuration(Duration::from_millis(500));
    })
    .await;
    let url = server
        .decide(authorize(w.viewer, "read", "media", w.team.media))
        .await
        .signed_url
        .unwrap()
        .url;
    proxy.cut();
    let r = server.decide(present(&url, "read", w.team.media, "")).await;
    assert_eq!(r.decision(), Decision::Allow, "{r:?}");
    // Anything that needs the database fails closed meanwhile.
    let mut uncached = authorize(w.viewer, "read", "media", w.public.media);
    uncached.consistency = Consistency::FullyConsistent as i32;
    let err = server.client.clone().authorize(uncached).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    proxy.restore();
    server.stop().await;
}
