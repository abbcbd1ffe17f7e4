//! `kiln keys`: manage the API key file.

use std::path::PathBuf;

/// `kiln keys`'s subcommands.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand)]
pub enum Command {
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

pub fn run(a: &Args) -> anyhow::Result<()> {
    match &a.command {
        Command::New { name, scopes, file } => new_key(name, scopes, file),
    }
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
