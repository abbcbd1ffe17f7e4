//! The training math: optimizers, losses, metrics, seeded initial weights and randomness.
//!
//! The trainer (one job on its own thread) calls these pieces; none of them spawns threads or
//! touches the serving side. Per step: forward (`train = true`) → [`losses::Loss::compute`]
//! → `backward()` → [`optim::Optimizer::step`] (which clips, when configured, before it
//! updates). Before the first step: build the model over a `VarMap`, then
//! [`init::init_model`] with the job's seed.
//!
//! - [`optim`]: SGD / Adam / AdamW / RMSprop with state kiln owns (checkpointable), gradient
//!   clipping and learning-rate schedules; a fused in-place update on the CPU.
//! - [`losses`]: cross-entropies from logits, MSE, MAE, Huber — all differentiable.
//! - [`metrics`]: accuracy, macro precision/recall/F1, confusion matrix, MAE, RMSE, R².
//! - [`init`]: Keras/PyTorch initial weights drawn from a seed.
//! - [`rng`]: the seeded generator behind weights, shuffles and dropout masks.

pub mod error;
pub mod init;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod rng;

pub use error::TrainingError;

// The job side: spec, data preparation, the loop, the job database.
pub mod checkpoint;
pub mod jobs;
pub mod prepare;
pub mod run;
pub mod spec;
pub mod store;
pub mod trainer;
