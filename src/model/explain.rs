//! Integrated Gradients (Sundararajan et al., 2017): why a model gave one instance its
//! output, as one number per raw input column.
//!
//! For an instance `x`, a baseline `x'` and one output `f` (a class's score, a regression
//! value in original units), the attribution of input `i` is
//! `φᵢ = (xᵢ − x'ᵢ) · ∫₀¹ ∂f/∂xᵢ(x' + α(x − x')) dα`, and the φ add up to `f(x) − f(x')`
//! (completeness): the residual `Σφ − (f(x) − f(x'))` says how well the integral was
//! approximated. The integral is a Gauss–Legendre quadrature of `steps` nodes (Captum's
//! default), exact for polynomials of degree `2·steps − 1`.
//!
//! The path is straight in the **raw** space of the columns a client sent: a numeric
//! feature's standardization is an op in the graph, so its gradient is taken through the
//! fitted preprocessing (the same numbers as integrating in standardized space, since the
//! map is affine; a test holds them equal). A categorical column has no raw continuum: its
//! encoded values (one-hot or ordinal) are integrated and a one-hot group is summed back to
//! its column. A value outside a column's fitted clip bounds is explained as the bound it
//! is clipped to: the model never sees past it. Models whose first layer is an embedding
//! are integrated in embedding space (from the baseline ids' embeddings, or from zero
//! vectors) and each token gets the sum over its embedding; any other model gets one
//! attribution per input value, in the input's shape.
//!
//! All rows and all nodes go through one forward and one backward pass. Called on a compute
//! thread (see `serving::explain`), never on the async runtime.

use candle_core::{DType, Tensor, Var, D};

use super::format::{InputDType, Task};
use super::signature::ScoreKind;
use super::Model;

/// Which output an explanation explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The instance's predicted class (classifiers), or the first output (regression).
    Predicted,
    /// A classifier's class, by index into [`Model::labels`].
    Class(usize),
    /// A regression output, by index (in original units).
    Output(usize),
}

/// The explanation of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    /// The class (index into the labels) or regression output explained.
    pub target: usize,
    /// `f(x)`: the target class's score, or the regression value in original units.
    pub prediction: f32,
    /// `f(x')`, the same output at the baseline.
    pub baseline_prediction: f32,
    /// The quadrature nodes this instance was integrated with.
    pub steps: usize,
    /// One value per column (models with preprocessing), per token (embedding input), or
    /// per input value (in the input's shape, flat and row-major).
    pub attributions: Vec<f32>,
}

impl Attribution {
    /// `Σφ − (f(x) − f(x'))`: zero for an exact integral.
    pub fn residual(&self) -> f32 {
        let sum: f64 = self.attributions.iter().map(|&a| f64::from(a)).sum();
        (sum - (f64::from(self.prediction) - f64::from(self.baseline_prediction))) as f32
    }

    /// What the residual is measured against: the larger of the change `|f(x) − f(x')|`
    /// and the attributions' total size `Σ|φ|` (the change alone can be near zero while
    /// columns pull hard both ways).
    pub fn scale(&self) -> f32 {
        let mass: f32 = self.attributions.iter().map(|a| a.abs()).sum();
        (self.prediction - self.baseline_prediction).abs().max(mass)
    }

    /// `|residual| / scale`: 0 for an exact integral.
    pub fn relative_residual(&self) -> f32 {
        let scale = self.scale();
        if scale > 0.0 {
            self.residual().abs() / scale
        } else {
            0.0
        }
    }
}

/// The space an explanation integrates in (the raw columns, or the model's input as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    Raw,
    /// Model input as is (standardized): what tests compare the raw space with.
    #[cfg(test)]
    Model,
}

impl Model {
    /// The shape of one instance's attributions: `[columns]` with preprocessing, `[tokens]`
    /// for an embedding input, else the input's shape.
    pub fn attribution_shape(&self) -> Vec<usize> {
        match &self.spec.preprocessing {
            Some(p) => vec![p.features.len()],
            None => self.spec.input.shape.clone(),
        }
    }

