//! The machine's Redis for tests: its URL, and a key prefix per test that
//! is removed afterwards.

use redis::aio::MultiplexedConnection;

pub fn redis_url() -> String {
    std::env::var("VELRO_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn connect() -> MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap_or_else(|e| {
        panic!("Redis is not reachable at {url} ({e}); start it or point VELRO_TEST_REDIS_URL at one")
    })
}

/// A key prefix of this test's own, and its removal.
pub struct Prefix(pub String);

impl Prefix {
    pub async fn new() -> Prefix {
        connect().await;
        Prefix(format!("velro-test-{}:", uuid::Uuid::new_v4().simple()))
    }

    pub async fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query_async(&mut connect().await)
            .await
            .unwrap()
    }

    pub async fn remove(self) {
        let keys = self.keys().await;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut connect().await)
                .await
                .unwrap();
        }
    }
}
