//! Seeded initial weights: a kiln [`Initializer`] (Keras' definitions) or a layer's fixed
//! rule (PyTorch's) turned into a tensor drawn from an [`Rng`].
//!
//! Building a model over a `VarMap` (`Model::check_and_build`) already creates every
//! variable, but through candle's `Init`, which draws from the unseeded thread RNG. Training
//! then calls [`init_model`] to overwrite every variable from a seed, walking the spec's
//! layers in order, so the same seed always gives the same weights.
//!
//! Definitions (`fan_in`/`fan_out` as Keras computes them; for a convolution kernel both are
//! multiplied by the receptive field k or k·k):
//! - `glorot_uniform`: U(±√(6/(fan_in+fan_out))); `he_uniform`: U(±√(6/fan_in)).
//! - `glorot_normal`, `he_normal`: Keras' *truncated* normal — N(0, σ²) redrawn outside ±2σ,
//!   with σ = √(2/(fan_in+fan_out)) resp. √(2/fan_in) divided by 0.87962566103423978 so the
//!   truncated distribution's standard deviation is √(2/…) again. (`layers::init_for` maps
//!   these to candle's plain normal, which has no truncation.)
//! - `normal`: N(0, 0.05²); `uniform`: U(±0.05); `zeros`: 0 (Keras' `RandomNormal`,
//!   `RandomUniform` and `Zeros` defaults).
//! - Biases of dense and conv layers: 0, as Keras does (PyTorch would draw U(±1/√fan_in)).
//! - LSTM/GRU: every tensor U(±1/√units), as PyTorch does.
//! - batch_norm: weight 1, bias 0, running_mean 0, running_var 1; layer_norm: weight 1,
//!   bias 0; embedding: N(0, 1), as PyTorch does.
//!
//! Runs once on the training thread before the first step.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use super::error::{Result, TrainingError};
use super::rng::{streams, Rng};
use crate::model::format::{Initializer, LayerSpec, ModelSpec};

/// Keras' `VarianceScaling` correction for a normal truncated at ±2σ: the standard deviation
/// of N(0, 1) restricted to [-2, 2].
const TRUNCATED_NORMAL_STD: f64 = 0.879_625_661_034_239_8;

/// How one tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fill {
    Const(f64),
    /// U(-bound, bound).
    Uniform {
        bound: f64,
    },
    /// N(0, std²).
    Normal {
        std: f64,
    },
    /// N(0, σ²) redrawn outside ±2σ, with σ = `std` / 0.8796…, so the result has standard
    /// deviation `std` (Keras' `truncated_normal` variance scaling).
    TruncatedNormal {
        std: f64,
    },
}

impl Fill {
    /// The Keras definition of `init` for a tensor with these fans (each taken as at least 1).
    pub fn for_initializer(init: Initializer, fan_in: usize, fan_out: usize) -> Fill {
        let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
        match init {
            Initializer::GlorotUniform => Fill::Uniform {
                bound: (6.0 / (fi + fo)).sqrt(),
            },
            Initializer::GlorotNormal => Fill::TruncatedNormal {
                std: (2.0 / (fi + fo)).sqrt(),
            },
            Initializer::HeUniform => Fill::Uniform {
                bound: (6.0 / fi).sqrt(),
            },
            Initializer::HeNormal => Fill::TruncatedNormal {
                std: (2.0 / fi).sqrt(),
            },
            Initializer::Normal => Fill::Normal { std: 0.05 },
            Initializer::Uniform => Fill::Uniform { bound: 0.05 },
            Initializer::Zeros => Fill::Const(0.0),
        }
    }

    /// Fills `out`, drawing from `rng` (constants draw nothing).
    pub fn fill(&self, out: &mut [f32], rng: &mut Rng) {
        match *self {
            Fill::Const(c) => out.fill(c as f32),
            Fill::Uniform { bound } => rng.fill_uniform(out, -bound, bound),
            Fill::Normal { std } => rng.fill_normal(out, 0.0, std),
            Fill::TruncatedNormal { std } => {
                let sigma = std / TRUNCATED_NORMAL_STD;
                for x in out {
                    *x = loop {
                        let z = rng.normal(0.0, 1.0);
                        if z.abs() <= 2.0 {
                            break (z * sigma) as f32;
                        }
                    };
                }
            }
        }
    }

