//! The subcommands of the `kiln` binary, one file each: their flags (`Args`) and their
//! `run`. `main.rs` only parses the command line and dispatches here.

pub mod check;
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
