//! The gRPC accept loop: HTTP/2 connections (TLS when kiln has a certificate, with ALPN
//! `h2`), each on a task of its own, served by hyper with the [`GrpcService`] — not tonic's
//! transport, whose own `grpc-timeout` layer would answer CANCELLED where the serving core
//! answers DEADLINE_EXCEEDED (the deadline is the call's, see `infer::deadline`).
//!
//! Limits as the HTTP listener's ([`Limits`]): `max_connections` open connections, the TLS
//! handshake bounded by `header_read_timeout`, request messages by `body_limit_bytes`.
//!
//! Shutdown as the HTTP listener's: when `stop` resolves the listener closes, open
//! connections get a GOAWAY (new calls are refused with UNAVAILABLE, clients reconnect
//! elsewhere) and the calls in flight are answered before the returned handle's `shutdown`
//! completes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::GrpcService;
use crate::config::ConnectionConfig;
use crate::metrics::GrpcMetrics;
use crate::server::body::{timed_out, IdleTimeout};
use crate::server::{Slot, Slots};

/// The accept loop's limits, as the HTTP listener's (`server`): at most `max_connections`
/// open gRPC connections (beyond, new ones wait in the kernel's backlog until one closes),
/// and a TLS handshake bounded by `header_read_timeout`.
pub struct Limits {
    slots: Slots,
    handshake_timeout: Duration,
    body_read_timeout: Duration,
}

impl Limits {
    pub fn new(cfg: &ConnectionConfig, metrics: &GrpcMetrics) -> Limits {
        Limits {
            slots: Slots::new(
                cfg.max_connections,
                metrics.connections.clone(),
                metrics.connection_limit_reached.clone(),
            ),
            handshake_timeout: cfg.header_read_timeout,
            body_read_timeout: cfg.body_read_timeout,
        }
    }
}

/// Accepts connections until `stop` resolves, then stops listening and returns the handle
/// that drains the open connections.
pub async fn serve_until<S: GrpcService>(
    listener: TcpListener,
    service: S,
    tls: Option<TlsAcceptor>,
    limits: Limits,
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
        // At the limit, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            biased;
            () = &mut stop => break,
            permit = limits.slots.wait() => permit,
        };
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
        let slot = limits.slots.open(permit);
        tokio::spawn(connection(
            (stream, peer, slot),
            http.clone(),
            service.clone(),
            tls.clone()
                .map(|acceptor| (acceptor, limits.handshake_timeout)),
            limits.body_read_timeout,
            graceful.watcher(),
        ));
    }
    drop(listener);
    graceful
}

/// One accepted connection, from the TLS handshake (if any, bounded by its timeout) to its
/// close; its slot is released when the task ends.
async fn connection<S: GrpcService>(
    (stream, peer, _slot): (TcpStream, SocketAddr, Slot),
    http: http2::Builder<TokioExecutor>,
    service: S,
    tls: Option<(TlsAcceptor, Duration)>,
    body_read_timeout: Duration,
    watcher: Watcher,
) {
    let Some((acceptor, handshake_timeout)) = tls else {
        return serve_connection(stream, peer, &http, service, body_read_timeout, watcher).await;
    };
    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            serve_connection(tls, peer, &http, service, body_read_timeout, watcher).await;
        }
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
    body_read_timeout: Duration,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: GrpcService,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(|b| CallBody(IdleTimeout::new(b, body_read_timeout)));
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A call's request body: the bytes as they arrive, with REST's idle timeout
/// (`body_read_timeout_ms`): a client whose message stalls is answered DEADLINE_EXCEEDED
/// (REST's 408 `body_timeout`) instead of holding its stream open.
pub struct CallBody(IdleTimeout<Incoming>);

impl Body for CallBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx).map_err(|e| {
            // tonic answers a body error that is a Status with that status.
            match timed_out(&*e) {
                Some(t) => Box::new(super::status::of(crate::api::error::ApiError::BodyTimeout(
                    t,
                ))),
                None => e,
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
