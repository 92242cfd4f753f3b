//! Forged, tampered, stale and misdirected tokens: each is UNAUTHENTICATED,
//! and the leeway boundary is exact. Tokens are signed here with the
//! server's own key file where the attack needs a valid signature.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tonic::Code;
use velro_authz::support::clock::now_unix;

use crate::common::{
    Db,
    login::{EXTERNAL_AUDIENCE, EXTERNAL_ISSUER, EXTERNAL_SECRET, auth_server},
};

const LEEWAY: u64 = 30;

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_unauthenticated() {
    let w = auth_server(Db::Postgres, |_| {}).await;
    let pair = w.tokens(w.world.viewer).await;
    let good = w.verify(&pair.access_token).await.unwrap();
    let kid = jsonwebtoken::decode_header(&pair.access_token)
        .unwrap()
        .kid
        .unwrap();
    let our_key = EncodingKey::from_ed_pem(w.key_pem.as_bytes()).unwrap();
    let now = now_unix();
    let claims = |changes: Value| {
        let mut c = json!({
            "iss": "velro-authz", "aud": "velro", "sub": w.world.viewer.to_string(),
            "sid": good.session_id, "iat": now, "nbf": now, "exp": now + 600, "jti": "t",
        });
        if let (Some(c), Some(changes)) = (c.as_object_mut(), changes.as_object()) {
            for (k, v) in changes {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let sign_with = |key: &EncodingKey, alg: Algorithm, kid: &str, body: Value| {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, &body, key).unwrap()
    };
    let ours = |body: Value| sign_with(&our_key, Algorithm::EdDSA, &kid, body);
    // Sanity: a token we sign like the server does is accepted.
    w.verify(&ours(claims(json!({})))).await.unwrap();

    let other_pem = velro_authz::auth::keys::generate_pem().unwrap();
    let other_key = EncodingKey::from_ed_pem(other_pem.as_bytes()).unwrap();
    let public = {
        let jwks: Value =
            serde_json::from_str(&w.server.ops_get("/.well-known/jwks.json").await.1).unwrap();
        URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["x"].as_str().unwrap())
            .unwrap()
    };
    let parts: Vec<&str> = pair.access_token.split('.').collect();
    let tampered = {
        let mut body: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        body["sub"] = json!(w.world.admin.to_string());
        format!("{}.{}.{}", parts[0], b64(&body), parts[2])
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(json!({})))
            ),
        ),
        (
            "HS256 keyed with our public key",
            sign_with(
                &EncodingKey::from_secret(&public),
                Algorithm::HS256,
                &kid,
                claims(json!({})),
            ),
        ),
        (
            "unknown kid",
            sign_with(&other_key, Algorithm::EdDSA, "nope", claims(json!({}))),
        ),
        (
            "path kid",
            sign_with(
                &other_key,
                Algorithm::EdDSA,
                "../../../etc/passwd",
                claims(json!({})),
            ),
        ),
        (
            "SQL kid",
            sign_with(
                &other_key,
                Algorithm::EdDSA,
                "' OR 1=1 --",
                claims(json!({})),
            ),
        ),
        (
            "our kid, another key",
            sign_with(&other_key, Algorithm::EdDSA, &kid, claims(json!({}))),
        ),
        ("tampered payload", tampered),
        ("expired", ours(claims(json!({"exp": now - LEEWAY - 60})))),
        (
            "just past the leeway",
            ours(claims(json!({"exp": now - LEEWAY - 2}))),
        ),
        (
            "nbf in the future",
            ours(claims(json!({"nbf": now + LEEWAY + 60}))),
        ),
        (
            "exp as a string",
            ours(claims(json!({"exp": (now + 600).to_string()}))),
        ),
        (
            "nbf as a string",
            ours(claims(json!({"nbf": now.to_string()}))),
        ),
        ("no exp", ours(claims(json!({"exp": null})))),
        ("wrong aud", ours(claims(json!({"aud": "someone-else"})))),
        (
            "wrong iss",
            ours(claims(json!({"iss": "https://evil.example/"}))),
        ),
        ("no sid", ours(claims(json!({"sid": null})))),
        (
            "another user's session",
            ours(claims(json!({"sub": w.world.admin.to_string()}))),
        ),
        ("refresh token as access token", pair.refresh_token.clone()),
        ("empty", String::new()),
        ("oversize", "a".repeat(10_000)),
        ("garbage", "definitely.not.a-jwt".into()),
    ];
    for (what, token) in &cases {
        let e = w.verify(token).await.expect_err(what);
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
        assert!(!e.message().is_empty());
    }

    // Inside the leeway is still accepted.
    w.verify(&ours(claims(json!({"exp": now - LEEWAY + 5}))))
        .await
        .unwrap();

    // A revoked session's token, and a disabled user's fresh token.
    let revoked = w.tokens(w.world.editor).await;
    let sid = w.verify(&revoked.access_token).await.unwrap().session_id;
    w.revoke(velro_authz::proto::revoke_sessions_request::Target::SessionId(sid))
        .await
        .unwrap();
    let e = w.verify(&revoked.access_token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let disabled_token = {
        let body = claims(
            json!({"sub": w.world.disabled.to_string(), "sid": uuid::Uuid::new_v4().to_string()}),
        );
        ours(body)
    };
    assert_eq!(
        w.verify(&disabled_token).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The external issuer: its secret verifies, another secret does not.
    let external = |secret: &str| {
        let body = json!({"iss": EXTERNAL_ISSUER, "aud": EXTERNAL_AUDIENCE,
            "sub": w.world.owner.to_string(), "exp": now + 600});
        encode(
            &Header::new(Algorithm::HS256),
            &body,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let principal = w.verify(&external(EXTERNAL_SECRET)).await.unwrap();
    assert_eq!(principal.user_id, w.world.owner.to_string());
    assert_eq!(principal.issuer, EXTERNAL_ISSUER);
    assert!(principal.session_id.is_empty());
    let e = w.verify(&external("another secret")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // A token that would live ten years is refused (max_token_lifetime).
    for body in [
        json!({"iss": EXTERNAL_ISSUER, "aud": EXTERNAL_AUDIENCE, "sub": w.world.owner.to_string(),
            "iat": now, "exp": now + 10 * 365 * 86_400}),
        json!({"iss": EXTERNAL_ISSUER, "aud": EXTERNAL_AUDIENCE, "sub": w.world.owner.to_string(),
            "exp": now + 10 * 365 * 86_400}),
    ] {
        let token = encode(
            &Header::new(Algorithm::HS256),
            &body,
            &EncodingKey::from_secret(EXTERNAL_SECRET.as_bytes()),
        )
        .unwrap();
        let e = w.verify(&token).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            e.message().contains("max_token_lifetime"),
            "{}",
            e.message()
        );
    }
    // EdDSA is not accepted for the HS256 issuer.
    let body = json!({"iss": EXTERNAL_ISSUER, "aud": EXTERNAL_AUDIENCE, "sub": w.world.owner.to_string(), "exp": now + 600});
    assert_eq!(
        w.verify(&ours(body)).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // The server kept serving through all of it.
    w.verify(&pair.access_token).await.unwrap();
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es256_issuer_from_a_jwks_file() {
    use p256::{
        elliptic_curve::sec1::ToEncodedPoint,
        pkcs8::{EncodePrivateKey, LineEnding},
    };
    let key = |seed: u8| p256::SecretKey::from_slice(&[seed; 32]).unwrap();
    let (trusted, stranger) = (key(7), key(9));
    let point = trusted.public_key().to_encoded_point(false);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1", "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())}]});
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let w = auth_server(Db::Sqlite, |s| {
        s.external_issuers
            .push(velro_authz::auth::jwt::ExternalIssuer {
                issuer: "https://ec.example.test/".into(),
                audience: "velro".into(),
                algorithms: vec!["ES256".into()],
                leeway: velro_authz::support::duration::HumanDuration(
                    std::time::Duration::from_secs(5),
                ),
                hs256_secret: None,
                jwks_file: Some(jwks_file.clone()),
                jwks_url: None,
                jwks_refresh: velro_authz::support::duration::HumanDuration(
                    std::time::Duration::from_secs(300),
                ),
                max_token_lifetime: velro_authz::support::duration::HumanDuration(
                    std::time::Duration::from_secs(3600),
                ),
            })
    })
    .await;
    let sign = |secret: &p256::SecretKey| {
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".into());
        let body = json!({"iss": "https://ec.example.test/", "aud": "velro",
            "sub": w.world.editor.to_string(), "exp": now_unix() + 600});
        encode(
            &header,
            &body,
            &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let principal = w.verify(&sign(&trusted)).await.unwrap();
    assert_eq!(principal.user_id, w.world.editor.to_string());
    let e = w.verify(&sign(&stranger)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    w.server.stop().await;
}
