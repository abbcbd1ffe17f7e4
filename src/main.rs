//! The `kiln` binary: parse the command line, build, run, turn errors into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kiln::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train neural networks and serve them over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model under the models directory over HTTP.
    Serve {
        /// Configuration file (TOML); default: config/kiln.toml if it exists.
        #[arg(long, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Load a model version directory, run one forward pass and print its signature.
    Check {
        /// A version directory: holds model.json and model.safetensors.
        dir: PathBuf,
        /// Compute device: cpu or cuda:N.
        #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
        device: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, overrides } => serve(config, &overrides),
        Command::Check { dir, device } => check(&dir, &device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// candle reads its thread counts from the environment once: set them before any thread.
fn set_compute_threads(threads: usize) {
    let n = threads.to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}

fn serve(config: Option<PathBuf>, overrides: &Overrides) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref(), overrides)?;
    set_compute_threads(config.threads);
    kiln::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        kiln::serve(config, listener, kiln::shutdown::signal()).await
    })
}

fn check(dir: &std::path::Path, device: &str) -> anyhow::Result<()> {
    set_compute_threads(1);
    let device: kiln::model::DeviceSpec = device.parse().map_err(anyhow::Error::msg)?;
    let device = device.open()?;
    let started = std::time::Instant::now();
    let model = kiln::registry::load_and_warm(dir, &device)?;
    let spec = model.spec();
    println!(
        "ok: {} loaded and ran one forward pass in {:.1} ms",
        dir.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("task:    {:?}", spec.task);
    println!(
        "input:   {} {:?} (batch first: [-1, ...])",
        spec.input.dtype.as_str(),
        spec.input.shape
    );
    if let Some(f) = &spec.input.features {
        println!("features: {}", f.join(", "));
    }
    println!("output:  float32 {:?}", model.output_shape());
    if !spec.labels.is_empty() {
        println!("labels:  {}", spec.labels.join(", "));
    }
    println!(
        "layers:  {}",
        spec.layers
            .iter()
            .map(|l| l.kind())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    for t in model.unused_tensors() {
        println!("warning: tensor '{t}' is not used by any layer");
    }
    Ok(())
}
