//! Loss functions: a batch of model outputs and targets → a scalar mean loss that backprops.
//!
//! Every loss is built from candle ops that have a backward pass. In particular the
//! cross-entropies use [`log_softmax`] written out from `max`/`exp`/`sum`/`log`, never
//! `candle_nn::ops::softmax_last_dim`, whose fused kernel has no backward: `backward()` would
//! succeed and every layer before it would silently get no gradient.
//!
//! The classification losses take **logits** (PyTorch's convention, Keras'
//! `from_logits=True`): a model whose spec ends in a softmax or sigmoid must be run without
//! that final activation when training, and the loss applies it in a stable form.
//!
//! Reduction is the mean over the batch (and over the output elements for the element-wise
//! losses), as Keras' `sum_over_batch_size` and PyTorch's `reduction="mean"` do.
//! Runs on the training thread.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Result, TrainingError};

/// A loss as named in the training configuration (Keras' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Logits `[N, C]`, integer class ids `[N]` (any dtype holding whole numbers).
    SparseCategoricalCrossentropy,
    /// Logits `[N, C]`, one-hot or probability targets `[N, C]`.
    CategoricalCrossentropy,
    /// Logits and 0/1 (or probability) targets of the same shape.
    BinaryCrossentropy,
    #[serde(alias = "mean_squared_error")]
    Mse,
    #[serde(alias = "mean_absolute_error")]
    Mae,
    /// Huber loss with delta 1.0 (Keras' and PyTorch's default).
    Huber,
}

impl Loss {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::SparseCategoricalCrossentropy => "sparse_categorical_crossentropy",
            Loss::CategoricalCrossentropy => "categorical_crossentropy",
            Loss::BinaryCrossentropy => "binary_crossentropy",
            Loss::Mse => "mse",
            Loss::Mae => "mae",
            Loss::Huber => "huber",
        }
    }

    /// Whether the loss takes logits (and the model's final softmax/sigmoid must be skipped
    /// when training).
    pub fn takes_logits(self) -> bool {
        match self {
            Loss::SparseCategoricalCrossentropy
            | Loss::CategoricalCrossentropy
            | Loss::BinaryCrossentropy => true,
            Loss::Mse | Loss::Mae | Loss::Huber => false,
        }
    }

    /// The scalar mean loss of `outputs` against `targets`.
    pub fn compute(self, outputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        match self {
            Loss::SparseCategoricalCrossentropy => {
                sparse_categorical_crossentropy(outputs, targets)
            }
            Loss::CategoricalCrossentropy => categorical_crossentropy(outputs, targets),
            Loss::BinaryCrossentropy => binary_crossentropy(outputs, targets),
            Loss::Mse => mse(outputs, targets),
            Loss::Mae => mae(outputs, targets),
            Loss::Huber => huber(outputs, targets, 1.0),
        }
    }
}

/// Log-softmax over the last dimension, stable and differentiable: `x - max - log Σ exp(x - max)`.
///
/// The max is detached: the result does not depend on it mathematically, and detaching keeps
/// ties from splitting a meaningless gradient through `max`.
pub fn log_softmax(xs: &Tensor) -> candle_core::Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// Mean of `-log softmax(logits)[target]` over the rows. `logits` is `[N, C]` (or `[..., C]`,
/// flattened to rows); `targets` holds N class ids in `0..C`, in any dtype. The ids are read
/// to the host once to check them: candle's `gather` would turn `u32::MAX` into a zero loss
/// and an f32 → u32 cast would turn `-1` into class 0, both silently.
pub fn sparse_categorical_crossentropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    weighted_sparse_categorical_crossentropy(logits, targets, None)
}

/// [`sparse_categorical_crossentropy`] with each row's loss multiplied by its class's weight
/// (`class_weights`: `[C]`), then averaged over the rows — Keras' `class_weight` convention
/// (`sum(w·l) / N`), so weights of 1 give the plain loss.
pub fn weighted_sparse_categorical_crossentropy(
    logits: &Tensor,
    targets: &Tensor,
    class_weights: Option<&Tensor>,
) -> Result<Tensor> {
    let logits = rows(logits)?;
    let (n, classes) = logits.dims2()?;
    if targets.elem_count() != n {
        return Err(TrainingError::Shape(format!(
            "sparse_categorical_crossentropy: {n} rows of logits but {} targets (shape {:?})",
            targets.elem_count(),
            targets.dims()
        )));
    }
    let ids: Vec<f64> = targets.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    let mut index = Vec::with_capacity(n);
    for (row, &id) in ids.iter().enumerate() {
        if id.fract() != 0.0 || !(0.0..classes as f64).contains(&id) {
            return Err(TrainingError::Shape(format!(
                "sparse_categorical_crossentropy: target {id} of row {row} is not a class id in 0..{classes}"
            )));
        }
        index.push(id as u32);
    }
    let index = Tensor::from_vec(index, (n, 1), logits.device())?;
    let picked = log_softmax(&logits)?.gather(&index, 1)?;
    let Some(w) = class_weights else {
        return Ok(picked.mean_all()?.neg()?);
    };
    if w.elem_count() != classes {
        return Err(TrainingError::Shape(format!(
            "sparse_categorical_crossentropy: {classes} classes but {} class weights",
            w.elem_count()
        )));
    }
    let row_weights = w.flatten_all()?.index_select(&index.flatten_all()?, 0)?;
    let weighted = picked.flatten_all()?.mul(&row_weights)?;
    Ok((weighted.sum_all()?.neg()? / n as f64)?)
}

