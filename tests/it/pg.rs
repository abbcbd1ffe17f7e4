//! A real PostgreSQL for the tests: the server `KILN_TEST_DATABASE_URL` names, or else a
//! private throwaway cluster started from the binaries in `KILN_TEST_PG_BIN`
//! (scripts/setup/20-postgres.sh): `initdb` + `pg_ctl` on a temporary directory and a free
//! loopback port, password authentication over TCP, stopped and removed when the last test
//! holding it is done. `initdb` refuses to run as root, so as root the cluster runs as
//! `nobody`. Each test gets a database of its own, dropped after it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use crate::util::external;

/// The password of the test clusters' `kiln` user: tests check that it never shows.
pub const PASSWORD: &str = "kiln-test-pw-8c1f";

/// A cluster of our own.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// `Some("nobody")` when the tests run as root.
    user: Option<&'static str>,
}

fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// initdb + pg_ctl start; panics with the server's log when it does not start.
    pub fn start(bin: &Path) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let user = running_as_root().then_some("nobody");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        if let Some(u) = user {
            let ok = Command::new("chown")
                .args(["-R", u])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the cluster directory");
        }
        let data = dir.path().join("data");
        let out = as_user(user, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "kiln",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c max_connections=300",
            dir.path().join("sock").display()
        );
        let log = dir.path().join("log");
        let out = as_user(user, &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Cluster {
            dir,
            bin: bin.to_owned(),
            port,
            user,
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://kiln:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Stops the server at once (as a crash would); the data stays for [`Cluster::restart`].
    pub fn stop(&self) {
        let _ = as_user(self.user, &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster the tests of this process share, while any of them holds it.
static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());

fn shared(bin: &Path) -> Arc<Cluster> {
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = Arc::new(Cluster::start(bin));
    *slot = Arc::downgrade(&c);
    c
}

/// Where a test's PostgreSQL comes from: a server given by URL, or the binaries.
pub enum Source {
    Url(String),
    Bin(PathBuf),
}

/// `None` (the test skips) when neither `KILN_TEST_DATABASE_URL` nor `KILN_TEST_PG_BIN` is
/// set under plain `cargo test`; under scripts/test a missing PostgreSQL fails the test.
pub fn source() -> Option<Source> {
    if let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") {
        if !url.is_empty() {
            return Some(Source::Url(url));
        }
    }
    external("KILN_TEST_PG_BIN", "PostgreSQL (initdb and pg_ctl)").map(|b| Source::Bin(b.into()))
}

/// A database of one test's own, dropped with it.
pub struct Db {
    /// The test's database, password included.
    pub url: String,
    admin_url: String,
    name: String,
    _cluster: Option<Arc<Cluster>>,
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(i) => &head[..authority_start + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs one statement on `url` (a short-lived runtime and connection of its own).
pub fn execute(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL: {e}"));
        let conn = tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = conn.await;
    });
}

impl Db {
    /// A fresh database on the tests' PostgreSQL; `None` when there is none (skip).
    pub fn new() -> Option<Db> {
        Some(match source()? {
            Source::Url(url) => Db::create(url, None),
            Source::Bin(bin) => {
                let cluster = shared(&bin);
                Db::create(cluster.url("postgres"), Some(cluster))
            }
        })
    }

    /// A fresh database on `cluster`.
    pub fn on(cluster: Arc<Cluster>) -> Db {
        Db::create(cluster.url("postgres"), Some(cluster))
    }

    fn create(admin_url: String, cluster: Option<Arc<Cluster>>) -> Db {
        use rand::RngCore;
        let name = format!("kiln_test_{:016x}", rand::rng().next_u64());
        execute(&admin_url, &format!("CREATE DATABASE {name}"));
        Db {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
            _cluster: cluster,
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // On a thread of its own (the test may be inside a runtime). A test that stopped
        // the server leaves nothing to drop.
        let _ = std::thread::spawn(move || execute(&admin, &sql)).join();
    }
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5/postgres?sslmode=require", "t1"),
        "postgres://u:p@h:5/t1?sslmode=require"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
}
