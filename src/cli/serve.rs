//! `kiln serve`: load the configuration, then run the server until a signal.

use std::path::PathBuf;

use anyhow::Context;

use kiln::config::{Config, Overrides};

/// `kiln serve`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (TOML); default: config/kiln.toml if it exists.
    #[arg(long, env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Box<Overrides>,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let config = Config::load(a.config.as_deref(), &a.overrides)?;
    super::set_compute_threads(config.registry.threads);
    kiln::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let grpc = match config.grpc_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for gRPC on {addr}"))?,
            ),
            None => None,
        };
        let delay = config.drain_delay;
        let listeners = kiln::Listeners {
            http: listener,
            grpc,
        };
        let extra = axum::Router::new();
        kiln::serve_on(config, listeners, extra, kiln::shutdown::signal(delay)).await
    })
}