/// Mean over rows of `-Σ_c target_c · log softmax(logits)_c`. Targets are one-hot or
/// probability rows of the logits' shape.
pub fn categorical_crossentropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = rows(logits)?;
    let targets = like(targets, &logits, "categorical_crossentropy")?;
    let n = logits.dim(0)?;
    let total = targets.mul(&log_softmax(&logits)?)?.sum_all()?;
    Ok((total.neg()? / n as f64)?)
}

/// Mean of `max(x, 0) - x·z + log(1 + exp(-|x|))` over every element: binary cross-entropy
/// from logits `x` and targets `z`, finite for any finite logit. (candle-nn's
/// `binary_cross_entropy_with_logit` goes through `log(sigmoid(x))`, which is -inf once the
/// sigmoid rounds to 0.)
pub fn binary_crossentropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let z = like(targets, logits, "binary_crossentropy")?;
    let softplus_tail = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let per_element = ((logits.relu()? - logits.mul(&z)?)? + softplus_tail)?;
    Ok(per_element.mean_all()?)
}

/// Mean squared error.
pub fn mse(predictions: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t = like(targets, predictions, "mse")?;
    Ok(predictions.sub(&t)?.sqr()?.mean_all()?)
}

/// Mean absolute error. (At an error of exactly 0 candle's `abs` backward gives slope +1
/// where PyTorch gives 0; a measure-zero difference.)
pub fn mae(predictions: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t = like(targets, predictions, "mae")?;
    Ok(predictions.sub(&t)?.abs()?.mean_all()?)
}

/// Mean Huber loss: `0.5·e²` where `|e| ≤ delta`, else `delta·(|e| - 0.5·delta)`, written as
/// `0.5·q² + delta·(|e| - q)` with `q = min(|e|, delta)` so it is one differentiable
/// expression (gradient `clamp(e, -delta, delta)`).
pub fn huber(predictions: &Tensor, targets: &Tensor, delta: f64) -> Result<Tensor> {
    if !(delta > 0.0 && delta.is_finite()) {
        return Err(TrainingError::config(
            "huber delta",
            format!("must be positive, got {delta}"),
        ));
    }
    let t = like(targets, predictions, "huber")?;
    let a = predictions.sub(&t)?.abs()?;
    let q = a.minimum(delta)?;
    let per_element = ((q.sqr()? * 0.5)? + (a.sub(&q)? * delta)?)?;
    Ok(per_element.mean_all()?)
}

/// `xs` as `[rows, classes]`: unchanged when 2-D, leading dimensions flattened otherwise.
fn rows(xs: &Tensor) -> Result<Tensor> {
    match xs.rank() {
        0 | 1 => Err(TrainingError::Shape(format!(
            "class logits need a class dimension, got shape {:?}",
            xs.dims()
        ))),
        2 => Ok(xs.clone()),
        _ => Ok(xs.flatten_to(D::Minus2)?),
    }
}

