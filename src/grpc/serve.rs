//! The gRPC accept loop: HTTP/2 connections (TLS when kiln has a certificate, with ALPN
//! `h2`), each on a task of its own, served by hyper with the [`GrpcService`] — not tonic's
//! transport, whose own `grpc-timeout` layer would answer CANCELLED where the serving core
//! answers DEADLINE_EXCEEDED (the deadline is the call's, see `infer::deadline`).
//!
//! Shutdown as the HTTP listener's: when `stop` resolves the listener closes, open
//! connections get a GOAWAY (new calls are refused with UNAVAILABLE, clients reconnect
//! elsewhere) and the calls in flight are answered before the returned handle's `shutdown`
//! completes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::GrpcService;

/// Longest a TLS handshake may take (the HTTP listener bounds it by its header timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` resolves, then stops listening and returns the handle
/// that drains the open connections.
pub async fn serve_until<S: GrpcService>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut http = http2::Builder::new(TokioExecutor::new());
    // Pings keep idle connections through proxies and find dead peers.
    http.timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "gRPC accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        tokio::spawn(connection(
            stream,
            peer,
            http.clone(),
            service.clone(),
            tls.clone(),
            graceful.watcher(),
        ));
    }
    drop(listener);
    graceful
}

async fn connection<S: GrpcService>(
    stream: TcpStream,
    peer: SocketAddr,
    http: http2::Builder<TokioExecutor>,
    service: S,
    tls: Option<TlsAcceptor>,
    watcher: Watcher,
) {
    let Some(acceptor) = tls else {
        return serve_connection(stream, peer, &http, service, watcher).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_connection(tls, peer, &http, service, watcher).await,
        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "gRPC TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
    }
}

/// Each call carries the peer's address as a request extension (the call's span shows it).
async fn serve_connection<IO, S>(
    io: IO,
    peer: SocketAddr,
    http: &http2::Builder<TokioExecutor>,
    service: S,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: GrpcService,
{
    let service = hyper::service::service_fn(move |mut req| {
        req.extensions_mut().insert(peer);
        // The services are always ready (tonic's router, the edge): cloning per call is what
        // the HTTP listener does with its router too.
        let mut service = service.clone();
        tower::Service::call(&mut service, req)
    });
    let conn = http.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, %peer, "gRPC connection closed with an error");
    }
}
