//! The subcommands of the `kiln` binary, one file each: their flags (`Args`) and their
//! `run`. `main.rs` only parses the command line and dispatches here.

pub mod check;
pub mod evaluate;
pub mod health;
pub mod import;
pub mod keys;
pub mod serve;
pub mod train;

/// candle reads its thread counts from the environment once: set them before any thread.
pub(crate) fn set_compute_threads(threads: usize) {
    let n = threads.to_string();
    std::env::set_var("RAYON_NUM_THREADS", &n);
    std::env::set_var("CANDLE_NUM_THREADS", &n);
}

/// `kiln::store::validate_and_publish` from a command: the store is async (object-storage
/// backends are), so a one-thread runtime runs it.
pub(crate) fn publish(
    store: &kiln::store::LocalDir,
    name: &str,
    files: kiln::store::ModelFiles,
) -> anyhow::Result<kiln::store::Published> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(kiln::store::validate_and_publish(store, name, files))?)
}
