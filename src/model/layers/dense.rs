//! Dense layers: building one (`units`, `activation`, bias), and the node that trains it on
//! the CPU (`dense_train`), whose backward pass is cheaper than candle's `Linear` path while
//! computing the same values.

use candle_core::{CpuStorage, DType, Layout, Module, Shape, Tensor};
use candle_nn::Init;

use super::{apply_act, init_for, Act, Ctx, Layer};
use crate::model::format::{Activation, Initializer};

/// `units` outputs over the last dimension of the input.
pub(super) fn build(
    ctx: &mut Ctx,
    units: usize,
    activation: Option<Activation>,
    use_bias: bool,
    initializer: Option<Initializer>,
) -> Result<(Layer, Vec<usize>), String> {
    if units == 0 {
        return Err("units must be positive".into());
    }
    let rank = ctx.shape.len();
    let fan_in = ctx.shape[rank - 1];
    let init = init_for(initializer.unwrap_or_default(), fan_in, units);
    let w = ctx.get("weight", &[units, fan_in], init)?;
    let b = if use_bias {
        Some(ctx.get("bias", &[units], Init::Const(0.0))?)
    } else {
        None
    };
    let mut out = ctx.shape.to_vec();
    out[rank - 1] = units;
    Ok((
        Layer::Dense(candle_nn::Linear::new(w, b), activation.map(Act::new)),
        out,
    ))
}

/// `Layer::Dense`'s forward pass; in training on the CPU, one autograd node (see
/// [`dense_train`]) whose weight and bias gradients go to `sink` when there is one.
pub(super) fn forward(
    l: &candle_nn::Linear,
    act: &Option<Act>,
    xs: &Tensor,
    train: bool,
    sink: Option<&std::sync::Arc<ParamGrads>>,
) -> candle_core::Result<Tensor> {
    if train && dense_train_applies(l, xs) {
        let relu = matches!(act, Some(a) if a.kind == Activation::Relu);
        let y = dense_train(l, xs, relu, sink.cloned())?;
        return if relu {
            Ok(y)
        } else {
            apply_act(y, act, train)
        };
    }
    apply_act(l.forward(xs)?, act, train)
}

/// Whether [`dense_train`] takes this call: f32 rows `[batch, in]` on the CPU.
fn dense_train_applies(l: &candle_nn::Linear, xs: &Tensor) -> bool {
    xs.device().is_cpu()
        && xs.rank() == 2
        && xs.dtype() == DType::F32
        && l.weight().dtype() == DType::F32
        && l.bias()
            .is_none_or(|b| b.dtype() == DType::F32 && b.rank() == 1)
}

/// `x·wᵀ + b` (then `relu` when asked) as one autograd node, for training on the CPU.
///
/// The forward values are exactly `candle_nn::Linear` (+ `Tensor::relu`)'s: the same GEMM
/// call on the same layouts, then the same f32 additions and `max(0)`. What changes is the
/// backward pass. Through `Linear`, candle's autograd records transpose → matmul →
/// broadcast → add (→ relu) and, going back, computes the weight gradient as `(xᵀ·g)ᵀ`, a
/// transposed view that it then adds element by element with a stride of `in` (the slowest
/// thing in a big model's step), sums the bias gradient with its generic strided reduction,
/// builds the relu mask in four passes, and computes a gradient for the input batch that
/// nothing uses. Here the backward computes `g ⊙ mask` (one pass), `gᵀ·x` (the weight
/// gradient, contiguous), the bias gradient as a column sum in candle's own order, and `g·w`
/// only when the input needs a gradient (not for the input batch). Every value is the same
/// formula with the same summation order as candle's path, except that the weight gradient
/// is one GEMM `gᵀ·x` instead of the transpose of `xᵀ·g`: the same dot products over the batch.
fn dense_train(
    l: &candle_nn::Linear,
    xs: &Tensor,
    relu: bool,
    sink: Option<std::sync::Arc<ParamGrads>>,
) -> candle_core::Result<Tensor> {
    let op = DenseTrain {
        relu,
        mask: std::sync::Mutex::new(None),
        sink,
    };
    match l.bias() {
        Some(b) => xs.apply_op3(l.weight(), b, op),
        None => xs.apply_op2(l.weight(), op),
    }
}

