//! The optimizer kiln owns: SGD (momentum, Nesterov), Adam, AdamW and RMSprop, global
//! gradient-norm clipping and a per-epoch learning-rate schedule, with its state keyed by
//! parameter name so a checkpoint can save and restore it exactly.
//!
//! Why not candle-nn's: `AdamW` allocates about 12 tensors per parameter per step (the
//! allocator then page-faults them back in: 46 ms of a step where PyTorch spends 6), there is
//! no plain Adam (`AdamW`'s default weight decay is 0.01), and its moments are private, so a
//! resumed run could not continue where it stopped.
//!
//! # The update
//! On the CPU, for f32 parameters, each parameter is updated by one fused pass over parameter,
//! gradient and its state slots (`m` and `v` for Adam), in place through candle's
//! [`InplaceOp2`]: the parameter's storage is written directly, the slots are plain `Vec<f32>`
//! owned here, and nothing is allocated per step. Anywhere else (CUDA, f64/f16 parameters) the
//! same arithmetic runs as tensor ops and lands with `Var::set`: correct, slower, and
//! allocating. [`StepReport`] says which path each step took.
//!
//! # Formulas (Keras 3's, since the configuration uses Keras' names and defaults)
//! With `g` the gradient (times the clipping factor), `lr` the current learning rate, `t` the
//! 1-based step:
//! - SGD: `p -= lr·g`; with momentum `m = momentum·m - lr·g`, then `p += m`, or with Nesterov
//!   `p += momentum·m - lr·g`. (PyTorch keeps `buf = -m/lr`: the same trajectory while `lr` is
//!   constant.)
//! - Adam: `m += (1-β1)(g - m)`, `v += (1-β2)(g² - v)`,
//!   `p -= lr·√(1-β2^t)/(1-β1^t) · m / (√v + ε)`. Keras' ε is the paper's "ε-hat", added to
//!   √v before bias correction; PyTorch adds its ε after, so Keras ε equals PyTorch
//!   ε·√(1-β2^t). The default ε is Keras' 1e-7 (PyTorch's is 1e-8).
//!   `weight_decay` on `adam` is PyTorch's coupled L2 (`g += wd·p`); Keras 3 Adam's
//!   `weight_decay` is decoupled — use `adamw` for that.
//! - AdamW: `p -= lr·wd·p` before the Adam update (Keras and PyTorch agree). Default weight
//!   decay Keras' 0.004 (PyTorch and candle use 0.01).
//! - RMSprop: `v = ρ·v + (1-ρ)·g²`, `Δ = lr·g / √(v + ε)`; with momentum `b = momentum·b + Δ`,
//!   `p -= b`, else `p -= Δ`. (PyTorch: ε outside the root, lr outside the momentum buffer,
//!   default ρ 0.99.)
//!
//! `clipnorm` rescales every gradient by `min(1, clipnorm / (‖g‖ + 1e-6))` where ‖g‖ is the
//! L2 norm over all gradients together, exactly `torch.nn.utils.clip_grad_norm_` (Keras calls
//! this `global_clipnorm`, accepted as an alias; Keras' own `clipnorm` clips each tensor
//! separately). It is folded into the update pass: one extra read of the gradients, no
//! rescaled copies.
//!
//! The optimizer is owned by the training thread; it is `Send` but not shared.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Result, TrainingError};

/// State key of the step count; the slots are `optim.<slot>.<parameter name>`.
pub const STEP_KEY: &str = "optim.step";
/// Prefix of every state key: a checkpoint may keep weights and state in one file.
pub const STATE_PREFIX: &str = "optim.";

// === config ===

/// `{"type": "sgd" | "adam" | "adamw" | "rmsprop", ...}`. Omitted fields take Keras' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    #[serde(rename = "rmsprop")]
    RmsProp(RmsPropConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    #[serde(alias = "lr")]
    pub learning_rate: f64,
    pub momentum: f64,
    pub nesterov: bool,
    #[serde(alias = "global_clipnorm")]
    pub clipnorm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    #[serde(alias = "lr")]
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    /// Coupled L2 (`g += wd·p`, PyTorch Adam's `weight_decay`). 0 by default.
    pub weight_decay: f64,
    #[serde(alias = "global_clipnorm")]
    pub clipnorm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    #[serde(alias = "lr")]
    pub learning_rate: f64,
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    /// Decoupled decay (`p -= lr·wd·p`). Keras' default 0.004.
    pub weight_decay: f64,
    #[serde(alias = "global_clipnorm")]
    pub clipnorm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RmsPropConfig {
    #[serde(alias = "lr")]
    pub learning_rate: f64,
    pub rho: f64,
    pub momentum: f64,
    pub epsilon: f64,
    #[serde(alias = "global_clipnorm")]
    pub clipnorm: Option<f64>,
}

impl Default for SgdConfig {
    /// Keras: `SGD(learning_rate=0.01, momentum=0.0, nesterov=False)`.
    fn default() -> Self {
        SgdConfig {
            learning_rate: 0.01,
            momentum: 0.0,
            nesterov: false,
            clipnorm: None,
        }
    }
}

impl Default for AdamConfig {
    /// Keras: `Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07)`.
    fn default() -> Self {
        AdamConfig {
            learning_rate: 0.001,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.0,
            clipnorm: None,
        }
    }
}

impl Default for AdamWConfig {
    /// Keras: `AdamW(learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
    /// epsilon=1e-07)`.
    fn default() -> Self {
        AdamWConfig {
            learning_rate: 0.001,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.004,
            clipnorm: None,
        }
    }
}

impl Default for RmsPropConfig {
    /// Keras: `RMSprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07)`.
    fn default() -> Self {
        RmsPropConfig {
            learning_rate: 0.001,
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            clipnorm: None,
        }
    }
}

impl Default for OptimizerConfig {
    /// Adam with Keras' defaults.
    fn default() -> Self {
        OptimizerConfig::Adam(AdamConfig::default())
    }
}

impl OptimizerConfig {
    /// The configured (base) learning rate.
    pub fn learning_rate(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd(c) => c.learning_rate,
            OptimizerConfig::Adam(c) => c.learning_rate,
            OptimizerConfig::AdamW(c) => c.learning_rate,
            OptimizerConfig::RmsProp(c) => c.learning_rate,
        }
    }

    pub fn clipnorm(&self) -> Option<f64> {
        match self {
            OptimizerConfig::Sgd(c) => c.clipnorm,
            OptimizerConfig::Adam(c) => c.clipnorm,
            OptimizerConfig::AdamW(c) => c.clipnorm,
            OptimizerConfig::RmsProp(c) => c.clipnorm,
        }
    }

    /// Checks every value's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let positive = |what: &'static str, x: f64| {
            if x > 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(TrainingError::config(
                    what,
                    format!("must be positive, got {x}"),
                ))
            }
        };
        let unit = |what: &'static str, x: f64| {
            if (0.0..1.0).contains(&x) {
                Ok(())
            } else {
                Err(TrainingError::config(
                    what,
                    format!("must be in [0, 1), got {x}"),
                ))
            }
        };
        let non_negative = |what: &'static str, x: f64| {
            if x >= 0.0 && x.is_finite() {
                Ok(())
            } else {
                Err(TrainingError::config(
                    what,
                    format!("must be >= 0, got {x}"),
                ))
            }
        };
        positive("learning_rate", self.learning_rate())?;
        if let Some(c) = self.clipnorm() {
            positive("clipnorm", c)?;
        }
        match self {
            OptimizerConfig::Sgd(c) => unit("momentum", c.momentum),
            OptimizerConfig::Adam(AdamConfig {
                beta_1,
                beta_2,
                epsilon,
                weight_decay,
                ..
            })
            | OptimizerConfig::AdamW(AdamWConfig {
                beta_1,
                beta_2,
                epsilon,
                weight_decay,
                ..
            }) => {
                unit("beta_1", *beta_1)?;
                unit("beta_2", *beta_2)?;
                positive("epsilon", *epsilon)?;
                non_negative("weight_decay", *weight_decay)
            }
            OptimizerConfig::RmsProp(c) => {
                unit("rho", c.rho)?;
                unit("momentum", c.momentum)?;
                positive("epsilon", c.epsilon)
            }
        }
    }

    fn rule(&self) -> Rule {
        match self {
            OptimizerConfig::Sgd(c) => Rule::Sgd {
                momentum: c.momentum,
                nesterov: c.nesterov,
            },
            OptimizerConfig::Adam(c) => Rule::Adam {
                beta_1: c.beta_1,
                beta_2: c.beta_2,
                epsilon: c.epsilon,
                l2: c.weight_decay,
                decoupled: 0.0,
            },
            OptimizerConfig::AdamW(c) => Rule::Adam {
                beta_1: c.beta_1,
                beta_2: c.beta_2,
                epsilon: c.epsilon,
                l2: 0.0,
                decoupled: c.weight_decay,
            },
            OptimizerConfig::RmsProp(c) => Rule::RmsProp {
                rho: c.rho,
                momentum: c.momentum,
                epsilon: c.epsilon,
            },
        }
    }
}

