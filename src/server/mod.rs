//! The accept loop, kiln's own rather than `axum::serve`, for what that one lacks: a limit
//! on open connections, header and body read timeouts, TCP_NODELAY and TLS.
//!
//! The loop runs in one task (spawned by `serve`); each accepted *connection* gets a task of
//! its own, which does the TLS handshake if any, then runs hyper's HTTP/1.1 connection with
//! the router as its service. Per request, the work added to what `axum::serve` did is
//! hyper's header timer (one sleep per request head) and wrapping the body in
//! [`body::IdleTimeout`] (no allocation until a body has to wait); side by side, the server
//! CPU per request showed no difference (docs/benchmarks.md).

pub mod body;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::ConnectionConfig;
use crate::metrics::Metrics;

/// What every connection task needs, built once and shared.
pub struct Server {
    app: Router,
    /// hyper's HTTP/1.1 settings: keep-alive, the header read timeout and its timer.
    http: http1::Builder,
    tls: Option<TlsAcceptor>,
    /// Also bounds the TLS handshake.
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    slots: Slots,
}

impl Server {
    /// `tls`: the acceptor built from `cfg.tls` (see [`tls::acceptor`]), loaded by the
    /// caller first so that a bad certificate stops the start before anything runs.
    pub fn new(
        cfg: &ConnectionConfig,
        tls: Option<TlsAcceptor>,
        app: Router,
        metrics: &Metrics,
    ) -> Server {
        let mut http = http1::Builder::new();
        // hyper runs this timer from the moment it starts reading a request head, which on
        // a keep-alive connection is the end of the previous answer: it closes both a
        // client that trickles its headers and one that stays idle.
        http.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout);
        Server {
            app,
            http,
            tls,
            header_read_timeout: cfg.header_read_timeout,
            body_read_timeout: cfg.body_read_timeout,
            slots: Slots::new(
                cfg.max_connections,
                metrics.http_connections.clone(),
                metrics.http_connection_limit_reached.clone(),
            ),
        }
    }

    /// Accepts connections until `stop` resolves, then stops listening (drops `listener`)
    /// and returns the handle that drains the open connections: each finishes the request
    /// it is answering, then closes.
    pub async fn serve_until(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()>,
    ) -> GracefulShutdown {
        let server = Arc::new(self);
        let graceful = GracefulShutdown::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            // At the limit, stop accepting: new connections wait in the kernel's backlog
            // and are served when one closes, rather than being refused.
            let permit = tokio::select! {
                biased;
                () = &mut stop => break,
                permit = server.slots.wait() => permit,
            };
            let accepted = tokio::select! {
                biased;
                () = &mut stop => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if accept_error_is_fatal_for_a_while(&e) {
                        tokio::select! {
                            () = &mut stop => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    continue;
                }
            };
            // Answers are written whole, but server-sent events and TLS records are not:
            // without it, Nagle's algorithm can hold a small write for a delayed ACK.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
            let slot = server.slots.open(permit);
            tokio::spawn(
                server
                    .clone()
                    .connection(stream, peer, graceful.watcher(), slot),
            );
        }
        drop(listener);
        graceful
    }

    /// One connection, from the TLS handshake (if any) to its close. `_slot` is released
    /// when the task ends.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
        _slot: Slot,
    ) {
        let Some(acceptor) = &self.tls else {
            return self.http(stream, peer, watcher).await;
        };
        match tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.http(tls, peer, watcher).await,
            Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Each request carries the peer's address as axum's `ConnectInfo` (what
    /// `into_make_service_with_connect_info` gives handlers): the edge middleware records it
    /// on the request's span.
    async fn http<IO>(&self, io: IO, peer: SocketAddr, watcher: Watcher)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let body_read_timeout = self.body_read_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            // The router is an `Arc` inside and always ready: cloning it per request is what
            // `axum::serve` does too.
            let mut app = app.clone();
            let mut req = req.map(|b| body::IdleTimeout::new(b, body_read_timeout));
            req.extensions_mut().insert(ConnectInfo(peer));
            tower::Service::call(&mut app, req)
        });
        let conn = self.http.serve_connection(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(conn).await {
            // A header read timeout, a client gone mid-request, a malformed request.
            tracing::debug!(error = %e, %peer, "connection closed with an error");
        }
    }
}

/// `EMFILE` and the like: the process is out of something, and retrying at once would spin.
/// Errors of one connection (reset or aborted before it was accepted) are not.
fn accept_error_is_fatal_for_a_while(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return false;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s (is max_connections above the open-file limit?)");
    true
}

// === impl Slots ===

/// The connection limit: one semaphore permit per open connection. The HTTP and the gRPC
/// accept loops each have one (`max_connections` each).
pub(crate) struct Slots {
    /// `max_connections` permits; never closed.
    semaphore: Arc<Semaphore>,
    open: Gauge,
    limit_reached: Counter,
}

/// An open connection's share of the limit; dropping it frees the place.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Slots {
    /// `max` places; `open` counts the open connections, `limit_reached` the times every
    /// place was taken when a connection could have been accepted.
    pub(crate) fn new(max: usize, open: Gauge, limit_reached: Counter) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(max)),
            open,
            limit_reached,
        }
    }

    /// A free place, waiting for one when every place is taken.
    pub(crate) async fn wait(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return permit;
        }
        self.limit_reached.inc();
        tracing::debug!("max_connections open: not accepting until one closes");
        self.semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed")
    }

    /// The place of a connection just accepted.
    pub(crate) fn open(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.open.inc();
        Slot {
            _permit: permit,
            open: self.open.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}
