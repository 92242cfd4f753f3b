//! Private servers a test starts on free loopback ports and stops when
//! dropped: a PostgreSQL (`initdb` + `pg_ctl`, run as the `postgres` user)
//! and a Redis, with or without TLS. The machine's shared servers are never
//! touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{certs::Leaf, process::free_port};

/// The newest PostgreSQL's binaries on this machine.
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL's binaries are not under /usr/lib/postgresql ({e}): install postgresql"
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no initdb under /usr/lib/postgresql/*/bin"))
}

fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("runuser {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {}", path.display());
}

pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// Starts a PostgreSQL; with `tls`, it serves TLS with that certificate.
    pub fn start(tls: Option<&Leaf>) -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let bin = pg_bin();
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let port = free_port();
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\n",
            dir.path().display()
        );
        match tls {
            Some(leaf) => {
                std::fs::write(data.join("server.crt"), &leaf.cert).unwrap();
                std::fs::write(data.join("server.key"), &leaf.key).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    data.join("server.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
                conf.push_str(
                    "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
                );
            }
            None => conf.push_str("ssl = off\n"),
        }
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        chown_postgres(dir.path());
        let log = dir.path().join("log");
        as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-w",
                "-l",
                log.to_str().unwrap(),
                "start",
            ],
        );
        PrivatePostgres { dir, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

/// A Redis serving TLS only, with the given certificate.
pub struct PrivateRedis {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub async fn start_tls(leaf: &Leaf, ca_pem: &str) -> PrivateRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = leaf.write(dir.path(), "redis");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-auth-clients",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server is needed for this test ({e})"));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return PrivateRedis {
                    child,
                    port,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the private Redis did not listen on {port}");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
