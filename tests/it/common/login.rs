//! A world whose users can log in: a signing key file, an external HS256
//! issuer, an admin token and cheap password hashes.

use std::path::PathBuf;

use tonic::{Request, Status};
use uuid::Uuid;
use velro_authz::{
    app::config::Settings,
    auth::{
        jwt::ExternalIssuer,
        password::{HashWorkers, PasswordHashing},
    },
    proto::{self, authenticate_request::Credentials},
    support::duration::HumanDuration,
};

use super::{Db, TestDb, TestServer, fixture::World, settings};

pub const PASSWORD: &str = "correct horse battery staple";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const EXTERNAL_ISSUER: &str = "https://auth.example.test/";
pub const EXTERNAL_AUDIENCE: &str = "velro-external";
pub const EXTERNAL_SECRET: &str = "a shared secret of the hosted auth provider";

pub struct AuthWorld {
    pub db: TestDb,
    pub world: World,
    pub server: TestServer,
    pub key_pem: String,
    pub key_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl AuthWorld {
    pub fn email(&self, user: Uuid) -> String {
        self.world
            .data
            .users
            .iter()
            .find(|u| u.id == user)
            .map(|u| u.email.clone())
            .unwrap_or_else(|| panic!("no user {user}"))
    }

    pub async fn authenticate(
        &self,
        credentials: Credentials,
    ) -> Result<proto::AuthenticateResponse, Status> {
        self.server
            .client
            .clone()
            .authenticate(proto::AuthenticateRequest {
                credentials: Some(credentials),
                context: Some(proto::RequestContext {
                    ip: "192.0.2.10".into(),
                    user_agent: "velro-tests/1".into(),
                    ..Default::default()
                }),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn login(
        &self,
        user: Uuid,
        password: &str,
    ) -> Result<proto::AuthenticateResponse, Status> {
        self.authenticate(Credentials::Password(proto::PasswordCredentials {
            email: self.email(user),
            password: password.into(),
        }))
        .await
    }

    /// A password login on another replica of the same database.
    pub async fn login_on(
        &self,
        server: &TestServer,
        user: Uuid,
        password: &str,
    ) -> Result<proto::AuthenticateResponse, Status> {
        server
            .client
            .clone()
            .authenticate(proto::AuthenticateRequest {
                credentials: Some(Credentials::Password(proto::PasswordCredentials {
                    email: self.email(user),
                    password: password.into(),
                })),
                context: None,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// A successful login's token pair.
    pub async fn tokens(&self, user: Uuid) -> proto::TokenPair {
        self.login(user, PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("login: {e}"))
            .tokens
            .unwrap_or_else(|| panic!("a login returns tokens"))
    }

    pub async fn verify(&self, access_token: &str) -> Result<proto::Principal, Status> {
        self.authenticate(Credentials::AccessToken(access_token.into()))
            .await
            .map(|r| r.principal.unwrap_or_default())
    }

    pub async fn revoke(
        &self,
        target: proto::revoke_sessions_request::Target,
    ) -> Result<u32, Status> {
        let mut request = Request::new(proto::RevokeSessionsRequest {
            target: Some(target),
        });
        request
            .metadata_mut()
            .insert("x-velro-admin-token", ADMIN_TOKEN.parse().unwrap());
        self.server
            .client
            .clone()
            .revoke_sessions(request)
            .await
            .map(|r| r.into_inner().revoked)
    }
}

pub fn external_issuer() -> ExternalIssuer {
    ExternalIssuer {
        issuer: EXTERNAL_ISSUER.into(),
        audience: EXTERNAL_AUDIENCE.into(),
        algorithms: vec!["HS256".into()],
        leeway: HumanDuration(std::time::Duration::from_secs(30)),
        hs256_secret: Some(EXTERNAL_SECRET.into()),
        jwks_file: None,
        jwks_url: None,
        jwks_refresh: velro_authz::support::duration::HumanDuration(
            std::time::Duration::from_secs(300),
        ),
        max_token_lifetime: HumanDuration(std::time::Duration::from_secs(24 * 3600)),
    }
}

pub async fn auth_server(kind: Db, tweak: impl FnOnce(&mut Settings)) -> AuthWorld {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.pem");
    velro_authz::app::commands::generate_key(&key_path).unwrap();
    let key_pem = std::fs::read_to_string(&key_path).unwrap();

    let db = TestDb::create(kind).await;
    let mut world = World::new();
    let mut s = settings(&db.url);
    let hashing = PasswordHashing::new(
        s.hash_params(),
        HashWorkers {
            threads: 1,
            nice: 0,
        },
        1,
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    world.data.password_hash = Some(hashing.hash(PASSWORD.into()).await.unwrap());
    db.store()
        .await
        .insert_dataset(&world.data)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.signing_keys = vec![key_path.clone()];
    s.admin_token = Some(ADMIN_TOKEN.into());
    s.external_issuers = vec![external_issuer()];
    tweak(&mut s);
    let server = TestServer::start(s).await;
    AuthWorld {
        db,
        world,
        server,
        key_pem,
        key_path,
        _dir: dir,
    }
}
