//! `kiln health`: probe a running server's readiness, for container HEALTHCHECKs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

/// `kiln health`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// Address of the server.
    #[arg(long, env = "KILN_HEALTH_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Path to probe.
    #[arg(long, default_value = "/health/ready")]
    pub path: String,
    /// The server's TLS certificate (PEM): when given, the probe speaks HTTPS and trusts
    /// exactly that certificate (no CA or name check, so 127.0.0.1 works).
    #[arg(long, env = "KILN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
}

/// A minimal HTTP/1.1 GET over a TCP socket (in TLS with `tls_cert`): no client library, no
/// shell, no curl needed in the runtime image. Exit 0 on HTTP 200.
pub fn run(a: &Args) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let (addr, path) = (a.addr.as_str(), a.path.as_str());
    let timeout = std::time::Duration::from_secs(3);
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let stream = std::net::TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut stream: Box<dyn ReadWrite> = match &a.tls_cert {
        None => Box::new(stream),
        Some(cert) => {
            let config = kiln::server::tls::probe_config(cert)?;
            // The name is not checked (the certificate is pinned); any valid one will do.
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")
                .expect("a valid DNS name");
            let conn = tokio_rustls::rustls::ClientConnection::new(Arc::new(config), name)
                .context("starting TLS")?;
            Box::new(tokio_rustls::rustls::StreamOwned::new(conn, stream))
        }
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending the probe to {addr}"))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if code == "200" {
        println!("{path}: 200");
        Ok(())
    } else {
        anyhow::bail!("{path} answered {code:?}")
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}
