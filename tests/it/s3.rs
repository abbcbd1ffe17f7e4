//! A real S3-compatible server for the tests: moto's server (scripts/setup/60-s3.sh installs
//! it and exports `KILN_TEST_S3_SERVER`), started on a free loopback port, shared by the
//! tests of this process while any holds it, and ended with the last. Each test gets a
//! bucket of its own. Under plain `cargo test` without the variable these tests skip.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::util::external;

/// A running moto server.
pub struct S3Server {
    child: Mutex<Child>,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    fn start(command: &str) -> S3Server {
        let port = free_port();
        let child = Command::new(command)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the S3 server {command}: {e}"));
        let server = S3Server {
            child: Mutex::new(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Ends the server at once (a test of the store going away).
    pub fn kill(&self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

static SHARED: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());

/// A bucket of one test's own on the shared server.
#[derive(Clone)]
pub struct Bucket {
    pub server: Arc<S3Server>,
    pub name: String,
}

impl Bucket {
    /// `None` (the test skips) without `KILN_TEST_S3_SERVER` under plain `cargo test`.
    /// Blocking: call it from `spawn_blocking` in async tests.
    pub fn new() -> Option<Bucket> {
        Bucket::create(false)
    }

    /// A bucket on a server of its own, which the test may end.
    pub fn private() -> Option<Bucket> {
        Bucket::create(true)
    }

    fn create(private: bool) -> Option<Bucket> {
        let command = external("KILN_TEST_S3_SERVER", "an S3-compatible server (moto)")?;
        let server = if private {
            Arc::new(S3Server::start(&command))
        } else {
            let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            match slot.upgrade() {
                Some(s) => s,
                None => {
                    let s = Arc::new(S3Server::start(&command));
                    *slot = Arc::downgrade(&s);
                    s
                }
            }
        };
        use rand::RngCore;
        let name = format!("kiln-test-{:016x}", rand::rng().next_u64());
        // moto does not check signatures: a plain PUT creates the bucket.
        let (status, body) = http(server.port, "PUT", &format!("/{name}"));
        assert!(status / 100 == 2, "creating a bucket: {status} {body}");
        Some(Bucket { server, name })
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.name)
    }

    /// The variables a kiln process needs to reach the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "kiln-test-key".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.server.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The same, as object_store options (for a store opened in the test process).
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_access_key_id", "kiln-test-key".into()),
            ("aws_secret_access_key", SECRET.into()),
            ("aws_region", "us-east-1".into()),
            ("aws_endpoint", self.server.endpoint()),
            ("aws_allow_http", "true".into()),
        ]
    }

    /// Every key in the bucket under `prefix`, sorted (ListObjectsV2, one page is enough
    /// for a test).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = http(
            self.server.port,
            "GET",
            &format!("/{}?list-type=2&prefix={prefix}", self.name),
        );
        assert_eq!(status, 200, "listing the bucket: {body}");
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect();
        keys.sort();
        keys
    }
}

/// One plain HTTP/1.1 request to the server (unsigned: moto accepts it); status and body.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// The secret key the tests use: they check that it never shows in a log.
pub const SECRET: &str = "kiln-test-secret-5e1d";