    /// A new f32 tensor of `shape` on `device`.
    pub fn sample(&self, shape: &[usize], rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let mut values = vec![0f32; shape.iter().product()];
        self.fill(&mut values, rng);
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}

/// A tensor for `init` with these fans: `Fill::for_initializer(..).sample(..)`.
pub fn initializer_tensor(
    init: Initializer,
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    Fill::for_initializer(init, fan_in, fan_out).sample(shape, rng, device)
}

/// One variable to initialise, in the order [`init_plan`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInit {
    /// PyTorch tensor name, `<prefix>.<tensor>`.
    pub name: String,
    pub shape: Vec<usize>,
    pub fill: Fill,
}

/// Re-initialises every variable `spec`'s layers own in `varmap` from `seed` (its
/// [`streams::INIT`] stream) and returns their names in the order they were drawn.
///
/// `varmap` must hold the variables of `Model::check_and_build(spec, &VarBuilder::from_varmap(..))`.
pub fn init_model(spec: &ModelSpec, varmap: &VarMap, seed: u64) -> Result<Vec<String>> {
    // The lock is held only while drawing: nothing else touches the VarMap during setup.
    let vars = varmap
        .data()
        .lock()
        .expect("no thread panicked while holding the VarMap lock");
    init_vars(spec, &vars, &mut Rng::with_stream(seed, streams::INIT))
}

/// [`init_model`] over a name → variable map and a caller's generator.
pub fn init_vars(
    spec: &ModelSpec,
    vars: &HashMap<String, Var>,
    rng: &mut Rng,
) -> Result<Vec<String>> {
    let plan = init_plan(spec, vars)?;
    let mut names = Vec::with_capacity(plan.len());
    for t in plan {
        let var = &vars[&t.name];
        let value = t
            .fill
            .sample(&t.shape, rng, var.device())?
            .to_dtype(var.dtype())?;
        var.set(&value)?;
        names.push(t.name);
    }
    Ok(names)
}

/// What [`init_vars`] will draw, layer by layer in spec order, each layer's tensors in a fixed
/// order. Shapes are read from the variables, which the model build has already checked.
pub fn init_plan(spec: &ModelSpec, vars: &HashMap<String, Var>) -> Result<Vec<TensorInit>> {
    let mut plan = Vec::new();
    for (index, layer) in spec.layers.iter().enumerate() {
        let prefix = layer.tensor_prefix(index);
        let mut add = |tensor: &str, fill: &dyn Fn(&[usize]) -> Fill| -> Result<()> {
            let name = format!("{prefix}.{tensor}");
            let var = vars
                .get(&name)
                .ok_or_else(|| TrainingError::MissingTensor(name.clone()))?;
            let shape = var.dims().to_vec();
            plan.push(TensorInit {
                fill: fill(&shape),
                name,
                shape,
            });
            Ok(())
        };
        let zero = |_: &[usize]| Fill::Const(0.0);
        let one = |_: &[usize]| Fill::Const(1.0);
        match layer {
            LayerSpec::Dense {
                use_bias,
                initializer,
                ..
            }
            | LayerSpec::Conv1d {
                use_bias,
                initializer,
                ..
            }
            | LayerSpec::Conv2d {
                use_bias,
                initializer,
                ..
            } => {
                let init = initializer.unwrap_or_default();
                add("weight", &|shape| {
                    let (fan_in, fan_out) = fans(shape);
                    Fill::for_initializer(init, fan_in, fan_out)
                })?;
                if *use_bias {
                    add("bias", &zero)?;
                }
            }
            LayerSpec::BatchNorm { .. } => {
                add("weight", &one)?;
                add("bias", &zero)?;
                add("running_mean", &zero)?;
                add("running_var", &one)?;
            }
            LayerSpec::LayerNorm { .. } => {
                add("weight", &one)?;
                add("bias", &zero)?;
            }
            LayerSpec::Embedding { .. } => add("weight", &|_| Fill::Normal { std: 1.0 })?,
            LayerSpec::Lstm { units, .. } | LayerSpec::Gru { units, .. } => {
                let bound = 1.0 / ((*units).max(1) as f64).sqrt();
                for tensor in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"] {
                    add(tensor, &|_| Fill::Uniform { bound })?;
                }
            }
            LayerSpec::Activation { .. }
            | LayerSpec::Dropout { .. }
            | LayerSpec::Flatten { .. }
            | LayerSpec::Reshape { .. }
            | LayerSpec::MaxPool2d { .. }
            | LayerSpec::AvgPool2d { .. } => {}
        }
    }
    Ok(plan)
}