    /// Whether training stored the mean input ([`Self::default_baseline`] is that mean).
    pub fn has_input_mean(&self) -> bool {
        self.spec
            .preprocessing
            .as_ref()
            .and_then(|p| p.input_mean.as_ref())
            .is_some_and(|m| m.len() == self.spec.row_len())
    }

    /// The baseline explanations start from when a request gives none, in model-input space:
    /// the training rows' mean input when training stored it, else zeros (for standardized
    /// numeric features the same point). `None` for an embedding input, whose baseline is
    /// the zero embedding.
    pub fn default_baseline(&self) -> Option<Vec<f32>> {
        if self.spec.input.dtype == InputDType::Int64 {
            return None;
        }
        let mean = self
            .spec
            .preprocessing
            .as_ref()
            .and_then(|p| p.input_mean.clone())
            .filter(|_| self.has_input_mean());
        Some(mean.unwrap_or_else(|| vec![0.0; self.spec.row_len()]))
    }

    /// Integrated Gradients of `n` instances (`rows`: flat model input, as the batcher takes
    /// it) from `baseline` (one instance of model input; `None`: [`Self::default_baseline`])
    /// for `target`, with `steps` quadrature nodes, in one forward and backward pass over
    /// `n · steps + n + 1` points.
    pub fn integrated_gradients(
        &self,
        rows: &[f32],
        n: usize,
        baseline: Option<&[f32]>,
        target: Target,
        steps: usize,
    ) -> candle_core::Result<Vec<Attribution>> {
        self.integrated_gradients_in(Space::Raw, rows, n, baseline, target, steps)
    }

    /// [`Self::integrated_gradients`] from `steps` nodes, then again with twice as many for
    /// the rows whose [relative residual](Attribution::relative_residual) is over `tolerance`, while
    /// those rows' points stay within `max_points` and the nodes within `max_steps`. A ReLU
    /// network's gradient jumps where a unit switches on the path, which no quadrature
    /// resolves without more nodes; smooth networks are done after the first pass.
    #[allow(clippy::too_many_arguments)]
    pub fn integrated_gradients_refined(
        &self,
        rows: &[f32],
        n: usize,
        baseline: Option<&[f32]>,
        target: Target,
        steps: usize,
        tolerance: f32,
        (max_steps, max_points): (usize, usize),
    ) -> candle_core::Result<Vec<Attribution>> {
        let row_len = self.spec.row_len();
        let mut out = self.integrated_gradients(rows, n, baseline, target, steps)?;
        let mut steps = steps;
        loop {
            let open: Vec<usize> = (0..n)
                .filter(|&r| out[r].relative_residual() > tolerance)
                .collect();
            let next = (steps * 2).min(max_steps);
            if open.is_empty() || next == steps || open.len() * next > max_points {
                return Ok(out);
            }
            steps = next;
            let mut again = Vec::with_capacity(open.len() * row_len);
            for &r in &open {
                again.extend_from_slice(&rows[r * row_len..(r + 1) * row_len]);
            }
            let better = self.integrated_gradients(&again, open.len(), baseline, target, steps)?;
            // More nodes almost always shrink the residual, but a kink can land badly: a
            // row keeps whichever answer adds up better, so refining never makes it worse.
            for (r, a) in open.into_iter().zip(better) {
                if a.relative_residual() < out[r].relative_residual() {
                    out[r] = a;
                }
            }
        }
    }