/// A per-epoch learning-rate schedule: `{"type": "step", "step_size": 10, "gamma": 0.5}` or
/// `{"type": "cosine", "min_learning_rate": 0.0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// `lr · gamma^⌊epoch / step_size⌋` (PyTorch's `StepLR`; gamma defaults to its 0.1).
    Step {
        step_size: usize,
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// `min + (lr - min)·(1 + cos(π·epoch/epochs))/2` over the run's epochs (PyTorch's
    /// `CosineAnnealingLR` with `T_max` = epochs): `lr` in epoch 0, approaching `min` at the end.
    Cosine {
        #[serde(default, alias = "min_lr")]
        min_learning_rate: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        match *self {
            ScheduleConfig::Step { step_size, gamma } => {
                if step_size == 0 {
                    return Err(TrainingError::config("step_size", "must be at least 1"));
                }
                if !(gamma > 0.0 && gamma.is_finite()) {
                    return Err(TrainingError::config(
                        "gamma",
                        format!("must be positive, got {gamma}"),
                    ));
                }
                Ok(())
            }
            ScheduleConfig::Cosine { min_learning_rate } => {
                if min_learning_rate >= 0.0 && min_learning_rate.is_finite() {
                    Ok(())
                } else {
                    Err(TrainingError::config(
                        "min_learning_rate",
                        format!("must be >= 0, got {min_learning_rate}"),
                    ))
                }
            }
        }
    }

    /// The learning rate of 0-based `epoch` in a run of `epochs`, from the base rate `base`.
    pub fn learning_rate(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            ScheduleConfig::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            ScheduleConfig::Cosine { min_learning_rate } => {
                let total = epochs.max(1) as f64;
                let progress = (epoch as f64).min(total) / total;
                min_learning_rate
                    + (base - min_learning_rate) * (1.0 + (std::f64::consts::PI * progress).cos())
                        / 2.0
            }
        }
    }
}

// === update rules ===

/// The validated algorithm and its constant hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Sgd {
        momentum: f64,
        nesterov: bool,
    },
    /// Adam and AdamW: `l2` is coupled decay (Adam), `decoupled` AdamW's.
    Adam {
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        l2: f64,
        decoupled: f64,
    },
    RmsProp {
        rho: f64,
        momentum: f64,
        epsilon: f64,
    },
}

impl Rule {
    /// Names of the per-parameter state slots, in slot order.
    fn slot_names(&self) -> &'static [&'static str] {
        match *self {
            Rule::Sgd { momentum, .. } if momentum > 0.0 => &["momentum"],
            Rule::Sgd { .. } => &[],
            Rule::Adam { .. } => &["m", "v"],
            Rule::RmsProp { momentum, .. } if momentum > 0.0 => &["velocity", "momentum"],
            Rule::RmsProp { .. } => &["velocity"],
        }
    }
}

/// One step's coefficients, rounded to f32 once so that the fused and the tensor paths use
/// the very same numbers.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Sgd {
        lr: f32,
        momentum: f32,
        nesterov: bool,
    },
    Adam {
        /// `lr·√(1-β2^t)/(1-β1^t)`, computed in f64.
        alpha: f32,
        one_minus_beta_1: f32,
        one_minus_beta_2: f32,
        epsilon: f32,
        l2: f32,
        /// `lr·weight_decay` (AdamW).
        decay: f32,
    },
    RmsProp {
        lr: f32,
        rho: f32,
        one_minus_rho: f32,
        epsilon: f32,
        momentum: f32,
    },
}

impl Kernel {
    /// Coefficients of step `t` (1-based) at learning rate `lr`.
    fn new(rule: Rule, lr: f64, t: u64) -> Kernel {
        match rule {
            Rule::Sgd { momentum, nesterov } => Kernel::Sgd {
                lr: lr as f32,
                momentum: momentum as f32,
                nesterov,
            },
            Rule::Adam {
                beta_1,
                beta_2,
                epsilon,
                l2,
                decoupled,
            } => {
                let t = t.min(i32::MAX as u64) as i32;
                Kernel::Adam {
                    alpha: (lr * (1.0 - beta_2.powi(t)).sqrt() / (1.0 - beta_1.powi(t))) as f32,
                    one_minus_beta_1: (1.0 - beta_1) as f32,
                    one_minus_beta_2: (1.0 - beta_2) as f32,
                    epsilon: epsilon as f32,
                    l2: l2 as f32,
                    decay: (lr * decoupled) as f32,
                }
            }
            Rule::RmsProp {
                rho,
                momentum,
                epsilon,
            } => Kernel::RmsProp {
                lr: lr as f32,
                rho: rho as f32,
                one_minus_rho: (1.0 - rho) as f32,
                epsilon: epsilon as f32,
                momentum: momentum as f32,
            },
        }
    }
}

