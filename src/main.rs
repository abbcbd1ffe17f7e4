//! The `kiln` binary: parse the command line, run the subcommand (`cli/`), turn errors into
//! an exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

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
    Serve(cli::serve::Args),
    /// Load a model version directory, run one forward pass and print its signature.
    Check(cli::check::Args),
    /// A version's loss and metrics on a labelled CSV or JSON-records file, offline (what
    /// `:evaluate` answers).
    Evaluate(cli::evaluate::Args),
    /// Train a model from a CSV (or JSON records) file and write it as a new version.
    Train(cli::train::Args),
    /// Import weights saved by PyTorch (`safetensors.torch.save_file(model.state_dict())`) as
    /// a new version: validated (every tensor's presence and shape, one forward pass) first.
    Import(cli::import::Args),
    /// Manage API keys.
    Keys(cli::keys::Args),
    /// Probe a running server's readiness (for container HEALTHCHECKs): exit 0 on HTTP 200.
    Health(cli::health::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(a) => cli::serve::run(&a),
        Command::Check(a) => cli::check::run(&a),
        Command::Evaluate(a) => cli::evaluate::run(&a),
        Command::Train(a) => cli::train::run(&a),
        Command::Import(a) => cli::import::run(&a),
        Command::Keys(a) => cli::keys::run(&a),
        Command::Health(a) => cli::health::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