    pub(crate) fn integrated_gradients_in(
        &self,
        space: Space,
        rows: &[f32],
        n: usize,
        baseline: Option<&[f32]>,
        target: Target,
        steps: usize,
    ) -> candle_core::Result<Vec<Attribution>> {
        let row_len = self.spec.row_len();
        if n == 0 || steps == 0 || rows.len() != n * row_len {
            candle_core::bail!(
                "integrated gradients: {} values for {n} rows of {row_len}, {steps} steps",
                rows.len()
            );
        }
        let dev = &self.device;
        let with_batch = |b: usize| {
            let mut dims = Vec::with_capacity(self.spec.input.shape.len() + 1);
            dims.push(b);
            dims.extend_from_slice(&self.spec.input.shape);
            dims
        };
        // 1. The endpoints x (one per row) and x' (one), flat, in the space integrated in;
        //    the layer the path enters at; how many consecutive values each attribution sums.
        let embedded = self.spec.input.dtype == InputDType::Int64;
        // The per-point shape of what layer `start` takes.
        let mut entry_shape = self.spec.input.shape.clone();
        let (x, b, start, group) = if embedded {
            let embed = &self.layers[0];
            let ids = Tensor::from_slice(rows, with_batch(n), dev)?;
            let ex = embed.forward_t(&ids, false)?;
            let eb = match baseline {
                Some(b) => embed.forward_t(&Tensor::from_slice(b, with_batch(1), dev)?, false)?,
                None => ex.narrow(0, 0, 1)?.zeros_like()?,
            };
            let dim = ex.dims().last().copied().unwrap_or(1);
            entry_shape = ex.dims()[1..].to_vec();
            (
                ex.flatten_from(1)?,
                eb.flatten_from(1)?,
                1,
                Group::Every(dim),
            )
        } else {
            let default;
            let b = match baseline {
                Some(b) => b,
                None => {
                    default = self.default_baseline().unwrap_or_default();
                    &default
                }
            };
            if b.len() != row_len {
                candle_core::bail!("a baseline of {} values for rows of {row_len}", b.len());
            }
            let x = Tensor::from_slice(rows, (n, row_len), dev)?;
            let b = Tensor::from_slice(b, (1, row_len), dev)?;
            let group = match &self.spec.preprocessing {
                Some(p) => Group::Widths(p.features.iter().map(|f| f.width()).collect()),
                None => Group::Every(1),
            };
            (x, b, 0, group)
        };
        // Raw space: model input = (raw − shift) / scale, an op of the graph.
        let affine = match (&self.spec.preprocessing, space, embedded) {
            (Some(p), Space::Raw, false) => {
                let (scale, shift): (Vec<f32>, Vec<f32>) = p.raw_affine().into_iter().unzip();
                let width = scale.len();
                Some((
                    Tensor::from_vec(scale, (1, width), dev)?,
                    Tensor::from_vec(shift, (1, width), dev)?,
                ))
            }
            _ => None,
        };
        let (x, b) = match &affine {
            Some((scale, shift)) => (
                x.broadcast_mul(scale)?.broadcast_add(shift)?,
                b.broadcast_mul(scale)?.broadcast_add(shift)?,
            ),
            None => (x, b),
        };
        let width = x.dim(1)?;
        let (nodes, weights) = gauss_legendre(steps);
        // 2. Every point: row r's node k at r·steps + k, then the n rows, then the baseline.
        let diff = x.broadcast_sub(&b)?;
        let alphas = Tensor::from_vec(nodes, (1, steps, 1), dev)?;
        let path = diff
            .unsqueeze(1)?
            .broadcast_mul(&alphas)?
            .broadcast_add(&b.unsqueeze(1)?)?
            .reshape((n * steps, width))?;
        let points = Var::from_tensor(&Tensor::cat(&[&path, &x, &b], 0)?)?;
        let total = n * steps + n + 1;
        let mut h = points.as_tensor().clone();
        if let Some((scale, shift)) = &affine {
            h = h.broadcast_sub(shift)?.broadcast_div(scale)?;
        }
        let mut dims = vec![total];
        dims.extend_from_slice(&entry_shape);
        h = h.reshape(dims)?;
        for layer in &self.layers[start..] {
            h = layer.forward_differentiable(&h)?;
        }
        // 3. The explained output of every point; the targets, once the rows' are known.
        let scores = self.explained_outputs(&h)?;
        let outputs = scores.dim(1)?;
        let ends: Vec<Vec<f32>> = scores.narrow(0, n * steps, n + 1)?.to_vec2()?;
        let targets: Vec<usize> = ends[..n]
            .iter()
            .map(|s| match target {
                Target::Class(k) | Target::Output(k) => k,
                Target::Predicted if self.spec.task == Task::Regression => 0,
                // The last of equal scores, as `Scores::best` picks.
                Target::Predicted => s
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i),
            })
            .collect();
        if let Some(&k) = targets.iter().find(|&&k| k >= outputs) {
            candle_core::bail!("target {k} of a model with {outputs} outputs");
        }
        let mut mask = vec![0f32; n * steps * outputs];
        for (r, &k) in targets.iter().enumerate() {
            for s in 0..steps {
                mask[(r * steps + s) * outputs + k] = 1.0;
            }
        }
        let mask = Tensor::from_vec(mask, (n * steps, outputs), dev)?;
        let objective = scores.narrow(0, 0, n * steps)?.mul(&mask)?.sum_all()?;
        // 4. One backward pass; the weighted mean gradient of each row times x − x'.
        let grads = objective.backward()?;
        let g = grads
            .get(points.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("the input has no gradient".into()))?
            .narrow(0, 0, n * steps)?
            .reshape((n, steps, width))?;
        let w = Tensor::from_vec(weights, (1, steps, 1), dev)?;
        let phi: Vec<Vec<f32>> = g
            .broadcast_mul(&w)?
            .sum(1)?
            .mul(&diff)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let base = &ends[n];
        Ok(phi
            .iter()
            .zip(&targets)
            .zip(&ends)
            .map(|((phi, &k), end)| Attribution {
                target: k,
                prediction: end[k],
                baseline_prediction: base[k],
                steps,
                attributions: group.sum(phi),
            })
            .collect())
    }

    /// The outputs explanations explain, `[points, outputs]`: a classifier's per-class
    /// scores (as [`Model::scores`] computes them, a single unit giving `[1 − p, p]`), a
    /// regression's values in original units.
    fn explained_outputs(&self, y: &Tensor) -> candle_core::Result<Tensor> {
        let y = y.flatten_from(1)?;
        match self.spec.task {
            Task::Regression => match self.spec.preprocessing.as_ref().and_then(|p| p.target) {
                Some(t) => y.affine(t.scale, t.shift),
                None => Ok(y),
            },
            Task::Classification => {
                let single = y.dim(1)? == 1;
                match (single, self.score_kind) {
                    (false, ScoreKind::Probabilities) => Ok(y),
                    (false, ScoreKind::Logits) => candle_nn::ops::softmax(&y, D::Minus1),
                    (true, kind) => {
                        let p = match kind {
                            ScoreKind::Probabilities => y,
                            ScoreKind::Logits => candle_nn::ops::sigmoid(&y)?,
                        };
                        Tensor::cat(&[&p.affine(-1.0, 1.0)?, &p], 1)
                    }
                }
            }
        }
    }
}

