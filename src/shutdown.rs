//! Signals and the shutdown sequence `serve` follows.
//!
//! SIGTERM (an orchestrator stopping the pod): readiness turns 503 at once, requests keep
//! being served for the drain delay so the load balancer notices, then listening stops and
//! accepted requests are answered. SIGINT (Ctrl-C at a terminal) skips the delay, and a
//! second Ctrl-C exits at once.

use std::time::Duration;

/// How to shut down: how long to keep serving after readiness turns 503.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub delay: Duration,
}

impl Drain {
    /// Stop listening right away (tests, Ctrl-C).
    pub fn immediate() -> Drain {
        Drain {
            delay: Duration::ZERO,
        }
    }
}

/// Resolves on SIGTERM (with `delay`) or SIGINT (without).
pub async fn signal(delay: Duration) -> Drain {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {
            tracing::info!("SIGINT received: draining now (Ctrl-C again to exit at once)");
            tokio::spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::warn!("second SIGINT: exiting at once");
                std::process::exit(130);
            });
            Drain::immediate()
        }
        () = term => {
            tracing::info!(delay_s = delay.as_secs_f64(), "SIGTERM received: readiness is 503; serving on for the drain delay");
            Drain { delay }
        }
    }
}
