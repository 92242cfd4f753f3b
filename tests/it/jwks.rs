//! An external issuer by JWKS URL, served by a local HTTP server the test
//! controls: keys fetched at start, a rotation seen at the first token
//! signed with the new key, the last good keys kept while the server fails,
//! and unknown key ids unable to make us hammer it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use p256::{
    elliptic_curve::sec1::ToEncodedPoint,
    pkcs8::{EncodePrivateKey, LineEnding},
};
use serde_json::json;
use tonic::Code;
use velro_authz::{
    auth::jwt::ExternalIssuer,
    support::{clock::now_unix, duration::HumanDuration},
};

use crate::common::{Db, eventually, login::auth_server};

const ISSUER: &str = "https://idp.example.test/";

/// What the identity provider serves now, and how often it was asked.
#[derive(Clone, Default)]
struct Idp {
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl Idp {
    fn serve(&self, keys: &[(&str, &p256::SecretKey)]) {
        let keys: Vec<_> = keys
            .iter()
            .map(|(kid, secret)| {
                let point = secret.public_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                    "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())})
            })
            .collect();
        *self.answer.lock().unwrap() = (200, json!({ "keys": keys }).to_string());
    }

    fn fail(&self) {
        *self.answer.lock().unwrap() = (503, "down for maintenance".into());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn start(&self) -> SocketAddr {
        async fn jwks(State(idp): State<Idp>) -> (StatusCode, String) {
            idp.hits.fetch_add(1, Ordering::SeqCst);
            let (status, body) = idp.answer.lock().unwrap().clone();
            (StatusCode::from_u16(status).unwrap(), body)
        }
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

fn sign(secret: &p256::SecretKey, kid: &str, subject: &str) -> String {
    let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let claims = json!({"iss": ISSUER, "aud": "velro", "sub": subject,
        "iat": now_unix(), "exp": now_unix() + 600});
    encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_rotation_and_failure() {
    let key = |seed: u8| p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let (first, second, stranger) = (key(3), key(4), key(5));
    let idp = Idp::default();
    idp.serve(&[("k1", &first)]);
    let addr = idp.start().await;
    let w = auth_server(Db::Sqlite, |s| {
        s.external_issuers.push(ExternalIssuer {
            issuer: ISSUER.into(),
            audience: "velro".into(),
            algorithms: vec!["ES256".into()],
            leeway: HumanDuration(Duration::from_secs(5)),
            hs256_secret: None,
            jwks_file: None,
            jwks_url: Some(format!("http://{addr}/.well-known/jwks.json")),
            jwks_refresh: HumanDuration(Duration::from_millis(200)),
            max_token_lifetime: HumanDuration(Duration::from_secs(3600)),
        })
    })
    .await;
    let editor = w.world.editor.to_string();
    assert!(idp.hits() >= 1, "fetched at start");
    let principal = w.verify(&sign(&first, "k1", &editor)).await.unwrap();
    assert_eq!(principal.user_id, editor);

    // The provider rotates to a new key: the first token signed with it
    // makes us fetch again, and it verifies.
    idp.serve(&[("k2", &second)]);
    let principal = w.verify(&sign(&second, "k2", &editor)).await.unwrap();
    assert_eq!(principal.user_id, editor);

    // The provider fails: the periodic refreshes fail, the last good keys
    // stay in force.
    idp.fail();
    let before = idp.hits();
    eventually(Duration::from_secs(10), "two failed refreshes", || async {
        match idp.hits() >= before + 2 {
            true => Ok(()),
            false => Err(format!("{} fetches", idp.hits() - before)),
        }
    })
    .await;
    let principal = w
        .verify(&sign(&second, "k2", &w.world.admin.to_string()))
        .await;
    assert!(principal.is_ok(), "{principal:?}");

    // A key id the provider never published: refused. Forged key ids cannot
    // make us fetch more than once per interval on top of the schedule.
    idp.serve(&[("k2", &second)]);
    let (before, started) = (idp.hits(), std::time::Instant::now());
    for i in 0..20 {
        let token = sign(&stranger, &format!("forged-{i}"), &editor);
        let e = w.verify(&token).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("kid"), "{e:?}");
    }
    // The rotation's fetch was within ON_DEMAND_EVERY: only the schedule
    // (every 200 ms) fetched meanwhile.
    let scheduled = started.elapsed().as_millis() as usize / 200 + 1;
    let fetched = idp.hits() - before;
    assert!(
        fetched <= scheduled,
        "20 forged key ids made {fetched} fetches (the schedule allows {scheduled})"
    );
    w.server.stop().await;
}