struct DenseTrain {
    relu: bool,
    /// The relu's derivative, `1.0` where the pre-activation is `>= 0` (candle's `ge(0)`),
    /// recorded by the forward pass for the backward one.
    mask: std::sync::Mutex<Option<Tensor>>,
    /// Where the weight and bias gradients go (`None`: returned to candle's `GradStore`).
    sink: Option<std::sync::Arc<ParamGrads>>,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("dense (training): {what} must be f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("dense (training): {what} must be contiguous"),
    }
}

impl DenseTrain {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = x.1.shape().dims2()?;
        let (n, k2) = w.1.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("dense (training): input width {k}, weight {n}x{k2}");
        }
        // Exactly `x.matmul(&w.t())`: the same storage call with the same layouts.
        let mut out = x.0.matmul(w.0, (1, m, n, k), x.1, &w.1.transpose(0, 1)?)?;
        let CpuStorage::F32(z) = &mut out else {
            candle_core::bail!("dense (training): expected an f32 product")
        };
        if let Some((bs, bl)) = b {
            let bias = f32_slice(bs, bl, "the bias")?;
            if bias.len() != n {
                candle_core::bail!("dense (training): bias of {} for {n} units", bias.len());
            }
            for row in z.chunks_exact_mut(n) {
                for (v, &c) in row.iter_mut().zip(bias) {
                    *v += c;
                }
            }
        }
        if self.relu {
            let mut mask = Vec::with_capacity(z.len());
            for v in z.iter_mut() {
                mask.push(if *v >= 0.0 { 1f32 } else { 0f32 });
                *v = v.max(0f32);
            }
            let mask = Tensor::from_vec(mask, (m, n), &candle_core::Device::Cpu)?;
            *self.mask.lock().expect("dense mask lock") = Some(mask);
        }
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = if self.relu {
            let mask = self.mask.lock().expect("dense mask lock");
            let Some(mask) = mask.as_ref() else {
                candle_core::bail!("dense (training): backward before forward")
            };
            grad.mul(mask)?
        } else {
            grad.clone()
        };
        let gx = if x.track_op() {
            Some(g.matmul(w)?)
        } else {
            None
        };
        let mut gw = if w.track_op() {
            Some(g.t()?.matmul(x)?)
        } else {
            None
        };
        let mut gb = match b {
            Some(b) if b.track_op() => Some(g.apply_op1_no_bwd(&ColumnSum)?),
            _ => None,
        };
        if let Some(sink) = &self.sink {
            if let Some(gw) = gw.take() {
                sink.push(w, gw);
            }
            if let (Some(b), Some(gb)) = (b, gb.take()) {
                sink.push(b, gb);
            }
        }
        Ok((gx, gw, gb))
    }
}

impl candle_core::CustomOp2 for DenseTrain {
    fn name(&self) -> &'static str {
        "kiln-dense-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = DenseTrain::bwd(self, x, w, None, grad)?;
        Ok((gx, gw))
    }
}

impl candle_core::CustomOp3 for DenseTrain {
    fn name(&self) -> &'static str {
        "kiln-dense-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        DenseTrain::bwd(self, x, w, Some(b), grad)
    }
}

/// `[rows, cols]` → `[cols]`: each column summed from 0 in row order, as candle's
/// `sum(0)` does (its reduction over a leading dimension), in one contiguous pass.
struct ColumnSum;

impl candle_core::CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "kiln-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, cols) = l.shape().dims2()?;
        let v = f32_slice(s, l, "the gradient")?;
        let mut out = vec![0f32; cols];
        if cols == 0 {
            return Ok((CpuStorage::F32(out), Shape::from(cols)));
        }
        for row in v.chunks_exact(cols) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o += x;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(cols)))
    }
}

/// Where the training dense layers hand the gradients of their weights and biases during
/// `backward()`, instead of candle's `GradStore`, which would first allocate a zeroed tensor
/// of the parameter's size and then add the gradient to it (a memset and a full extra pass
/// per parameter and step: about a sixth of a step of the 784→1024→1024→10 MLP). After
/// `backward()`, [`ParamGrads::drain_into`] puts them in the `GradStore`, where the
/// optimizer finds them as usual. The values are the same: `0 + g` is `g` (up to the sign of
/// a zero, which no update rule sees).
#[derive(Debug, Default)]
pub struct ParamGrads(std::sync::Mutex<Vec<(Tensor, Tensor)>>);

