//! The `kiln` binary: parse the command line, build, run, turn errors into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
        overrides: Box<Overrides>,
    },
    /// Load a model version directory, run one forward pass and print its signature.
    Check {
        /// A version directory: holds model.json and model.safetensors.
        dir: PathBuf,
        /// Compute device: cpu or cuda:N.
        #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
        device: String,
    },
    /// Train a model from a CSV (or JSON records) file and write it as a new version.
    Train(train::Args),
    /// Import weights saved by PyTorch (`safetensors.torch.save_file(model.state_dict())`) as
    /// a new version: validated (every tensor's presence and shape, one forward pass) first.
    Import {
        /// The weights file.
        weights: PathBuf,
        /// model.json describing the layers (their `name` fields map PyTorch's module names).
        #[arg(long)]
        spec: PathBuf,
        /// Model name to publish under.
        #[arg(long)]
        name: String,
        /// Models directory.
        #[arg(long, env = "KILN_MODELS", default_value = "./models")]
        models: PathBuf,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Probe a running server's readiness (for container HEALTHCHECKs): exit 0 on HTTP 200.
    Health {
        /// Address of the server.
        #[arg(long, env = "KILN_HEALTH_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Path to probe.
        #[arg(long, default_value = "/health/ready")]
        path: String,
        /// The server's TLS certificate (PEM): when given, the probe speaks HTTPS and trusts
        /// exactly that certificate (no CA or name check, so 127.0.0.1 works).
        #[arg(long, env = "KILN_TLS_CERT")]
        tls_cert: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a random key, append its SHA-256 and scopes to FILE, print the key (once).
    New {
        /// A name for the key (shown in logs and errors, never the key).
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: predict, train, admin.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// The key file (created if missing).
        #[arg(long, env = "KILN_API_KEYS")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, overrides } => serve(config, &overrides),
        Command::Check { dir, device } => check(&dir, &device),
        Command::Train(args) => train::run(&args),
        Command::Health {
            addr,
            path,
            tls_cert,
        } => health(&addr, &path, tls_cert.as_deref()),
        Command::Keys {
            command: KeysCommand::New { name, scopes, file },
        } => new_key(&name, &scopes, &file),
        Command::Import {
            weights,
            spec,
            name,
            models,
        } => import(&weights, &spec, &name, &models),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

mod train;

/// candle reads its thread counts from the environment once: set them before any thread.
pub(crate) fn set_compute_threads(threads: usize) {
    let n = threads.to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}

fn serve(config: Option<PathBuf>, overrides: &Overrides) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref(), overrides)?;
    set_compute_threads(config.registry.threads);
    kiln::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let delay = config.drain_delay;
        kiln::serve(config, listener, kiln::shutdown::signal(delay)).await
    })
}

fn check(dir: &std::path::Path, device: &str) -> anyhow::Result<()> {
    set_compute_threads(1);
    let device: kiln::device::DeviceSpec = device.parse().map_err(anyhow::Error::msg)?;
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

/// A minimal HTTP/1.1 GET over a TCP socket (in TLS with `tls_cert`): no client library, no
/// shell, no curl needed in the runtime image.
fn health(addr: &str, path: &str, tls_cert: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
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
    let mut stream: Box<dyn ReadWrite> = match tls_cert {
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

fn import(
    weights: &std::path::Path,
    spec: &std::path::Path,
    name: &str,
    models: &std::path::Path,
) -> anyhow::Result<()> {
    set_compute_threads(1);
    if !kiln::registry::valid_model_name(name) {
        anyhow::bail!("invalid model name {name:?}: expected 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit");
    }
    let spec_bytes = std::fs::read(spec).with_context(|| format!("reading {}", spec.display()))?;
    let weight_bytes =
        std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
    let text = std::str::from_utf8(&spec_bytes)
        .with_context(|| format!("{} is not UTF-8", spec.display()))?;
    let parsed = kiln::model::format::ModelSpec::from_json(text)
        .map_err(|m| anyhow::anyhow!("{}: {m}", spec.display()))?;
    let device = candle_core::Device::Cpu;
    let tensors = candle_core::safetensors::load_buffer(&weight_bytes, &device).map_err(|e| {
        anyhow::anyhow!("{} is not a valid safetensors file: {e}", weights.display())
    })?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let listing = names
        .iter()
        .map(|n| format!("{n} {:?}", tensors[*n].dims()))
        .collect::<Vec<_>>()
        .join(", ");
    let model = kiln::model::Model::from_tensors(parsed, tensors.clone(), &device)
        .map_err(|e| anyhow::anyhow!("{e}\nthe file holds: {listing}"))?;
    model.warm_up()?;
    for t in model.unused_tensors() {
        eprintln!("warning: tensor '{t}' is not used by any layer");
    }
    let version =
        kiln::training::publish::publish_files(models, name, &spec_bytes, &weight_bytes, "import")?;
    println!(
        "imported {} as {name} version {version} ({})",
        weights.display(),
        models.join(name).join(version.to_string()).display()
    );
    Ok(())
}

fn new_key(name: &str, scopes: &[String], file: &std::path::Path) -> anyhow::Result<()> {
    let scopes = scopes
        .iter()
        .map(|s| {
            kiln::auth::Scope::parse(s).ok_or_else(|| {
                anyhow::anyhow!("unknown scope '{s}': expected predict, train or admin")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key = kiln::auth::new_key(file, name, &scopes)?;
    eprintln!(
        "key '{name}' added to {}; it is shown once:",
        file.display()
    );
    println!("{key}");
    Ok(())
}
