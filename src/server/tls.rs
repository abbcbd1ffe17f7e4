//! TLS with rustls (ring provider): the server's acceptor, built once at startup from PEM
//! files, and the client configuration of `kiln health`'s probe. Handshakes run in each
//! connection's task (see `server::connection`), never in the accept loop.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the certificate chain (leaf first) of a PEM file.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the TLS certificate {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the TLS certificate {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate {} holds no CERTIFICATE block",
            path.display()
        );
    }
    Ok(certs)
}

/// The acceptor for `files`; every error names the file and what is wrong with it.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    // kiln serves HTTP/1.1 only; saying so lets clients that offer h2 settle at once.
    acceptor_for(files, b"http/1.1")
}

/// The acceptor of the gRPC listener (`crate::grpc`): the same files, HTTP/2 only.
pub fn grpc_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    acceptor_for(files, b"h2")
}

fn acceptor_for(files: &TlsFiles, alpn: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let certs = read_certs(&files.cert)?;
    let pem = std::fs::read(&files.key)
        .with_context(|| format!("reading the TLS key {}", files.key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "the TLS key {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            files.key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("the ring provider supports the default TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS key {} does not fit the certificate {}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client configuration of `kiln health`: it trusts exactly the certificate in
/// `cert_file` (the server's own, compared byte for byte), so a probe of 127.0.0.1 needs no
/// CA and no matching name, and still cannot be answered by anything else.
pub fn probe_config(cert_file: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let leaf = read_certs(cert_file)?.swap_remove(0);
    let provider = provider();
    let verifier = Arc::new(Pinned {
        leaf,
        provider: provider.clone(),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the ring provider supports the default TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Accepts the one certificate it holds; the handshake signatures are still checked.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server presented a different certificate than --tls-cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