/// The fused update over one parameter's slices: `p` (written), `g` (scaled by `scale`) and
/// the slots (written). All slices have the same length.
fn update_slices(
    kernel: Kernel,
    scale: f32,
    p: &mut [f32],
    g: &[f32],
    slots: &mut [Vec<f32>],
) -> std::result::Result<(), String> {
    let n = p.len();
    if g.len() != n || slots.iter().any(|s| s.len() != n) {
        return Err(format!(
            "fused optimizer update: parameter of {n} values, gradient of {}, state slots of {:?}",
            g.len(),
            slots.iter().map(Vec::len).collect::<Vec<_>>()
        ));
    }
    match (kernel, slots) {
        (Kernel::Sgd { lr, .. }, []) => {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= lr * (g * scale);
            }
        }
        (
            Kernel::Sgd {
                lr,
                momentum,
                nesterov,
            },
            [m],
        ) => {
            // `nesterov` picks the loop, so neither loop branches per element.
            if nesterov {
                for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                    let g = g * scale;
                    *m = momentum * *m - lr * g;
                    *p += momentum * *m - lr * g;
                }
            } else {
                for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                    *m = momentum * *m - lr * (g * scale);
                    *p += *m;
                }
            }
        }
        (
            Kernel::Adam {
                alpha,
                one_minus_beta_1,
                one_minus_beta_2,
                epsilon,
                l2,
                decay,
            },
            [m, v],
        ) => {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                // Branch-free: with `l2` or `decay` 0 these add or subtract an exact 0 (the
                // tensor path skips them instead; the results are the same for finite values).
                let g = g * scale + l2 * *p;
                let q = *p - decay * *p;
                *m += (g - *m) * one_minus_beta_1;
                *v += (g * g - *v) * one_minus_beta_2;
                *p = q - alpha * *m / (v.sqrt() + epsilon);
            }
        }
        (
            Kernel::RmsProp {
                lr,
                rho,
                one_minus_rho,
                epsilon,
                ..
            },
            [v],
        ) => {
            for ((p, &g), v) in p.iter_mut().zip(g).zip(v.iter_mut()) {
                let g = g * scale;
                *v = rho * *v + one_minus_rho * (g * g);
                *p -= lr * g / (*v + epsilon).sqrt();
            }
        }
        (
            Kernel::RmsProp {
                lr,
                rho,
                one_minus_rho,
                epsilon,
                momentum,
            },
            [v, b],
        ) => {
            for (((p, &g), v), b) in p.iter_mut().zip(g).zip(v.iter_mut()).zip(b.iter_mut()) {
                let g = g * scale;
                *v = rho * *v + one_minus_rho * (g * g);
                *b = momentum * *b + lr * g / (*v + epsilon).sqrt();
                *p -= *b;
            }
        }
        (kernel, slots) => {
            return Err(format!(
                "fused optimizer update: {} state slots do not fit {kernel:?}",
                slots.len()
            ))
        }
    }
    Ok(())
}

/// The same arithmetic as [`update_slices`] in tensor ops, for devices and dtypes the fused
/// pass does not cover. Returns the new parameter value; replaces the slots. Everything is
/// detached: a slot that kept its graph would chain every step's graph to the next.
fn update_tensors(
    kernel: Kernel,
    scale: f32,
    param: &Tensor,
    grad: &Tensor,
    slots: &mut [Tensor],
) -> candle_core::Result<Tensor> {
    let p = param.detach();
    let mut g = grad.detach().to_dtype(p.dtype())?;
    if scale != 1.0 {
        g = (g * scale as f64)?;
    }
    let f = |x: f32| x as f64;
    let new_p = match (kernel, slots) {
        (Kernel::Sgd { lr, .. }, []) => (p - (g * f(lr))?)?,
        (
            Kernel::Sgd {
                lr,
                momentum,
                nesterov,
            },
            [m],
        ) => {
            *m = ((&*m * f(momentum))? - (&g * f(lr))?)?;
            if nesterov {
                (p + ((&*m * f(momentum))? - (g * f(lr))?)?)?
            } else {
                (p + &*m)?
            }
        }
        (
            Kernel::Adam {
                alpha,
                one_minus_beta_1,
                one_minus_beta_2,
                epsilon,
                l2,
                decay,
            },
            [m, v],
        ) => {
            if l2 != 0.0 {
                g = (g + (&p * f(l2))?)?;
            }
            let q = if decay != 0.0 {
                (&p - (&p * f(decay))?)?
            } else {
                p
            };
            *m = (&*m + ((&g - &*m)? * f(one_minus_beta_1))?)?;
            *v = (&*v + ((g.sqr()? - &*v)? * f(one_minus_beta_2))?)?;
            (q - ((&*m * f(alpha))? / (v.sqrt()? + f(epsilon))?)?)?
        }
        (
            Kernel::RmsProp {
                lr,
                rho,
                one_minus_rho,
                epsilon,
                ..
            },
            [v],
        ) => {
            *v = ((&*v * f(rho))? + (g.sqr()? * f(one_minus_rho))?)?;
            (p - ((g * f(lr))? / (&*v + f(epsilon))?.sqrt()?)?)?
        }
        (
            Kernel::RmsProp {
                lr,
                rho,
                one_minus_rho,
                epsilon,
                momentum,
            },
            [v, b],
        ) => {
            *v = ((&*v * f(rho))? + (g.sqr()? * f(one_minus_rho))?)?;
            let delta = ((g * f(lr))? / (&*v + f(epsilon))?.sqrt()?)?;
            *b = ((&*b * f(momentum))? + delta)?;
            (p - &*b)?
        }
        (kernel, slots) => candle_core::bail!(
            "optimizer update: {} state slots do not fit {kernel:?}",
            slots.len()
        ),
    };
    Ok(new_p)
}

/// [`update_slices`] as a candle in-place op on the parameter's own storage. The slots live
/// outside candle, borrowed for the call; `RefCell` because `cpu_fwd` takes `&self`.
struct FusedUpdate<'a> {
    kernel: Kernel,
    grad_scale: f32,
    slots: RefCell<&'a mut [Vec<f32>]>,
}

impl InplaceOp2 for FusedUpdate<'_> {
    fn name(&self) -> &'static str {
        "kiln-fused-optimizer-update"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (param, grad) else {
            candle_core::bail!("the fused optimizer update needs an f32 parameter and gradient")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (
            param_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("the fused optimizer update needs contiguous tensors")
        };
        let mut slots = self.slots.borrow_mut();
        update_slices(
            self.kernel,
            self.grad_scale,
            &mut param[p0..p1],
            &grad[g0..g1],
            &mut slots,
        )
        .map_err(|m| candle_core::Error::Msg(m).bt())
    }
}

// === impl Optimizer ===

/// One parameter's state slots: host vectors for the fused path, tensors on the parameter's
/// device for the fallback.
#[derive(Debug)]
enum Slots {
    Host(Vec<Vec<f32>>),
    Tensor(Vec<Tensor>),
}

#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
    slots: Slots,
}