/// How the flat attributions of one row become the reported ones.
enum Group {
    /// Consecutive runs of these widths (a column's one-hot group, or its one value).
    Widths(Vec<usize>),
    /// Runs of this many values (a token's embedding; 1: every value alone).
    Every(usize),
}

impl Group {
    fn sum(&self, phi: &[f32]) -> Vec<f32> {
        let run = |c: &[f32]| c.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
        match self {
            Group::Every(1) => phi.to_vec(),
            Group::Every(k) => phi.chunks(*k).map(run).collect(),
            Group::Widths(widths) => {
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let s = run(&phi[at..at + w]);
                        at += w;
                        s
                    })
                    .collect()
            }
        }
    }
}

/// Gauss–Legendre nodes and weights on `[0, 1]` (the weights sum to 1), by Newton's method
/// on the Legendre polynomial's three-term recurrence.
pub(crate) fn gauss_legendre(n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut nodes = vec![0f32; n];
    let mut weights = vec![0f32; n];
    let nf = n as f64;
    for i in 0..n.div_ceil(2) {
        // Start at Tricomi's approximation of the i-th root (largest first).
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (nf + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, x);
            for k in 2..=n {
                let kf = k as f64;
                let p2 = ((2.0 * kf - 1.0) * x * p1 - (kf - 1.0) * p0) / kf;
                p0 = p1;
                p1 = p2;
            }
            // p1 = P_n(x), p0 = P_{n-1}(x).
            dp = nf * (x * p1 - p0) / (x * x - 1.0);
            let dx = p1 / dp;
            x -= dx;
            if dx.abs() < 1e-15 {
                break;
            }
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        // Mapped from [-1, 1] to [0, 1]: α = (1 ± x) / 2, weight w / 2.
        nodes[i] = ((1.0 - x) / 2.0) as f32;
        nodes[n - 1 - i] = ((1.0 + x) / 2.0) as f32;
        weights[i] = (w / 2.0) as f32;
        weights[n - 1 - i] = (w / 2.0) as f32;
    }
    (nodes, weights)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;
    use crate::model::format::ModelSpec;

    fn model(spec: serde_json::Value, tensors: &[(&str, Vec<f32>, &[usize])]) -> Model {
        let spec: ModelSpec = serde_json::from_value(spec).expect("a valid spec");
        if tensors.is_empty() {
            return Model::of_spec(serde_json::to_value(&spec).unwrap());
        }
        let tensors: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(name, v, shape)| {
                let t = Tensor::from_vec(v.clone(), *shape, &Device::Cpu).unwrap();
                ((*name).to_owned(), t)
            })
            .collect();
        Model::from_tensors(spec, tensors, &Device::Cpu).expect("the model builds")
    }

    /// A seeded model of random weights (Model::of_spec draws them from candle's CPU RNG,
    /// which cannot be seeded, so tests here make their own).
    fn seeded(spec: serde_json::Value) -> Model {
        use rand::{Rng, SeedableRng};
        let parsed: ModelSpec = serde_json::from_value(spec.clone()).unwrap();
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Model::check_and_build(&parsed, &vb).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let shape = v.as_tensor().dims().to_vec();
                let n: usize = shape.iter().product();
                let values = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                (k.clone(), values, shape)
            })
            .collect();
        let refs: Vec<(&str, Vec<f32>, &[usize])> = tensors
            .iter()
            .map(|(k, v, s)| (k.as_str(), v.clone(), s.as_slice()))
            .collect();
        model(spec, &refs)
    }

    fn relative(a: f32, b: f32) -> f32 {
        (a - b).abs() / b.abs().max(1e-6)
    }

    fn complete_within(a: &Attribution, tolerance: f32) {
        assert!(
            a.relative_residual() <= tolerance,
            "residual {} of {}: {a:?}",
            a.residual(),
            a.scale()
        );
        assert!(a.scale() > 0.0, "nothing was explained: {a:?}");
    }

    /// Three numeric columns standardized, a regression target scaled by 10 and shifted by
    /// 100: `y = 10 · (w · z + c) + 100` with `z = (x − shift) / scale`.
    fn linear() -> Model {
        model(
            serde_json::json!({"format_version": 1, "task": "regression",
                "input": {"shape": [3], "features": ["a", "b", "c"]},
                "layers": [{"type": "dense", "units": 1}],
                "preprocessing": {"features": [
                    {"kind": "numeric", "name": "a", "shift": 1.0, "scale": 2.0},
                    {"kind": "numeric", "name": "b", "shift": -3.0, "scale": 0.5},
                    {"kind": "numeric", "name": "c", "shift": 0.0, "scale": 4.0}],
                    "target": {"shift": 100.0, "scale": 10.0}}}),
            &[
                ("0.weight", vec![0.5, -2.0, 1.5], &[1, 3]),
                ("0.bias", vec![0.25], &[1]),
            ],
        )
    }

    #[test]
    fn on_a_linear_model_the_attributions_are_the_weights_times_the_change() {
        let m = linear();
        // Raw x = (5, -1, 8), raw baseline = (1, -3, 0): model input z = (2, 4, 2), z' = 0.
        let (x, b) = ([2.0f32, 4.0, 2.0], [0.0f32; 3]);
        let got = m
            .integrated_gradients(&x, 1, Some(&b), Target::Predicted, 3)
            .unwrap();
        let a = &got[0];
        // φ_i = 10 · w_i · (z_i − z'_i) = 10 · w_i / scale_i · (raw_i − raw'_i).
        let want = [10.0 * 0.5 * 2.0, 10.0 * -2.0 * 4.0, 10.0 * 1.5 * 2.0];
        for (g, w) in a.attributions.iter().zip(want) {
            assert!(relative(*g, w) < 1e-5, "{:?} vs {want:?}", a.attributions);
        }
        assert_eq!(a.target, 0);
        assert!(relative(a.prediction, 10.0 * (1.0 - 8.0 + 3.0 + 0.25) + 100.0) < 1e-6);
        assert!(relative(a.baseline_prediction, 10.0 * 0.25 + 100.0) < 1e-6);
        assert!(a.residual().abs() < 1e-3, "{a:?}");
        // One node is enough for a linear function: the gradient is constant.
        let one = m
            .integrated_gradients(&x, 1, Some(&b), Target::Predicted, 1)
            .unwrap();
        for (g, w) in one[0].attributions.iter().zip(want) {
            assert!(relative(*g, w) < 1e-5);
        }
    }

    #[test]
    fn a_column_the_first_layer_ignores_gets_nothing() {
        // Column b's first-layer weights are all zero.
        let m = model(
            serde_json::json!({"format_version": 1, "task": "classification",
                "input": {"shape": [3], "features": ["a", "b", "c"]}, "labels": ["x", "y"],
                "layers": [{"type": "dense", "units": 2, "activation": "tanh"},
                           {"type": "dense", "units": 2}],
                "preprocessing": {"features": [
                    {"kind": "numeric", "name": "a"}, {"kind": "numeric", "name": "b"},
                    {"kind": "numeric", "name": "c"}]}}),
            &[
                ("0.weight", vec![0.7, 0.0, -0.4, -0.3, 0.0, 0.9], &[2, 3]),
                ("0.bias", vec![0.1, -0.2], &[2]),
                ("1.weight", vec![1.2, -0.8, -0.5, 0.6], &[2, 2]),
                ("1.bias", vec![0.0, 0.3], &[2]),
            ],
        );
        let x = [1.5f32, -2.0, 0.7, -0.5, 3.0, 1.1];
        for target in [Target::Predicted, Target::Class(0), Target::Class(1)] {
            let got = m.integrated_gradients(&x, 2, None, target, 50).unwrap();
            for a in &got {
                assert_eq!(a.attributions[1], 0.0, "{a:?}");
                assert!(a.attributions[0] != 0.0 && a.attributions[2] != 0.0);
                complete_within(a, 1e-3);
            }
        }
    }

    #[test]
    fn symmetric_inputs_get_equal_attributions() {
        // f(a, b) depends on a and b only through the same weights: swapping them changes
        // nothing, so at a = b (from a baseline with a' = b') they share the change equally.
        let m = model(
            serde_json::json!({"format_version": 1, "task": "regression",
                "input": {"shape": [3]},
                "layers": [{"type": "dense", "units": 4, "activation": "relu"},
                           {"type": "dense", "units": 1, "activation": "sigmoid"}]}),
            &[
                (
                    "0.weight",
                    vec![
                        0.5, 0.5, -1.0, -0.7, -0.7, 0.2, 1.1, 1.1, 0.4, 0.3, 0.3, -0.9,
                    ],
                    &[4, 3],
                ),
                ("0.bias", vec![0.1, 0.2, -0.3, 0.05], &[4]),
                ("1.weight", vec![0.8, -1.2, 0.6, 0.9], &[1, 4]),
                ("1.bias", vec![-0.1], &[1]),
            ],
        );
        let got = m
            .integrated_gradients_refined(
                &[1.3, 1.3, -0.4],
                1,
                Some(&[0.2, 0.2, 0.5]),
                Target::Predicted,
                50,
                1e-3,
                (1024, 20_000),
            )
            .unwrap();
        let a = &got[0].attributions;
        assert!((a[0] - a[1]).abs() <= 1e-6 * a[0].abs().max(1e-6), "{a:?}");
        assert!(a[0] != 0.0);
        // No preprocessing and no feature names: one attribution per input value.
        assert_eq!(m.attribution_shape(), [3]);
        complete_within(&got[0], 1e-3);
    }

    /// A classifier of one numeric, one one-hot and one numeric column; `first` is its
    /// first layer's activation.
    fn tabular(first: &str) -> Model {
        seeded(
            serde_json::json!({"format_version": 1, "task": "classification",
            "input": {"shape": [6], "features": ["n", "color", "size"]},
            "labels": ["p", "q", "r"],
            "layers": [{"type": "dense", "units": 16, "activation": first},
                       {"type": "dense", "units": 8, "activation": "tanh"},
                       {"type": "dense", "units": 3, "activation": "softmax"}],
            "preprocessing": {"features": [
                {"kind": "numeric", "name": "n", "shift": 10.0, "scale": 3.0},
                {"kind": "categorical", "name": "color", "encoding": "one_hot",
                 "categories": ["blue", "green", "red", "white"]},
                {"kind": "numeric", "name": "size", "shift": -1.0, "scale": 0.25}],
                "input_mean": [0.0, 0.25, 0.25, 0.4, 0.1, 0.0]}}),
        )
    }

    const TABULAR_ROWS: [f32; 18] = [
        1.2, 0.0, 1.0, 0.0, 0.0, -0.7, //
        -2.0, 0.0, 0.0, 0.0, 1.0, 2.5, //
        0.3, 1.0, 0.0, 0.0, 0.0, 0.1,
    ];

    #[test]
    fn attributions_add_up_to_the_change_and_one_hot_groups_come_back_as_their_column() {
        let m = tabular("gelu");
        assert!(m.has_input_mean());
        assert_eq!(m.attribution_shape(), [3], "one per raw column");
        let got = m
            .integrated_gradients(&TABULAR_ROWS, 3, None, Target::Predicted, 50)
            .unwrap();
        assert_eq!(got.len(), 3);
        for (r, a) in got.iter().enumerate() {
            assert_eq!(a.attributions.len(), 3);
            complete_within(a, 1e-3);
            // The predicted class is the best score; f(x) is that score.
            let out = m
                .run_rows(TABULAR_ROWS[r * 6..r * 6 + 6].to_vec(), 1)
                .unwrap();
            assert_eq!(a.target, m.scores(&out).best());
            assert!((a.prediction - out[a.target]).abs() < 1e-6);
            let base = m.run_rows(m.default_baseline().unwrap(), 1).unwrap();
            assert!((a.baseline_prediction - base[a.target]).abs() < 1e-6);
        }
        // Another class, asked for: explained as asked.
        let other = m
            .integrated_gradients(&TABULAR_ROWS[..6], 1, None, Target::Class(2), 50)
            .unwrap();
        assert_eq!(other[0].target, 2);
        complete_within(&other[0], 1e-3);
    }

    #[test]
    fn relu_kinks_are_refined_with_more_nodes() {
        // A ReLU's gradient jumps where the unit switches on the path: 50 nodes leave a
        // residual; the refinement doubles the nodes of those rows until it is under 1e-3
        // (or the bounds stop it), and never makes it worse.
        // The fixture's weights are random: almost always some row has a kink 50 nodes
        // miss; a row that has none must be left at 50.
        let m = tabular("relu");
        let first = m
            .integrated_gradients(&TABULAR_ROWS, 3, None, Target::Predicted, 50)
            .unwrap();
        let refined = m
            .integrated_gradients_refined(
                &TABULAR_ROWS,
                3,
                None,
                Target::Predicted,
                50,
                1e-3,
                (1024, 20_000),
            )
            .unwrap();
        for (a, b) in first.iter().zip(&refined) {
            assert!(
                b.relative_residual() <= a.relative_residual(),
                "{a:?} {b:?}"
            );
            if a.relative_residual() <= 1e-3 {
                assert_eq!(b, a, "a row within the tolerance is not recomputed");
            }
            // Under the tolerance, unless the node bound stopped it (the fixture's weights
            // are random: a kink can sit where even 1024 nodes leave ~1e-3, and then the
            // better of the answers computed is kept).
            if b.relative_residual() > 1e-3 {
                assert!(a.relative_residual() > 1e-3, "{a:?} {b:?}");
            }
        }
        if first.iter().any(|a| a.relative_residual() > 1e-3) {
            assert!(
                first
                    .iter()
                    .zip(&refined)
                    .any(|(a, b)| b.relative_residual() < a.relative_residual()),
                "refining improved no row: {refined:?}"
            );
        }
        // The points bound stops it: one row of 100 nodes would be 100 points.
        let bounded = m
            .integrated_gradients_refined(
                &TABULAR_ROWS,
                3,
                None,
                Target::Predicted,
                50,
                1e-3,
                (1024, 99),
            )
            .unwrap();
        assert_eq!(bounded, first);
    }

    #[test]
    fn raw_and_standardized_space_agree() {
        let m = tabular("tanh");
        let raw = m
            .integrated_gradients_in(Space::Raw, &TABULAR_ROWS, 3, None, Target::Class(1), 50)
            .unwrap();
        let model = m
            .integrated_gradients_in(Space::Model, &TABULAR_ROWS, 3, None, Target::Class(1), 50)
            .unwrap();
        for (r, s) in raw.iter().zip(&model) {
            for (a, b) in r.attributions.iter().zip(&s.attributions) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-3),
                    "{r:?} vs {s:?}"
                );
            }
            assert!((r.prediction - s.prediction).abs() < 1e-6);
        }
    }

    #[test]
    fn token_models_are_explained_per_token_and_images_in_their_shape() {
        let tokens = seeded(
            serde_json::json!({"format_version": 1, "task": "classification",
            "input": {"shape": [5], "dtype": "int64"},
            "layers": [{"type": "embedding", "input_dim": 20, "output_dim": 4},
                       {"type": "flatten"},
                       {"type": "dense", "units": 2}]}),
        );
        assert_eq!(tokens.attribution_shape(), [5]);
        assert!(tokens.default_baseline().is_none(), "the zero embedding");
        let got = tokens
            .integrated_gradients(&[3.0, 7.0, 1.0, 19.0, 0.0], 1, None, Target::Predicted, 50)
            .unwrap();
        assert_eq!(got[0].attributions.len(), 5);
        complete_within(&got[0], 1e-3);

        let image = seeded(
            serde_json::json!({"format_version": 1, "task": "classification",
            "input": {"shape": [1, 6, 6]},
            "layers": [{"type": "conv2d", "filters": 2, "kernel_size": 3, "activation": "tanh"},
                       {"type": "max_pool2d", "pool_size": 2},
                       {"type": "flatten"},
                       {"type": "dense", "units": 3}]}),
        );
        assert_eq!(image.attribution_shape(), [1, 6, 6]);
        let x: Vec<f32> = (0..72).map(|i| ((i * 37) % 11) as f32 / 11.0).collect();
        let got = image
            .integrated_gradients(&x, 2, None, Target::Predicted, 100)
            .unwrap();
        for (r, a) in got.iter().enumerate() {
            assert_eq!(a.attributions.len(), 36);
            // Completeness holds only with the pool's true gradient (candle's own backward
            // would scale it by 1/4 here), and the differentiable pool computes what the
            // served forward pass does.
            complete_within(a, 1e-2);
            let out = image.run_rows(x[r * 36..(r + 1) * 36].to_vec(), 1).unwrap();
            let scores: Vec<f32> = image.scores(&out).collect();
            assert!((a.prediction - scores[a.target]).abs() < 1e-6);
        }
    }

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        for n in [1, 2, 3, 7, 50, 51, 300] {
            let (x, w) = gauss_legendre(n);
            let total: f64 = w.iter().map(|&w| f64::from(w)).sum();
            assert!((total - 1.0).abs() < 1e-6, "n={n}: weights sum to {total}");
            assert!(x.windows(2).all(|p| p[0] < p[1]), "n={n}: nodes ascend");
            assert!(x.iter().all(|&a| (0.0..=1.0).contains(&a)));
            // ∫₀¹ α^d dα = 1 / (d + 1), exact up to degree 2n − 1.
            for d in 0..(2 * n).min(12) {
                let q: f64 = x
                    .iter()
                    .zip(&w)
                    .map(|(&a, &w)| f64::from(w) * f64::from(a).powi(d as i32))
                    .sum();
                assert!(
                    (q - 1.0 / (d as f64 + 1.0)).abs() < 1e-5,
                    "n={n} d={d}: {q}"
                );
            }
        }
        // The midpoint rule for one node.
        assert_eq!(gauss_legendre(1), (vec![0.5], vec![1.0]));
    }
}
