//! A loopback TCP proxy that a test can cut (every connection dropped, new
//! ones refused), stall (connections accepted and never answered) and
//! restore, to simulate a dependency going away or hanging.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{net::TcpListener, task::JoinHandle};

pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

/// The `host:port` of a URL like `postgres://user@host:port/db`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

impl Proxy {
    /// A proxy in front of the tests' PostgreSQL server.
    pub async fn postgres() -> Proxy {
        let admin = super::postgres_admin_url();
        let upstream = tokio::net::lookup_host(authority(&admin))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .unwrap_or_else(|| panic!("cannot resolve the PostgreSQL address of {admin}"));
        Proxy::start(upstream).await
    }

    /// `url` with its server replaced by this proxy.
    pub fn route(&self, url: &str) -> String {
        url.replacen(authority(url), &self.addr.to_string(), 1)
    }

    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let open = Arc::new(AtomicBool::new(true));
        let stalled = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let open = open.clone();
            let stalled = stalled.clone();
            let held = held.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the caller sees the connection close
                    }
                    if stalled.load(Ordering::SeqCst) {
                        // Accepted, never answered.
                        if let Ok(mut list) = held.lock() {
                            list.push(client);
                        }
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    if let Ok(mut list) = connections.lock() {
                        list.retain(|t| !t.is_finished());
                        list.push(task);
                    }
                }
            })
        };
        Proxy {
            addr,
            open,
            stalled,
            held,
            connections,
            accept,
        }
    }

    /// Drops every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.connections.lock() {
            for task in list.drain(..) {
                task.abort();
            }
        }
    }

    /// Drops every connection; new ones are accepted and never answered.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.cut();
        self.open.store(true, Ordering::SeqCst);
    }

    /// Forwards again; stalled connections are closed.
    pub fn restore(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.held.lock() {
            list.clear();
        }
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