/// What one [`Optimizer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Steps taken so far, this one included.
    pub step: u64,
    pub learning_rate: f64,
    /// Global L2 norm of the gradients before clipping; computed only when `clipnorm` is set.
    pub grad_norm: Option<f64>,
    /// The factor every gradient was multiplied by (1 unless clipped).
    pub clip_scale: f64,
    /// Parameters updated by the fused in-place pass.
    pub in_place: usize,
    /// Parameters updated by the tensor-op fallback.
    pub fallback: usize,
    /// Parameters the gradient store had no gradient for (left unchanged).
    pub without_grad: usize,
}

/// The optimizer over a fixed set of named parameters.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    rule: Rule,
    /// Sorted by name, so state and iteration order do not depend on a `HashMap`.
    params: Vec<Param>,
    base_lr: f64,
    lr: f64,
    clipnorm: Option<f64>,
    schedule: Option<(ScheduleConfig, usize)>,
    /// Completed steps; Adam's bias correction uses `step + 1`.
    step: u64,
}

impl Optimizer {
    /// An optimizer for `params` (name → variable, e.g. a `VarMap`'s contents). Every
    /// parameter gets zeroed state. f32 parameters on the CPU take the fused in-place path.
    pub fn new(params: Vec<(String, Var)>, config: &OptimizerConfig) -> Result<Self> {
        Self::build(params, config, true)
    }

    /// An optimizer over the [`trainable`] variables of `varmap`.
    pub fn from_varmap(varmap: &VarMap, config: &OptimizerConfig) -> Result<Self> {
        Self::new(trainable(varmap), config)
    }

    fn build(
        mut params: Vec<(String, Var)>,
        config: &OptimizerConfig,
        allow_in_place: bool,
    ) -> Result<Self> {
        config.validate()?;
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = params.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(TrainingError::config(
                "parameters",
                format!("'{}' appears twice", w[0].0),
            ));
        }
        let rule = config.rule();
        let k = rule.slot_names().len();
        let params = params
            .into_iter()
            .map(|(name, var)| {
                if !var.dtype().is_float() {
                    return Err(TrainingError::config(
                        "parameters",
                        format!(
                            "'{name}' has dtype {:?}; only float tensors train",
                            var.dtype()
                        ),
                    ));
                }
                let slots = if allow_in_place && fused_capable(&var) {
                    Slots::Host(vec![vec![0f32; var.elem_count()]; k])
                } else {
                    Slots::Tensor(
                        (0..k)
                            .map(|_| var.as_tensor().zeros_like())
                            .collect::<candle_core::Result<_>>()?,
                    )
                };
                Ok(Param { name, var, slots })
            })
            .collect::<Result<_>>()?;
        let base_lr = config.learning_rate();
        Ok(Optimizer {
            config: config.clone(),
            rule,
            params,
            base_lr,
            lr: base_lr,
            clipnorm: config.clipnorm(),
            schedule: None,
            step: 0,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The parameter names, sorted.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Whether every parameter takes the fused in-place path.
    pub fn all_in_place(&self) -> bool {
        self.params
            .iter()
            .all(|p| matches!(p.slots, Slots::Host(_)))
    }

    /// Steps taken (restored by [`Optimizer::load_state`]).
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step uses.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Overrides the learning rate until the next [`Optimizer::set_epoch`] with a schedule.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Follows `schedule` over a run of `epochs` epochs (`None`: a constant rate). Takes effect
    /// at the next [`Optimizer::set_epoch`].
    pub fn set_schedule(&mut self, schedule: Option<ScheduleConfig>, epochs: usize) -> Result<()> {
        if let Some(s) = &schedule {
            s.validate()?;
        }
        self.schedule = schedule.map(|s| (s, epochs));
        Ok(())
    }

    /// Sets the learning rate for 0-based `epoch` from the schedule (call at the start of
    /// every epoch, and once after a resume); returns it. Without a schedule the rate stays.
    pub fn set_epoch(&mut self, epoch: usize) -> f64 {
        if let Some((schedule, epochs)) = &self.schedule {
            self.lr = schedule.learning_rate(self.base_lr, epoch, *epochs);
        }
        self.lr
    }

    /// Global L2 norm over the gradients of this optimizer's parameters (those present).
    /// Reads CPU f32 gradients in place, accumulating in f64.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0.0;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                sum += sum_of_squares(g)?;
            }
        }
        Ok(sum.sqrt())
    }

    /// Applies one update from `grads` (the result of `loss.backward()`), clipping first when
    /// `clipnorm` is set. A parameter without a gradient is left as it is. With clipping on, a
    /// NaN or infinite gradient norm is refused before anything changes
    /// ([`TrainingError::NonFiniteGradient`]).
    pub fn step(&mut self, grads: &GradStore) -> Result<StepReport> {
        let mut report = StepReport {
            step: self.step + 1,
            learning_rate: self.lr,
            grad_norm: None,
            clip_scale: 1.0,
            in_place: 0,
            fallback: 0,
            without_grad: 0,
        };
        if let Some(max_norm) = self.clipnorm {
            let norm = self.grad_norm(grads)?;
            if !norm.is_finite() {
                return Err(TrainingError::NonFiniteGradient(norm));
            }
            report.grad_norm = Some(norm);
            // torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6),
            // clamped to 1.
            report.clip_scale = (max_norm / (norm + 1e-6)).min(1.0);
        }
        let kernel = Kernel::new(self.rule, self.lr, self.step + 1);
        let scale = report.clip_scale as f32;
        for param in &mut self.params {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                report.without_grad += 1;
                continue;
            };
            match &mut param.slots {
                Slots::Host(slots) => {
                    let grad = if fused_capable(grad) {
                        grad.clone()
                    } else {
                        grad.to_device(&Device::Cpu)?
                            .to_dtype(DType::F32)?
                            .contiguous()?
                    };
                    let op = FusedUpdate {
                        kernel,
                        grad_scale: scale,
                        slots: RefCell::new(slots.as_mut_slice()),
                    };
                    param.var.as_tensor().inplace_op2(&grad, &op)?;
                    report.in_place += 1;
                }
                Slots::Tensor(slots) => {
                    let new = update_tensors(kernel, scale, param.var.as_tensor(), grad, slots)?;
                    param.var.set(&new)?;
                    report.fallback += 1;
                }
            }
        }
        self.step += 1;
        Ok(report)
    }

    /// The state to checkpoint: `optim.step` (an i64 scalar) and, for each parameter and slot,
    /// `optim.<slot>.<parameter>` in the parameter's shape (slots: `momentum` for SGD with
    /// momentum; `m`, `v` for Adam/AdamW; `velocity` and, with momentum, `momentum` for
    /// RMSprop). Host slots are copied into new CPU tensors.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let names = self.rule.slot_names();
        let mut out = Vec::with_capacity(1 + self.params.len() * names.len());
        out.push((
            STEP_KEY.to_string(),
            Tensor::new(self.step as i64, &Device::Cpu)?,
        ));
        for p in &self.params {
            for (i, slot) in names.iter().enumerate() {
                let t = match &p.slots {
                    Slots::Host(s) => Tensor::from_slice(&s[i], p.var.shape(), &Device::Cpu)?,
                    Slots::Tensor(s) => s[i].clone(),
                };
                out.push((state_key(slot, &p.name), t));
            }
        }
        Ok(out)
    }

    /// Restores what [`Optimizer::state`] saved, for the same parameters and algorithm.
    /// Keys outside the `optim.` prefix are ignored (the map may be a whole checkpoint);
    /// a missing, misshapen or unexpected `optim.` key is an error, and then nothing changes.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let step = state
            .get(STEP_KEY)
            .ok_or_else(|| TrainingError::State(format!("'{STEP_KEY}' is missing")))?;
        let step: Vec<f64> = step.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let step = match step[..] {
            [s] if s >= 0.0 && s.fract() == 0.0 => s as u64,
            _ => {
                return Err(TrainingError::State(format!(
                    "'{STEP_KEY}' must be one non-negative whole number, got {step:?}"
                )))
            }
        };
        let names = self.rule.slot_names();
        let mut expected: HashSet<String> = HashSet::from([STEP_KEY.to_string()]);
        let mut loaded = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut host = Vec::new();
            let mut tensors = Vec::new();
            for slot in names {
                let key = state_key(slot, &p.name);
                let t = state.get(&key).ok_or_else(|| {
                    TrainingError::State(format!(
                        "'{key}' is missing (saved for other parameters or another optimizer?)"
                    ))
                })?;
                if t.dims() != p.var.dims() {
                    return Err(TrainingError::State(format!(
                        "'{key}' has shape {:?}, the parameter {:?}",
                        t.dims(),
                        p.var.dims()
                    )));
                }
                match p.slots {
                    Slots::Host(_) => host.push(
                        t.to_device(&Device::Cpu)?
                            .to_dtype(DType::F32)?
                            .flatten_all()?
                            .to_vec1::<f32>()?,
                    ),
                    Slots::Tensor(_) => tensors.push(
                        t.to_device(p.var.device())?
                            .to_dtype(p.var.dtype())?
                            .copy()?,
                    ),
                }
                expected.insert(key);
            }
            loaded.push(match p.slots {
                Slots::Host(_) => Slots::Host(host),
                Slots::Tensor(_) => Slots::Tensor(tensors),
            });
        }
        let mut unexpected: Vec<&String> = state
            .keys()
            .filter(|k| k.starts_with(STATE_PREFIX) && !expected.contains(*k))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(TrainingError::State(format!(
                "unexpected entries {unexpected:?} (saved for other parameters or another optimizer?)"
            )));
        }
        for (p, slots) in self.params.iter_mut().zip(loaded) {
            p.slots = slots;
        }
        self.step = step;
        Ok(())
    }
}

