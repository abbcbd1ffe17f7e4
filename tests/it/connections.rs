//! The accept loop against real sockets: the connection limit, slow clients (headers, idle
//! keep-alive, stalled bodies) and TLS. Raw TCP where a client library would hide what is
//! tested (how many connections, what is sent when). Timings: only generous upper bounds
//! ("closed within 10 s when the timeout is 300 ms") and, for a wait that must *not* end,
//! a short window.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use std::future::poll_fn;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls;

use crate::util::*;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const GENEROUS: Duration = Duration::from_secs(10);

// `read` and `write_all` by hand: kiln builds tokio without `io-util` (its `Ext` traits), and
// turning it on for the tests alone would rebuild tokio and everything above it.

async fn read<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut rb = ReadBuf::new(buf);
    poll_fn(|cx| Pin::new(&mut *s).poll_read(cx, &mut rb)).await?;
    Ok(rb.filled().len())
}

async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *s).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    poll_fn(|cx| Pin::new(&mut *s).poll_flush(cx)).await
}

/// Reads one response: the head, then a `Content-Length` body. `None`: closed before one.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u16, String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match read(s, &mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        match read(s, &mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    Some((status, head, body))
}

/// Reads until the server closes the connection (EOF or reset); what it sent meanwhile.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match read(s, &mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> (u16, String) {
    write_all(
        s,
        format!("GET {path} HTTP/1.1\r\nHost: kiln\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, _, body) = timeout(GENEROUS, read_response(s))
        .await
        .expect("answered in time")
        .expect("answered before closing");
    (status, body)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_new_connection_waits_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), "max_connections = 2").await;
    // Closes the readiness probe's pooled keep-alive connection.
    s.client = reqwest::Client::new();
    let mut a = TcpStream::connect(s.addr).await.unwrap();
    let deadline = Instant::now() + GENEROUS;
    while metric(&get(&mut a, "/metrics").await.1, "kiln_http_connections") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the probe's connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut b = TcpStream::connect(s.addr).await.unwrap();
    assert_eq!(get(&mut b, "/health/live").await.0, 200);

    // The kernel completes the third handshake (backlog); kiln does not accept it yet.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    write_all(&mut c, b"GET /health/live HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .unwrap();
    assert!(
        timeout(Duration::from_millis(500), read_response(&mut c))
            .await
            .is_err(),
        "a third connection was served with max_connections = 2"
    );
    drop(a);
    let (status, _, _) = timeout(GENEROUS, read_response(&mut c))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(status, 200);

    let text = get(&mut b, "/metrics").await.1;
    assert_eq!(metric(&text, "kiln_http_connections"), 2.0);
    assert!(metric(&text, "kiln_http_connection_limit_reached_total") >= 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_headers_or_stays_idle_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), "header_read_timeout_ms = 300").await;

    // One header byte every 50 ms: never silent long, never done.
    let c = TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    write_all(
        &mut wr,
        b"GET /health/live HTTP/1.1\r\nHost: kiln\r\nX-Slow: ",
    )
    .await
    .unwrap();
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < GENEROUS && write_all(&mut wr, b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let got = timeout(GENEROUS, read_until_closed(&mut rd))
        .await
        .expect("a client trickling its headers is disconnected");
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "));
    trickle.abort();

    // A keep-alive connection: answered, then closed once idle.
    let mut d = TcpStream::connect(s.addr).await.unwrap();
    assert_eq!(get(&mut d, "/health/live").await.0, 200);
    timeout(GENEROUS, read_until_closed(&mut d))
        .await
        .expect("an idle keep-alive connection is closed");
    s.stop().await;
}