impl ParamGrads {
    fn push(&self, param: &Tensor, grad: Tensor) {
        self.0
            .lock()
            .expect("param grads lock")
            .push((param.clone(), grad));
    }

    /// Moves the collected gradients into `grads`; a parameter that already has a gradient
    /// there (used elsewhere in the graph too) gets the sum, as candle would have built it.
    pub fn drain_into(
        &self,
        grads: &mut candle_core::backprop::GradStore,
    ) -> candle_core::Result<()> {
        let collected = std::mem::take(&mut *self.0.lock().expect("param grads lock"));
        for (param, grad) in collected {
            let grad = match grads.remove(&param) {
                Some(existing) => existing.add(&grad)?,
                None => grad,
            };
            grads.insert(&param, grad);
        }
        Ok(())
    }

    /// Drops anything collected (after a failed backward pass).
    pub fn clear(&self) {
        self.0.lock().expect("param grads lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Pseudo-random values in [-1, 1) (a fixed LCG: no RNG state needed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The training dense node gives bit for bit the values and gradients of candle's
    /// `Linear` (+ relu) path, with and without bias and relu, for a plain input and for an
    /// input that needs a gradient, including pre-activations that are exactly 0.
    #[test]
    fn dense_train_matches_candle_linear() {
        let dev = Device::Cpu;
        let (batch, fan_in, units) = (7, 5, 4);
        for (relu, bias, input_var) in [
            (true, true, false),
            (true, true, true),
            (false, true, true),
            (true, false, true),
            (false, false, false),
        ] {
            let mut xv = values(batch * fan_in, 1);
            // A zero row: with a zero bias its pre-activations are exactly 0 (relu' = 1 there).
            xv[..fan_in].iter_mut().for_each(|v| *v = 0.0);
            let w = candle_core::Var::from_vec(values(units * fan_in, 2), (units, fan_in), &dev)
                .unwrap();
            let mut bv = values(units, 3);
            bv[0] = 0.0;
            let b = candle_core::Var::from_vec(bv, units, &dev).unwrap();
            let lin =
                candle_nn::Linear::new(w.as_tensor().clone(), bias.then(|| b.as_tensor().clone()));
            let x = candle_core::Var::from_vec(xv.clone(), (batch, fan_in), &dev).unwrap();
            let plain = Tensor::from_vec(xv, (batch, fan_in), &dev).unwrap();
            let input = if input_var { x.as_tensor() } else { &plain };
            let weights = Tensor::from_vec(values(batch * units, 4), (batch, units), &dev).unwrap();
            let act = relu.then(|| Act::new(Activation::Relu));
            let layer = Layer::Dense(lin.clone(), act);
            let fused = layer.forward_t(input, true).unwrap();
            let mut reference = lin.forward(input).unwrap();
            if relu {
                reference = reference.relu().unwrap();
            }
            assert_eq!(
                bits(&fused),
                bits(&reference),
                "forward {relu} {bias} {input_var}"
            );
            let g1 = (&fused * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&reference * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            // The same with the parameter gradients going through a sink.
            let sink = std::sync::Arc::new(ParamGrads::default());
            let sunk = layer.forward_train(input, &sink).unwrap();
            assert_eq!(bits(&sunk), bits(&reference));
            let mut g3 = (&sunk * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            assert!(
                g3.get(w.as_tensor()).is_none(),
                "the weight gradient went to the sink"
            );
            sink.drain_into(&mut g3).unwrap();
            let mut checked = vec![w.as_tensor()];
            if bias {
                checked.push(b.as_tensor());
            }
            if input_var {
                checked.push(x.as_tensor());
            }
            for t in checked {
                let (a, r) = (
                    g1.get(t).expect("fused grad"),
                    g2.get(t).expect("reference grad"),
                );
                assert_eq!(a.dims(), r.dims());
                assert_eq!(bits(a), bits(r), "gradient {relu} {bias} {input_var}");
                let c = g3.get(t).expect("sunk grad");
                assert_eq!(c.dims(), r.dims());
                // `0 + g` turns a -0 into +0: compare values.
                let c: Vec<f32> = c.flatten_all().unwrap().to_vec1().unwrap();
                let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(c, r, "sunk gradient {relu} {bias} {input_var}");
            }
            // No gradient is computed for an input that does not need one.
            assert!(input_var || g1.get(&plain).is_none());
        }
    }
}