/// Keras' fans of a PyTorch-layout weight `[out, in, k...]`: `in·receptive` and
/// `out·receptive`, where the receptive field is the product of the kernel dimensions (1 for
/// a dense `[units, in]` weight).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, kernel @ ..] => {
            let receptive: usize = kernel.iter().product();
            (inp * receptive, out * receptive)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use candle_core::DType;
    use candle_nn::VarBuilder;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn moments(xs: &[f32]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    #[test]
    fn glorot_uniform_lies_within_the_bound_with_the_right_variance() {
        let (fan_in, fan_out) = (300, 100);
        let t = initializer_tensor(
            Initializer::GlorotUniform,
            &[fan_out, fan_in],
            fan_in,
            fan_out,
            &mut Rng::new(1),
            &Device::Cpu,
        )
        .unwrap();
        let xs = values(&t);
        // Keras: limit = sqrt(6 / (fan_in + fan_out)) = sqrt(6/400) = 0.12247; the variance
        // of U(±limit) is limit²/3 = 2 / (fan_in + fan_out) = 0.005.
        let limit = (6.0f64 / 400.0).sqrt() as f32;
        assert!(xs.iter().all(|x| x.abs() <= limit));
        assert!(xs.iter().any(|x| x.abs() > 0.95 * limit));
        let (mean, var) = moments(&xs);
        assert!(mean.abs() < 0.001, "{mean}");
        assert!((var - 0.005).abs() < 0.0002, "{var}");
    }

    #[test]
    fn truncated_normals_have_the_keras_variance_and_stay_within_two_sigma() {
        // he_normal with fan_in 50: target std sqrt(2/50) = 0.2; truncation at
        // 2σ = 2 · 0.2 / 0.87963 = 0.45474.
        let t = initializer_tensor(
            Initializer::HeNormal,
            &[200, 50],
            50,
            200,
            &mut Rng::new(2),
            &Device::Cpu,
        )
        .unwrap();
        let xs = values(&t);
        let (mean, var) = moments(&xs);
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.2).abs() < 0.004, "{}", var.sqrt());
        assert!(xs.iter().all(|x| x.abs() <= 0.45475));
    }

    #[test]
    fn fixed_initializers() {
        let mut rng = Rng::new(3);
        let z = initializer_tensor(Initializer::Zeros, &[4, 3], 3, 4, &mut rng, &Device::Cpu);
        assert!(values(&z.unwrap()).iter().all(|&x| x == 0.0));
        let u = initializer_tensor(Initializer::Uniform, &[1000], 1, 1, &mut rng, &Device::Cpu);
        assert!(values(&u.unwrap()).iter().all(|x| x.abs() <= 0.05));
        let n = initializer_tensor(Initializer::Normal, &[20000], 1, 1, &mut rng, &Device::Cpu);
        let (_, var) = moments(&values(&n.unwrap()));
        assert!((var.sqrt() - 0.05).abs() < 0.001);
    }

    #[test]
    fn fans_follow_keras() {
        assert_eq!(fans(&[64, 100]), (100, 64)); // dense [units, in]
        assert_eq!(fans(&[8, 3, 5]), (15, 40)); // conv1d [filters, c, k]
        assert_eq!(fans(&[8, 3, 3, 3]), (27, 72)); // conv2d [filters, c, k, k]
    }

    const SPEC: &str = r#"{"format_version": 1, "task": "classification", "input": {"shape": [1, 6, 6]},
        "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3, "name": "conv", "initializer": "he_normal"},
                   {"type": "batch_norm", "name": "bn"},
                   {"type": "flatten"},
                   {"type": "dense", "units": 5, "activation": "relu"},
                   {"type": "layer_norm"},
                   {"type": "dense", "units": 3, "use_bias": false, "name": "out"}]}"#;

    fn build(spec: &ModelSpec) -> VarMap {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Model::check_and_build(spec, &vb).unwrap();
        varmap
    }

    fn snapshot(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
        let vars = varmap.data().lock().unwrap();
        let mut all: Vec<_> = vars.iter().map(|(n, v)| (n.clone(), values(v))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    #[test]
    fn same_seed_gives_identical_weights_and_different_seeds_differ() {
        let spec = ModelSpec::from_json(SPEC).unwrap();
        let (a, b, c) = (build(&spec), build(&spec), build(&spec));
        assert_ne!(snapshot(&a), snapshot(&b), "candle's own init is unseeded");
        let names = init_model(&spec, &a, 11).unwrap();
        init_model(&spec, &b, 11).unwrap();
        init_model(&spec, &c, 12).unwrap();
        assert_eq!(snapshot(&a), snapshot(&b));
        assert_ne!(snapshot(&a), snapshot(&c));
        assert_eq!(
            names,
            [
                "conv.weight",
                "conv.bias",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
                "3.weight",
                "3.bias",
                "4.weight",
                "4.bias",
                "out.weight"
            ]
        );
        // Every variable of the model was initialised.
        assert_eq!(names.len(), a.all_vars().len());
    }

    #[test]
    fn plan_uses_each_layers_rule() {
        let spec = ModelSpec::from_json(SPEC).unwrap();
        let varmap = build(&spec);
        let plan = init_plan(&spec, &varmap.data().lock().unwrap()).unwrap();
        let fill = |name: &str| plan.iter().find(|t| t.name == name).unwrap().fill;
        // conv2d [2, 1, 3, 3]: fan_in = 1·9; he_normal std sqrt(2/9).
        assert_eq!(
            fill("conv.weight"),
            Fill::TruncatedNormal {
                std: (2.0f64 / 9.0).sqrt()
            }
        );
        // dense after flatten: [5, 2·4·4 = 32]; glorot_uniform bound sqrt(6/37).
        assert_eq!(
            fill("3.weight"),
            Fill::Uniform {
                bound: (6.0f64 / 37.0).sqrt()
            }
        );
        assert_eq!(fill("bn.running_var"), Fill::Const(1.0));
        assert_eq!(fill("4.weight"), Fill::Const(1.0));
        assert_eq!(fill("conv.bias"), Fill::Const(0.0));
        let snap = {
            init_model(&spec, &varmap, 1).unwrap();
            snapshot(&varmap)
        };
        let get = |n: &str| snap.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert_eq!(get("bn.running_var"), vec![1.0, 1.0]);
        assert_eq!(get("3.bias"), vec![0.0; 5]);
    }

    #[test]
    fn recurrent_and_embedding_rules() {
        let spec = ModelSpec::from_json(
            r#"{"format_version": 1, "task": "regression", "input": {"shape": [4], "dtype": "int64"},
                "layers": [{"type": "embedding", "input_dim": 1000, "output_dim": 8},
                           {"type": "lstm", "units": 16}, {"type": "dense", "units": 1}]}"#,
        )
        .unwrap();
        let varmap = build(&spec);
        init_model(&spec, &varmap, 5).unwrap();
        let snap = snapshot(&varmap);
        let get = |n: &str| snap.iter().find(|(name, _)| name == n).unwrap().1.clone();
        let (_, var) = moments(&get("0.weight"));
        assert!((var - 1.0).abs() < 0.05, "{var}"); // N(0, 1), 8000 values
        for n in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"] {
            let xs = get(&format!("1.{n}"));
            assert!(xs.iter().all(|x| x.abs() <= 0.25), "{n}"); // 1/sqrt(16)
            assert!(xs.iter().any(|x| x.abs() > 0.2), "{n}");
        }
    }

    #[test]
    fn a_missing_variable_is_named() {
        let spec = ModelSpec::from_json(SPEC).unwrap();
        let err = init_vars(&spec, &HashMap::new(), &mut Rng::new(0)).unwrap_err();
        assert!(err.to_string().contains("conv.weight"), "{err}");
    }
}
