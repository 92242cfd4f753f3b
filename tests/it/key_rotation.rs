//! Our signing keys rotate without a restart and without a rejected token,
//! on two replicas, in the documented order: the new key first verify-only
//! everywhere, then the signer, then the old one dropped.

use std::{path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use velro_authz::{app::commands::generate_key, proto::authenticate_request::Credentials};

use crate::common::{
    Db, TestServer, eventually,
    login::{PASSWORD, auth_server},
    settings,
};

/// The `kid` in a JWT's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    json["kid"].as_str().unwrap().to_owned()
}

async fn jwks_kids(server: &TestServer) -> Vec<String> {
    let (_, body) = server.ops_get("/.well-known/jwks.json").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Replaces a file's content in one step (as a secret mount does).
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_two_replicas_without_a_rejected_token() {
    let dir = tempfile::tempdir().unwrap();
    let (current, next, previous) = (
        dir.path().join("current.pem"),
        dir.path().join("next.pem"),
        dir.path().join("previous.pem"),
    );
    generate_key(&current).unwrap();
    let keys = (current.clone(), next.clone(), previous.clone());
    let a = auth_server(Db::Postgres, move |s| {
        s.signing_keys = vec![keys.0];
        s.verify_keys = vec![keys.1, keys.2];
    })
    .await;
    let mut s = settings(&a.db.url);
    s.signing_keys = vec![current.clone()];
    s.verify_keys = vec![next.clone(), previous.clone()];
    s.admin_token = Some(crate::common::login::ADMIN_TOKEN.into());
    let b = TestServer::start(s).await;
    let verify_on = |server: &TestServer, token: String| {
        let mut client = server.client.clone();
        async move {
            client
                .authenticate(velro_authz::proto::AuthenticateRequest {
                    credentials: Some(Credentials::AccessToken(token)),
                    context: None,
                })
                .await
        }
    };
    // Every token either replica issues verifies on both, at every step.
    let check_both = || async {
        for issuer in [&a.server, &b] {
            let token = a
                .login_on(issuer, a.world.viewer, PASSWORD)
                .await
                .unwrap()
                .tokens
                .unwrap()
                .access_token;
            for verifier in [&a.server, &b] {
                verify_on(verifier, token.clone())
                    .await
                    .unwrap_or_else(|e| panic!("a token was rejected during the rotation: {e}"));
            }
        }
    };
    let old_token = a.tokens(a.world.viewer).await.access_token;
    let old_kid = kid(&old_token);
    check_both().await;

    // 1. The new key, verify-only on every replica.
    let new_pem = velro_authz::auth::keys::generate_pem().unwrap();
    replace(&next, &new_pem);
    let new_kid = eventually(Duration::from_secs(15), "the new key published", || async {
        let (ka, kb) = (jwks_kids(&a.server).await, jwks_kids(&b).await);
        match (ka.len(), kb.len()) {
            (2, 2) => Ok(ka.into_iter().find(|k| *k != old_kid).unwrap()),
            _ => Err(format!("{ka:?} {kb:?}")),
        }
    })
    .await;
    check_both().await;
    assert_eq!(
        kid(&a.tokens(a.world.viewer).await.access_token),
        old_kid,
        "still signing with the old key"
    );

    // 2. The new key signs; the old one verifies, as the previous key.
    replace(&previous, &std::fs::read_to_string(&current).unwrap());
    replace(&current, &new_pem);
    std::fs::remove_file(&next).unwrap();
    eventually(
        Duration::from_secs(15),
        "both replicas signing with the new key",
        || async {
            let (ta, tb) = (
                a.login_on(&a.server, a.world.viewer, PASSWORD).await,
                a.login_on(&b, a.world.viewer, PASSWORD).await,
            );
            let kids = (
                kid(&ta.unwrap().tokens.unwrap().access_token),
                kid(&tb.unwrap().tokens.unwrap().access_token),
            );
            match kids == (new_kid.clone(), new_kid.clone()) {
                true => Ok(()),
                false => Err(format!("{kids:?}")),
            }
        },
    )
    .await;
    check_both().await;
    verify_on(&b, old_token.clone())
        .await
        .expect("old tokens verify until their key is dropped");

    // 3. A token lifetime later the old key goes: its tokens no longer verify.
    std::fs::remove_file(&previous).unwrap();
    eventually(Duration::from_secs(30), "the old key gone", || async {
        let (ra, rb) = (
            verify_on(&a.server, old_token.clone()).await,
            verify_on(&b, old_token.clone()).await,
        );
        match (ra.is_err(), rb.is_err()) {
            (true, true) => Ok(()),
            _ => Err(format!("{:?} / {:?}", ra.map(|_| ()), rb.map(|_| ()))),
        }
    })
    .await;
    check_both().await;
    b.stop().await;
    a.server.stop().await;
}