/// Sends a request head announcing twice `body`'s length, then `body`, then nothing.
async fn stall(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: kiln\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len() * 2
    );
    write_all(&mut c, head.as_bytes()).await.unwrap();
    write_all(&mut c, body).await.unwrap();
    let (status, head, body) = timeout(GENEROUS, read_response(&mut c))
        .await
        .expect("a stalled body is answered in time")
        .expect("answered before closing");
    assert!(head.contains("connection: close"), "{head}");
    timeout(GENEROUS, read_until_closed(&mut c))
        .await
        .expect("and the connection closed");
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408_and_a_slow_steady_upload_is_not() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(dir.path(), "body_read_timeout_ms = 1000").await;

    let cases: [(&str, &str, &[u8]); 4] = [
        (
            "/v1/models/mlp:predict",
            "application/json",
            br#"{"instances": [[1, 2, 3"#,
        ),
        ("/v2/models/mlp/infer", "application/json", b"{"),
        ("/v1/datasets", "text/csv", b"a,b\n1,2\n"),
        (
            "/v1/models/mlp/versions",
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{",
        ),
    ];
    for (path, content_type, body) in cases {
        let (status, e) = stall(s.addr, path, content_type, body).await;
        assert_eq!(
            (status, e["code"].as_str()),
            (408, Some("body_timeout")),
            "{path}: {e}"
        );
        assert!(e["error"].as_str().unwrap().contains("1000 ms"), "{e}");
    }
    // The dataset upload's temporary file was gone by the time its 408 was sent.
    let left: Vec<_> = std::fs::read_dir(s.data.path().join("datasets"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");

    // A dataset arriving in ten pieces, 150 ms apart: 1.5 s in all, never 1 s of silence.
    let csv = crate::training::iris_csv();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /v1/datasets?name=slow HTTP/1.1\r\nHost: kiln\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        csv.len()
    );
    write_all(&mut c, head.as_bytes()).await.unwrap();
    for piece in csv.chunks(csv.len().div_ceil(10)) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        write_all(&mut c, piece).await.unwrap();
    }
    let (status, _, body) = timeout(GENEROUS, read_response(&mut c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // An ordinary request on the same server.
    let (status, _) = s
        .post(
            "/v1/models/mlp:predict",
            &json!({"instances": [[1, 2, 3, 4, 5, 6]]}),
        )
        .await;
    assert_eq!(status, 200);
    s.stop().await;
}

fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls")
}

/// A client that trusts only the test certificate (names and dates checked as usual).
fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(tls_dir().join("cert.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn https(addr: SocketAddr, request: &str) -> std::io::Result<Option<(u16, String, String)>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tls_connector().connect(name, tcp).await?;
    write_all(&mut tls, request.as_bytes()).await?;
    Ok(read_response(&mut tls).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "mlp", 1, &mlp_spec(6));
    let toml = format!(
        "header_read_timeout_ms = 500\ntls_cert = {:?}\ntls_key = {:?}",
        tls_dir().join("cert.pem"),
        tls_dir().join("key.pem")
    );
    let s = Server::start(dir.path(), &toml).await;
    assert!(s.base.starts_with("https://"));
    let ready = "GET /health/ready HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(https(s.addr, ready).await, Ok(Some((200, _, _)))) {
        assert!(
            Instant::now() < deadline,
            "the TLS server did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let body = json!({"instances": [[1, 2, 3, 4, 5, 6]]}).to_string();
    let predict = format!(
        "POST /v1/models/mlp:predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, answer) = https(s.addr, &predict).await.unwrap().unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["predictions"][0].as_array().unwrap().len(), 3);

    // Plain HTTP to the TLS port: no answer, the connection is closed.
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    write_all(
        &mut plain,
        b"GET /health/live HTTP/1.1\r\nHost: kiln\r\n\r\n",
    )
    .await
    .unwrap();
    let got = timeout(GENEROUS, read_until_closed(&mut plain))
        .await
        .expect("a plain HTTP client is disconnected");
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"));
    assert!(s
        .client
        .get(s.url("/health/live").replace("https", "http"))
        .send()
        .await
        .is_err());

    // A client that never starts its handshake is disconnected (header_read_timeout_ms).
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    timeout(GENEROUS, read_until_closed(&mut silent))
        .await
        .expect("a silent client is disconnected");

    // The container HEALTHCHECK probe, given the certificate, speaks TLS.
    let addr = s.addr.to_string();
    let probe = tokio::task::spawn_blocking(move || {
        let with = Command::new(KILN)
            .args(["health", "--addr", &addr, "--tls-cert"])
            .arg(tls_dir().join("cert.pem"))
            .output()
            .unwrap();
        let without = Command::new(KILN)
            .args(["health", "--addr", &addr])
            .env_remove("KILN_TLS_CERT")
            .output()
            .unwrap();
        (with, without)
    })
    .await
    .unwrap();
    assert!(
        probe.0.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.0.stderr)
    );
    assert!(!probe.1.status.success());
    s.stop().await;
}

#[test]
fn tls_startup_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cert = tls_dir().join("cert.pem");
    let key = tls_dir().join("key.pem");
    let missing = dir.path().join("missing.pem");
    let cases: [(&[&Path], &str); 4] = [
        (&[&cert], "only one is set"),
        (&[&missing, &key], "reading the TLS certificate"),
        (&[&key, &key], "holds no CERTIFICATE block"),
        (&[&cert, &cert], "holds no PEM private key"),
    ];
    for (files, expected) in cases {
        let mut cmd = Command::new(KILN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "",
            "--models",
        ])
        .arg(dir.path())
        .arg("--data")
        .arg(dir.path())
        .env_remove("KILN_CONFIG")
        .env_remove("KILN_TLS_CERT")
        .env_remove("KILN_TLS_KEY")
        .current_dir(dir.path());
        cmd.arg("--tls-cert").arg(files[0]);
        if let Some(k) = files.get(1) {
            cmd.arg("--tls-key").arg(k);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}