/// The variables of `varmap` that gradients train: all but batch-norm running statistics
/// (`*.running_mean`, `*.running_var`), which candle-nn's `BatchNorm` keeps as variables in
/// the same map and updates itself. (They would get no gradient anyway; leaving them out
/// spares their optimizer state.)
pub fn trainable(varmap: &VarMap) -> Vec<(String, Var)> {
    varmap
        .data()
        .lock()
        .expect("no thread panicked while holding the VarMap lock")
        .iter()
        .filter(|(name, _)| !name.ends_with(".running_mean") && !name.ends_with(".running_var"))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect()
}

fn state_key(slot: &str, param: &str) -> String {
    format!("{STATE_PREFIX}{slot}.{param}")
}

/// Whether the fused pass can read or write `t` directly: f32, on the CPU, contiguous.
fn fused_capable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Σ x² of a gradient: read in place for CPU f32 storage, else through tensor ops.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(sum_of_squares_f32(&data[a..b]));
        }
    }
    Ok(g.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// Σ x² in f64 over eight independent partial sums: one serial chain of f64 additions
/// cannot be vectorized (float addition is not reassociated) and ran at half the speed of
/// the whole Adam update.
fn sum_of_squares_f32(xs: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = xs.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += (x as f64) * (x as f64);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::rng::Rng;
    use candle_core::Module;
    use candle_nn::{Linear, VarBuilder};

    fn var(xs: &[f32]) -> Var {
        Var::new(xs, &Device::Cpu).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A gradient store holding exactly `grads` for `vars`.
    fn grads_for(pairs: &[(&Var, &[f32])]) -> GradStore {
        let mut g = GradStore::default();
        for (v, xs) in pairs {
            let t = Tensor::from_slice(xs, v.shape(), v.device()).unwrap();
            g.insert(v.as_tensor(), t);
        }
        g
    }

    fn close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() <= tol * w.abs().max(1.0),
                "got {got:?}, want {want:?}"
            );
        }
    }

    fn adam(lr: f64) -> OptimizerConfig {
        OptimizerConfig::Adam(AdamConfig {
            learning_rate: lr,
            ..AdamConfig::default()
        })
    }

    #[test]
    fn adam_matches_hand_computed_steps() {
        let p = var(&[1.0, -2.0]);
        let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &adam(0.1)).unwrap();
        assert!(opt.all_in_place());
        let grads: [[f64; 2]; 3] = [[0.5, -1.0], [0.1, 0.2], [-0.3, 0.0]];
        // Reference arithmetic in f64 (Keras 3 Adam.update_step):
        //   m += (g - m)(1 - β1); v += (g² - v)(1 - β2);
        //   p -= lr·sqrt(1 - β2^t)/(1 - β1^t) · m/(sqrt(v) + ε).
        // Step 1 by hand: m = 0.1g, v = 0.001g², alpha = 0.1·sqrt(0.001)/0.1 = 0.0316228,
        // so the step is 0.1·g/(|g| + 1e-7/0.0316228): p0 = 1 - 0.05/0.5000032 = 0.9000006,
        // p1 = -2 + 0.1/1.0000032 = -1.9000003.
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-7f64, 0.1f64);
        let (mut pr, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let alpha = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
            for i in 0..2 {
                m[i] += (g[i] - m[i]) * (1.0 - b1);
                v[i] += (g[i] * g[i] - v[i]) * (1.0 - b2);
                pr[i] -= alpha * m[i] / (v[i].sqrt() + eps);
            }
            let g32 = [g[0] as f32, g[1] as f32];
            let report = opt.step(&grads_for(&[(&p, &g32)])).unwrap();
            assert_eq!((report.in_place, report.fallback), (1, 0));
            if t == 1 {
                close(&values(&p), &[0.900_000_6, -1.900_000_3], 1e-6);
            }
            close(&values(&p), &pr, 1e-6);
        }
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn sgd_momentum_and_nesterov_match_hand_computed_steps() {
        // lr 0.1, momentum 0.9, p = 1, gradient 1 twice (Keras 3 SGD.update_step):
        //   plain:    m1 = -0.1, p1 = 0.9;  m2 = 0.9·(-0.1) - 0.1 = -0.19, p2 = 0.71.
        //   Nesterov: p1 = 1 + 0.9·(-0.1) - 0.1 = 0.81;  p2 = 0.81 + 0.9·(-0.19) - 0.1 = 0.539.
        // PyTorch gives the same: buf = 1, 1.9; p = 0.9, 0.71 (Nesterov: 1 - 0.19, 0.81 - 0.271).
        for (nesterov, want) in [(false, [0.9, 0.71]), (true, [0.81, 0.539])] {
            let p = var(&[1.0]);
            let config = OptimizerConfig::Sgd(SgdConfig {
                learning_rate: 0.1,
                momentum: 0.9,
                nesterov,
                clipnorm: None,
            });
            let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &config).unwrap();
            for w in want {
                opt.step(&grads_for(&[(&p, &[1.0])])).unwrap();
                close(&values(&p), &[w], 1e-6);
            }
        }
        // No momentum: p -= lr·g.
        let p = var(&[1.0, 2.0]);
        let config = OptimizerConfig::Sgd(SgdConfig::default()); // lr 0.01
        let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &config).unwrap();
        opt.step(&grads_for(&[(&p, &[10.0, -5.0])])).unwrap();
        close(&values(&p), &[0.9, 2.05], 1e-6);
    }

    #[test]
    fn rmsprop_matches_hand_computed_steps() {
        // lr 0.01, ρ 0.9, ε 1e-7, momentum 0.5, p = 1, gradient 2 twice (Keras 3 RMSprop):
        //   v1 = 0.1·4 = 0.4, Δ1 = 0.02/sqrt(0.4000001) = 0.0316228, b1 = Δ1, p1 = 0.9683772;
        //   v2 = 0.36 + 0.4 = 0.76, Δ2 = 0.02/sqrt(0.7600001) = 0.0229416,
        //   b2 = 0.5·0.0316228 + 0.0229416 = 0.0387530, p2 = 0.9296242.
        let p = var(&[1.0]);
        let config = OptimizerConfig::RmsProp(RmsPropConfig {
            learning_rate: 0.01,
            momentum: 0.5,
            ..RmsPropConfig::default()
        });
        let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &config).unwrap();
        opt.step(&grads_for(&[(&p, &[2.0])])).unwrap();
        close(&values(&p), &[0.968_377_2], 1e-6);
        opt.step(&grads_for(&[(&p, &[2.0])])).unwrap();
        close(&values(&p), &[0.929_624_2], 1e-6);
    }

    #[test]
    fn adamw_decays_decoupled_and_adam_l2_is_coupled() {
        // lr 0.1, wd 0.5, p = 2, g = 1, one step.
        // AdamW: p ← 2 - 0.1·0.5·2 = 1.9, then the first Adam step moves it by
        // 0.1·1/(1 + 3.16e-6) = 0.0999997: 1.8000003.
        // Adam with L2: g ← 1 + 0.5·2 = 2; the first Adam step is ~lr·sign(g): 1.9000002.
        let p = var(&[2.0]);
        let config = OptimizerConfig::AdamW(AdamWConfig {
            learning_rate: 0.1,
            weight_decay: 0.5,
            ..AdamWConfig::default()
        });
        let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &config).unwrap();
        opt.step(&grads_for(&[(&p, &[1.0])])).unwrap();
        close(&values(&p), &[1.800_000_3], 1e-6);

        let p = var(&[2.0]);
        let config = OptimizerConfig::Adam(AdamConfig {
            learning_rate: 0.1,
            weight_decay: 0.5,
            ..AdamConfig::default()
        });
        let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &config).unwrap();
        opt.step(&grads_for(&[(&p, &[1.0])])).unwrap();
        close(&values(&p), &[1.900_000_2], 1e-6);
    }

    fn all_configs() -> Vec<OptimizerConfig> {
        vec![
            OptimizerConfig::Sgd(SgdConfig {
                learning_rate: 0.05,
                ..SgdConfig::default()
            }),
            OptimizerConfig::Sgd(SgdConfig {
                learning_rate: 0.05,
                momentum: 0.9,
                nesterov: true,
                clipnorm: Some(0.5),
            }),
            OptimizerConfig::Sgd(SgdConfig {
                learning_rate: 0.05,
                momentum: 0.8,
                ..SgdConfig::default()
            }),
            OptimizerConfig::Adam(AdamConfig {
                learning_rate: 0.01,
                weight_decay: 0.1,
                clipnorm: Some(1.0),
                ..AdamConfig::default()
            }),
            OptimizerConfig::AdamW(AdamWConfig {
                learning_rate: 0.01,
                weight_decay: 0.1,
                ..AdamWConfig::default()
            }),
            OptimizerConfig::RmsProp(RmsPropConfig::default()),
            OptimizerConfig::RmsProp(RmsPropConfig {
                momentum: 0.9,
                clipnorm: Some(2.0),
                ..RmsPropConfig::default()
            }),
        ]
    }

    #[test]
    fn fused_and_tensor_paths_agree() {
        for config in all_configs() {
            let mut rng = Rng::new(9);
            let mut init = vec![0f32; 30];
            rng.fill_normal(&mut init, 0.0, 1.0);
            let matrix = || {
                Var::from_tensor(&Tensor::from_slice(&init[..12], (3, 4), &Device::Cpu).unwrap())
                    .unwrap()
            };
            let (a1, a2) = (matrix(), var(&init[12..]));
            let (b1, b2) = (matrix(), var(&init[12..]));
            let named =
                |x: &Var, y: &Var| vec![("w".to_string(), x.clone()), ("b".into(), y.clone())];
            let mut fused = Optimizer::build(named(&a1, &a2), &config, true).unwrap();
            let mut tensor = Optimizer::build(named(&b1, &b2), &config, false).unwrap();
            assert!(fused.all_in_place() && !tensor.all_in_place());
            for _ in 0..6 {
                let mut g = vec![0f32; 30];
                rng.fill_normal(&mut g, 0.0, 2.0);
                let ra = fused
                    .step(&grads_for(&[(&a1, &g[..12]), (&a2, &g[12..])]))
                    .unwrap();
                let rb = tensor
                    .step(&grads_for(&[(&b1, &g[..12]), (&b2, &g[12..])]))
                    .unwrap();
                assert_eq!((ra.in_place, ra.fallback), (2, 0));
                assert_eq!((rb.in_place, rb.fallback), (0, 2));
                assert_eq!(ra.clip_scale, rb.clip_scale);
            }
            for (x, y) in [(&a1, &b1), (&a2, &b2)] {
                let want: Vec<f64> = values(y).iter().map(|&v| v as f64).collect();
                close(&values(x), &want, 1e-6);
            }
            // The state agrees too.
            for ((ka, ta), (kb, tb)) in fused.state().unwrap().iter().zip(tensor.state().unwrap()) {
                assert_eq!(ka, &kb);
                let ta: Vec<f64> = ta
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let tb: Vec<f32> = tb
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                close(&tb, &ta, 1e-6);
            }
        }
    }

    #[test]
    fn clipping_scales_by_the_global_norm() {
        // Gradients [3, 0] and [0, 4]: global norm 5. clipnorm 1 → every gradient × 1/(5 + 1e-6);
        // SGD with lr 1 moves the parameters by exactly the clipped gradients.
        let (a, b) = (var(&[0.0, 0.0]), var(&[0.0, 0.0]));
        let config = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 1.0,
            clipnorm: Some(1.0),
            ..SgdConfig::default()
        });
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let mut opt = Optimizer::new(params.clone(), &config).unwrap();
        let r = opt
            .step(&grads_for(&[(&a, &[3.0, 0.0]), (&b, &[0.0, 4.0])]))
            .unwrap();
        assert!((r.grad_norm.unwrap() - 5.0).abs() < 1e-9);
        assert!((r.clip_scale - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        close(&values(&a), &[-0.6, 0.0], 1e-6);
        close(&values(&b), &[0.0, -0.8], 1e-6);
        // Under the threshold nothing is scaled.
        let config = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 1.0,
            clipnorm: Some(10.0),
            ..SgdConfig::default()
        });
        let mut opt = Optimizer::new(params, &config).unwrap();
        let r = opt
            .step(&grads_for(&[(&a, &[3.0, 0.0]), (&b, &[0.0, 4.0])]))
            .unwrap();
        assert_eq!(r.clip_scale, 1.0);
        close(&values(&a), &[-3.6, 0.0], 1e-6);
        // A NaN gradient is refused and changes nothing.
        let err = opt
            .step(&grads_for(&[(&a, &[f32::NAN, 0.0]), (&b, &[0.0, 4.0])]))
            .unwrap_err();
        assert!(matches!(err, TrainingError::NonFiniteGradient(_)), "{err}");
        close(&values(&a), &[-3.6, 0.0], 1e-6);
        assert_eq!(opt.steps(), 1);
    }

    #[test]
    fn grad_norm_sums_every_element() {
        // 19 values: two full lanes of eight and a tail of three. Σ (i + 1)² for i < 19 is
        // 19·20·39/6 = 2470; with a second tensor [3, 4] (25) the norm is sqrt(2495).
        let a = var(&[0.0; 19]);
        let b = var(&[0.0; 2]);
        let ga: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        let opt = Optimizer::new(
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            &OptimizerConfig::default(),
        )
        .unwrap();
        let n = opt
            .grad_norm(&grads_for(&[(&a, &ga), (&b, &[3.0, 4.0])]))
            .unwrap();
        assert!((n - 2495f64.sqrt()).abs() < 1e-9, "{n}");
        // A strided (transposed) gradient goes through the tensor path: same sum.
        let t = Tensor::from_slice(&ga[..18], (3, 6), &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let want: f64 = (1..=18).map(|i| (i * i) as f64).sum();
        assert!((sum_of_squares(&t).unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn batch_norm_statistics_are_not_trained_and_the_optimizer_is_send() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        candle_nn::batch_norm(3, candle_nn::BatchNormConfig::default(), vb.pp("bn")).unwrap();
        let mut names: Vec<String> = trainable(&varmap).into_iter().map(|p| p.0).collect();
        names.sort();
        assert_eq!(names, ["bn.bias", "bn.weight"]);
        fn is_send<T: Send>(_: &T) {}
        is_send(&Optimizer::from_varmap(&varmap, &OptimizerConfig::default()).unwrap());
    }

    #[test]
    fn parameters_without_gradient_are_left_alone() {
        let (a, b) = (var(&[1.0]), var(&[1.0]));
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let mut opt = Optimizer::new(params, &adam(0.1)).unwrap();
        let r = opt.step(&grads_for(&[(&a, &[1.0])])).unwrap();
        assert_eq!((r.in_place, r.without_grad), (1, 1));
        assert_eq!(values(&b), [1.0]);
    }

    /// Data for y = 2·x0 - 3·x1 + 0.5, 64 rows.
    fn regression_data() -> (Tensor, Tensor) {
        let mut rng = Rng::new(21);
        let mut x = vec![0f32; 128];
        rng.fill_normal(&mut x, 0.0, 1.0);
        let y: Vec<f32> = x.chunks(2).map(|r| 2.0 * r[0] - 3.0 * r[1] + 0.5).collect();
        (
            Tensor::from_vec(x, (64, 2), &Device::Cpu).unwrap(),
            Tensor::from_vec(y, (64, 1), &Device::Cpu).unwrap(),
        )
    }

    /// A 2 → 1 linear model over a fresh VarMap with fixed starting weights.
    fn linear_model() -> (VarMap, Linear) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = candle_nn::linear(2, 1, vb.pp("fc")).unwrap();
        let vars = varmap.data().lock().unwrap();
        vars["fc.weight"]
            .set(&Tensor::new(&[[0.1f32, 0.2]], &Device::Cpu).unwrap())
            .unwrap();
        vars["fc.bias"]
            .set(&Tensor::new(&[0f32], &Device::Cpu).unwrap())
            .unwrap();
        drop(vars);
        (varmap, model)
    }

    fn train_steps(opt: &mut Optimizer, model: &Linear, data: &(Tensor, Tensor), n: usize) -> f32 {
        let mut loss = f32::NAN;
        for _ in 0..n {
            let l =
                crate::training::losses::mse(&model.forward(&data.0).unwrap(), &data.1).unwrap();
            loss = l.to_scalar().unwrap();
            let report = opt.step(&l.backward().unwrap()).unwrap();
            assert_eq!((report.in_place, report.fallback), (2, 0));
        }
        loss
    }

    #[test]
    fn a_tiny_regression_converges() {
        let data = regression_data();
        let (varmap, model) = linear_model();
        let mut opt = Optimizer::from_varmap(&varmap, &adam(0.05)).unwrap();
        let first = train_steps(&mut opt, &model, &data, 1);
        let last = train_steps(&mut opt, &model, &data, 400);
        assert!(first > 5.0 && last < 1e-5, "loss {first} → {last}");
        let w: Vec<f32> = model.weight().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = model.bias().unwrap().to_vec1().unwrap();
        close(&w, &[2.0, -3.0], 1e-3);
        close(&b, &[0.5], 1e-3);
    }

    fn snapshot(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
        let mut all: Vec<_> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), values(v)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[test]
    fn saved_and_restored_state_continues_the_same_trajectory() {
        let data = regression_data();
        for config in all_configs() {
            // Uninterrupted: 10 steps.
            let (varmap, model) = linear_model();
            let mut opt = Optimizer::from_varmap(&varmap, &config).unwrap();
            train_steps(&mut opt, &model, &data, 5);
            // Checkpoint weights and optimizer state in one safetensors file.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ckpt.safetensors");
            let mut ckpt: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
            for (name, value) in snapshot(&varmap) {
                ckpt.insert(name, Tensor::new(value, &Device::Cpu).unwrap());
            }
            candle_core::safetensors::save(&ckpt, &path).unwrap();
            train_steps(&mut opt, &model, &data, 5);
            let uninterrupted = snapshot(&varmap);

            // Restart: a fresh model and optimizer, restored from the file.
            let restored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let (varmap2, model2) = linear_model();
            for (name, var) in varmap2.data().lock().unwrap().iter() {
                var.set(&restored[name].reshape(var.shape()).unwrap())
                    .unwrap();
            }
            let mut opt2 = Optimizer::from_varmap(&varmap2, &config).unwrap();
            opt2.load_state(&restored).unwrap();
            assert_eq!(opt2.steps(), 5);
            train_steps(&mut opt2, &model2, &data, 5);
            assert_eq!(snapshot(&varmap2), uninterrupted, "{config:?}");
        }
    }

    #[test]
    fn mismatched_state_is_refused_without_changes() {
        let p = var(&[1.0, 2.0]);
        let mut opt = Optimizer::new(vec![("p".into(), p.clone())], &adam(0.1)).unwrap();
        opt.step(&grads_for(&[(&p, &[1.0, 1.0])])).unwrap();
        let good: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
        assert_eq!(good.len(), 3); // step, m, v

        let mut missing = good.clone();
        missing.remove("optim.v.p");
        let err = opt.load_state(&missing).unwrap_err().to_string();
        assert!(err.contains("optim.v.p"), "{err}");

        let mut misshapen = good.clone();
        misshapen.insert(
            "optim.m.p".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(opt.load_state(&misshapen).is_err());

        let mut extra = good.clone();
        extra.insert(
            "optim.m.q".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.load_state(&extra).unwrap_err().to_string();
        assert!(err.contains("optim.m.q"), "{err}");

        // SGD without momentum has no slots: Adam's state does not fit it.
        let mut sgd = Optimizer::new(
            vec![("p".into(), p.clone())],
            &OptimizerConfig::Sgd(SgdConfig::default()),
        )
        .unwrap();
        assert!(sgd.load_state(&good).is_err());
        assert_eq!(sgd.steps(), 0);

        // Other checkpoint entries are ignored.
        let mut with_weights = good;
        with_weights.insert(
            "fc.weight".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        opt.load_state(&with_weights).unwrap();
        assert_eq!(opt.steps(), 1);
    }

    #[test]
    fn configs_parse_with_keras_defaults() {
        let parse = |s: &str| serde_json::from_str::<OptimizerConfig>(s);
        let c = parse(
            r#"{"type": "adam", "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                "epsilon": 1e-7, "weight_decay": 0.0, "clipnorm": null}"#,
        )
        .unwrap();
        assert_eq!(c, OptimizerConfig::Adam(AdamConfig::default()));
        assert_eq!(
            parse(r#"{"type": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": false}"#)
                .unwrap(),
            OptimizerConfig::Sgd(SgdConfig::default())
        );
        let c =
            parse(r#"{"type": "adamw", "learning_rate": 0.001, "weight_decay": 0.01}"#).unwrap();
        assert_eq!(
            c,
            OptimizerConfig::AdamW(AdamWConfig {
                weight_decay: 0.01,
                ..AdamWConfig::default()
            })
        );
        let c = parse(r#"{"type": "rmsprop", "learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7}"#)
            .unwrap();
        assert_eq!(c, OptimizerConfig::RmsProp(RmsPropConfig::default()));
        // Bare types take every default; Keras' AdamW decay is 0.004.
        assert_eq!(
            parse(r#"{"type": "adamw"}"#).unwrap(),
            OptimizerConfig::AdamW(AdamWConfig {
                learning_rate: 0.001,
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                weight_decay: 0.004,
                clipnorm: None,
            })
        );
        let c = parse(r#"{"type": "sgd", "global_clipnorm": 1.5}"#).unwrap();
        assert_eq!(c.clipnorm(), Some(1.5));
        // Typos and unknown types are errors, not silently ignored.
        assert!(parse(r#"{"type": "adam", "beta1": 0.8}"#).is_err());
        assert!(parse(r#"{"type": "adagrad"}"#).is_err());
        // Serialization round-trips.
        for c in all_configs() {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(parse(&json).unwrap(), c, "{json}");
        }
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let bad = [
            r#"{"type": "adam", "learning_rate": 0}"#,
            r#"{"type": "adam", "beta_1": 1.0}"#,
            r#"{"type": "adam", "epsilon": 0}"#,
            r#"{"type": "adamw", "weight_decay": -0.1}"#,
            r#"{"type": "sgd", "momentum": 1.5}"#,
            r#"{"type": "rmsprop", "rho": -0.1}"#,
            r#"{"type": "sgd", "clipnorm": 0}"#,
        ];
        for json in bad {
            let c: OptimizerConfig = serde_json::from_str(json).unwrap();
            let err = Optimizer::new(vec![], &c).unwrap_err();
            assert!(matches!(err, TrainingError::Config { .. }), "{json}: {err}");
        }
        let dup = vec![
            ("a".to_string(), var(&[1.0])),
            ("a".to_string(), var(&[2.0])),
        ];
        assert!(Optimizer::new(dup, &OptimizerConfig::default()).is_err());
    }

    #[test]
    fn schedules() {
        let step: ScheduleConfig =
            serde_json::from_str(r#"{"type": "step", "step_size": 2, "gamma": 0.5}"#).unwrap();
        // 0.1 · 0.5^⌊e/2⌋: epochs 0,1 → 0.1; 2,3 → 0.05; 4 → 0.025.
        let lrs: Vec<f64> = (0..5).map(|e| step.learning_rate(0.1, e, 5)).collect();
        close(
            &lrs.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            &[0.1, 0.1, 0.05, 0.05, 0.025],
            1e-7,
        );
        let cosine: ScheduleConfig = serde_json::from_str(r#"{"type": "cosine"}"#).unwrap();
        // 1 · (1 + cos(π e/4))/2: 1, 0.8535534, 0.5, 0.1464466; 0 at e = 4.
        let lrs: Vec<f32> = (0..5)
            .map(|e| cosine.learning_rate(1.0, e, 4) as f32)
            .collect();
        close(&lrs, &[1.0, 0.853_553_4, 0.5, 0.146_446_6, 0.0], 1e-7);
        let floor: ScheduleConfig =
            serde_json::from_str(r#"{"type": "cosine", "min_learning_rate": 0.1}"#).unwrap();
        assert!((floor.learning_rate(1.0, 2, 4) - 0.55).abs() < 1e-12);
        assert!(serde_json::from_str::<ScheduleConfig>(r#"{"type": "step"}"#).is_err());

        let p = var(&[1.0]);
        let mut opt = Optimizer::new(vec![("p".into(), p)], &adam(0.1)).unwrap();
        assert!(opt
            .set_schedule(
                Some(ScheduleConfig::Step {
                    step_size: 0,
                    gamma: 0.5
                }),
                10
            )
            .is_err());
        opt.set_schedule(Some(step), 10).unwrap();
        assert!((opt.set_epoch(2) - 0.05).abs() < 1e-12);
        assert!((opt.learning_rate() - 0.05).abs() < 1e-12);
    }
}