/// `targets` in the dtype and shape of `outputs`. Targets with the same number of elements
/// but another shape (`[N]` for outputs `[N, 1]`) are reshaped, never broadcast: broadcasting
/// `[N]` against `[N, 1]` would compare every output with every target.
fn like(targets: &Tensor, outputs: &Tensor, loss: &str) -> Result<Tensor> {
    if targets.elem_count() != outputs.elem_count() {
        return Err(TrainingError::Shape(format!(
            "{loss}: outputs of shape {:?} but targets of shape {:?}",
            outputs.dims(),
            targets.dims()
        )));
    }
    let t = targets.to_dtype(outputs.dtype())?;
    Ok(if t.dims() == outputs.dims() {
        t
    } else {
        t.reshape(outputs.shape())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t2(rows: &[&[f32]]) -> Tensor {
        let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(data, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    fn t1(xs: &[f32]) -> Tensor {
        Tensor::new(xs, &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    fn close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    /// The loss value and the gradient with respect to `outputs` (as a `Var`).
    fn value_and_grad(loss: Loss, outputs: Tensor, targets: &Tensor) -> (f32, Vec<f32>) {
        let x = Var::from_tensor(&outputs).unwrap();
        let l = loss.compute(x.as_tensor(), targets).unwrap();
        let g = l.backward().unwrap();
        let g = g.get(x.as_tensor()).expect("the output gets a gradient");
        (scalar(&l), g.flatten_all().unwrap().to_vec1().unwrap())
    }

    #[test]
    fn sparse_categorical_crossentropy_value_and_gradient() {
        let logits = t2(&[&[1., 2., 3.], &[1., 1., 1.]]);
        // Row 0: log Σ e^x = log(e + e² + e³) = log 30.192880 = 3.4076059, so -log p(2) =
        // 0.4076059. Row 1: -log(1/3) = 1.0986123. Mean: 0.7531091.
        // Gradient: (softmax - onehot) / N. softmax(row 0) = [0.0900306, 0.2447285, 0.6652410].
        for targets in [
            t1(&[2., 0.]),
            Tensor::new(&[2u32, 0], &Device::Cpu).unwrap(),
            Tensor::new(&[[2i64], [0]], &Device::Cpu).unwrap(),
        ] {
            let (l, g) = value_and_grad(
                Loss::SparseCategoricalCrossentropy,
                logits.clone(),
                &targets,
            );
            assert!((l - 0.753_109_1).abs() < 1e-6, "{l}");
            close(
                &g,
                &[
                    0.045_015_3,
                    0.122_364_2,
                    -0.167_379_5,
                    (1.0 / 3.0 - 1.0) / 2.0,
                    1.0 / 6.0,
                    1.0 / 6.0,
                ],
                1e-6,
            );
        }
    }

    #[test]
    fn sparse_targets_are_checked() {
        let logits = t2(&[&[1., 2., 3.], &[1., 1., 1.]]);
        for bad in [t1(&[3., 0.]), t1(&[-1., 0.]), t1(&[0.5, 0.]), t1(&[0.])] {
            let err = sparse_categorical_crossentropy(&logits, &bad).unwrap_err();
            assert!(matches!(err, TrainingError::Shape(_)), "{err}");
        }
        let err = sparse_categorical_crossentropy(&t1(&[1., 2.]), &t1(&[0.])).unwrap_err();
        assert!(err.to_string().contains("class dimension"), "{err}");
    }

    #[test]
    fn sparse_crossentropy_is_stable_for_huge_logits() {
        let logits = t2(&[&[1000., -1000., 0.], &[-1000., 1000., 0.]]);
        let l = sparse_categorical_crossentropy(&logits, &t1(&[1., 1.])).unwrap();
        // Row 0: -log p(1) = 2000 (to f32 precision); row 1: ~0. Mean 1000.
        assert!((scalar(&l) - 1000.0).abs() < 1e-3);
    }

    #[test]
    fn categorical_crossentropy_with_onehot_and_probability_targets() {
        let logits = t2(&[&[1., 2., 3.], &[1., 1., 1.]]);
        let onehot = t2(&[&[0., 0., 1.], &[1., 0., 0.]]);
        let (l, g) = value_and_grad(Loss::CategoricalCrossentropy, logits, &onehot);
        // Same numbers as the sparse test: one-hot rows are the same targets.
        assert!((l - 0.753_109_1).abs() < 1e-6, "{l}");
        assert!((g[2] + 0.167_379_5).abs() < 1e-6);
        // softmax([0, ln 3]) = [1/4, 3/4] equals the targets: the loss is their entropy,
        // -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.5623351, and the gradient is 0.
        let (l, g) = value_and_grad(
            Loss::CategoricalCrossentropy,
            t2(&[&[0., 3f32.ln()]]),
            &t2(&[&[0.25, 0.75]]),
        );
        assert!((l - 0.562_335_1).abs() < 1e-6, "{l}");
        close(&g, &[0.0, 0.0], 1e-6);
    }

    #[test]
    fn binary_crossentropy_value_gradient_and_stability() {
        // x=0,z=1: ln 2 = 0.6931472; x=2,z=0: 2 + ln(1 + e^-2) = 2.1269280;
        // x=-3,z=1: 3 + ln(1 + e^-3) = 3.0485874. Mean 1.9562209.
        // Gradient (sigmoid(x) - z) / 3: [-0.5, 0.8807971, -0.9525741] / 3.
        let (l, g) = value_and_grad(
            Loss::BinaryCrossentropy,
            t2(&[&[0.], &[2.], &[-3.]]),
            &t1(&[1., 0., 1.]),
        );
        assert!((l - 1.956_220_9).abs() < 1e-6, "{l}");
        close(&g, &[-0.166_666_7, 0.293_599, -0.317_524_7], 1e-6);
        // ±100: the right answers cost ~0, the wrong ones 100 each: mean 50, gradient finite.
        let (l, g) = value_and_grad(
            Loss::BinaryCrossentropy,
            t1(&[100., -100., 100., -100.]),
            &t1(&[1., 0., 0., 1.]),
        );
        assert!((l - 50.0).abs() < 1e-4, "{l}");
        assert!(g.iter().all(|x| x.is_finite()));
        close(&g, &[0.0, 0.0, 0.25, -0.25], 1e-6);
    }

    #[test]
    fn regression_losses_values_and_gradients() {
        // Errors e = p - t = [-0.5, 0, 1, -2].
        let p = t1(&[1., 2., 3., 4.]);
        let t = t1(&[1.5, 2., 2., 6.]);
        // MSE: (0.25 + 0 + 1 + 4) / 4 = 1.3125; gradient 2e/4.
        let (l, g) = value_and_grad(Loss::Mse, p.clone(), &t);
        assert!((l - 1.3125).abs() < 1e-6);
        close(&g, &[-0.25, 0.0, 0.5, -1.0], 1e-6);
        // MAE: (0.5 + 0 + 1 + 2) / 4 = 0.875; gradient sign(e)/4 (e = 0 not checked).
        let (l, g) = value_and_grad(Loss::Mae, p.clone(), &t);
        assert!((l - 0.875).abs() < 1e-6);
        close(&[g[0], g[2], g[3]], &[-0.25, 0.25, -0.25], 1e-6);
        // Huber(1): 0.5·0.25 + 0 + 0.5·1 + 1·(2 - 0.5) = 2.125, mean 0.53125;
        // gradient clamp(e, -1, 1)/4 (at |e| = delta both branches give slope delta).
        let (l, g) = value_and_grad(Loss::Huber, p, &t);
        assert!((l - 0.531_25).abs() < 1e-6);
        close(&g, &[-0.125, 0.0, 0.25, -0.25], 1e-6);
    }

    #[test]
    fn column_targets_are_reshaped_not_broadcast() {
        // Outputs [3, 1] and targets [3]: broadcasting would give a [3, 3] difference.
        let p = t2(&[&[1.], &[2.], &[3.]]);
        let l = mse(&p, &t1(&[1., 2., 5.])).unwrap();
        assert!((scalar(&l) - 4.0 / 3.0).abs() < 1e-6);
        assert!(mse(&p, &t1(&[1., 2.])).is_err());
    }

    #[test]
    fn names_parse_with_aliases() {
        for (json, want) in [
            (
                "\"sparse_categorical_crossentropy\"",
                Loss::SparseCategoricalCrossentropy,
            ),
            (
                "\"categorical_crossentropy\"",
                Loss::CategoricalCrossentropy,
            ),
            ("\"binary_crossentropy\"", Loss::BinaryCrossentropy),
            ("\"mse\"", Loss::Mse),
            ("\"mean_squared_error\"", Loss::Mse),
            ("\"mae\"", Loss::Mae),
            ("\"mean_absolute_error\"", Loss::Mae),
            ("\"huber\"", Loss::Huber),
        ] {
            let loss: Loss = serde_json::from_str(json).unwrap();
            assert_eq!(loss, want);
            assert_eq!(
                serde_json::to_string(&loss).unwrap(),
                format!("\"{}\"", loss.as_str())
            );
        }
        assert!(serde_json::from_str::<Loss>("\"hinge\"").is_err());
    }

    #[test]
    fn class_weights_scale_each_rows_loss_and_gradient() {
        let logits = t2(&[&[2.0, 0.5, -1.0], &[0.1, 0.2, 0.3], &[-1.0, 3.0, 0.0]]);
        let targets = t1(&[0.0, 2.0, 1.0]);
        let ones = t1(&[1.0, 1.0, 1.0]);
        let plain = scalar(&sparse_categorical_crossentropy(&logits, &targets).unwrap());
        let same = scalar(
            &weighted_sparse_categorical_crossentropy(&logits, &targets, Some(&ones)).unwrap(),
        );
        assert!((plain - same).abs() < 1e-6, "{plain} vs {same}");
        // Weights (2, 1, 0.5): row 0 (class 0) counts twice, row 1 (class 2) half.
        let w = t1(&[2.0, 1.0, 0.5]);
        let per_row: Vec<f32> = (0..3)
            .map(|r| {
                let row = logits.narrow(0, r, 1).unwrap();
                let y = targets.narrow(0, r, 1).unwrap();
                scalar(&sparse_categorical_crossentropy(&row, &y).unwrap())
            })
            .collect();
        let want = (2.0 * per_row[0] + 0.5 * per_row[1] + per_row[2]) / 3.0;
        let got =
            scalar(&weighted_sparse_categorical_crossentropy(&logits, &targets, Some(&w)).unwrap());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let bad = weighted_sparse_categorical_crossentropy(&logits, &targets, Some(&t1(&[1.0])));
        assert!(bad.is_err());
    }
}
