//! One training run: the spec, data preparation, the stoppable loop and the math under it.
//! `kiln train` uses this module alone; the server's job system (`jobs`) runs the
//! same [`run`] on its job threads, adding the queue, the database and checkpoints.
//!
//! A run: [`spec::JobSpec::resolve`] (defaults, checked against the data) →
//! [`run::prepare_data`] ([`prepare`]: split, fitted preprocessing, report) →
//! [`run::train_and_package`] ([`trainer::train`], then the served model's spec with its
//! training information), which the caller publishes through the model store (`store`).
//!
//! The loop runs on the caller's thread, never the async runtime. Per step: forward
//! (`train = true`) → [`losses::Loss::compute`] → `backward()` → [`optim::Optimizer::step`]
//! (which clips, when configured, before it updates). Before the first step: build the model
//! over a `VarMap`, then [`init::init_model`] with the job's seed. The caller's
//! [`trainer::Hooks`] decide when to stop and receive every epoch with its checkpoint state.
//!
//! - [`optim`]: SGD / Adam / AdamW / RMSprop with state kiln owns (checkpointable), gradient
//!   clipping and learning-rate schedules; a fused in-place update on the CPU.
//! - [`losses`]: cross-entropies from logits, MSE, MAE, Huber — all differentiable.
//! - [`metrics`]: accuracy, macro precision/recall/F1, confusion matrix, MAE, RMSE, R².
//! - [`init`]: Keras/PyTorch initial weights drawn from a seed.
//! - [`rng`]: the seeded generator behind weights, shuffles and dropout masks.
//! - [`text`]: a job with `base_model`: text columns encoded by a pretrained transformer,
//!   a classification head trained on the embeddings, a transformer version published.

pub mod error;
pub mod init;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod prepare;
pub mod rng;
pub mod run;
pub mod search;
pub mod spec;
pub mod text;
pub mod trainer;

pub use error::TrainingError;
