//! Layer specs → candle-nn modules, with every shape checked when the model is built.
//!
//! Building walks the layer list with the current per-instance shape (no batch dimension),
//! checks each layer against it and asks the `VarBuilder` for tensors of the exact expected
//! shapes, so a misshapen or missing tensor is reported with its layer and name at load time.
//! The same code builds trainable layers over a `VarMap` (training) and frozen ones over
//! loaded safetensors (serving). Forward passes run only on worker threads.

use candle_core::{CpuStorage, DType, Layout, Module, ModuleT, Shape, Tensor, D};
use candle_nn::{rnn::RNN, Init, VarBuilder};

use crate::model::format::{Activation, Initializer, InputDType, LayerSpec, Padding, PaddingMode};
use crate::model::ModelError;

/// An activation with its parameter (slope of leaky_relu, alpha of elu).
#[derive(Debug, Clone, Copy)]
pub struct Act {
    pub kind: Activation,
    pub alpha: f64,
}

impl Act {
    fn new(kind: Activation) -> Self {
        Act { kind, alpha: 0.01 }
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self.kind {
            Activation::Linear => Ok(xs.clone()),
            Activation::Relu => xs.relu(),
            Activation::LeakyRelu => candle_nn::ops::leaky_relu(xs, self.alpha),
            Activation::Elu => xs.elu(self.alpha),
            Activation::Gelu => xs.gelu_erf(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(xs),
            Activation::Tanh => xs.tanh(),
            // The fused kernel has no backward (CANDLE-NOTES): training takes the composite op.
            Activation::Softmax if train => candle_nn::ops::softmax(xs, D::Minus1),
            Activation::Softmax => candle_nn::ops::softmax_last_dim(xs),
        }
    }
}

/// A built layer, ready for `forward_t`.
#[derive(Debug, Clone)]
pub enum Layer {
    Dense(candle_nn::Linear, Option<Act>),
    Activation(Act),
    Dropout(f32),
    Flatten,
    Reshape(Vec<usize>),
    Conv1d(candle_nn::Conv1d, Option<Act>),
    Conv2d(candle_nn::Conv2d, Option<Act>),
    MaxPool2d {
        size: usize,
        stride: usize,
    },
    AvgPool2d {
        size: usize,
        stride: usize,
    },
    BatchNorm(candle_nn::BatchNorm),
    LayerNorm {
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    },
    Embedding(candle_nn::Embedding),
    Lstm(candle_nn::LSTM, bool),
    Gru(candle_nn::GRU, bool),
}

fn apply_act(xs: Tensor, act: &Option<Act>, train: bool) -> candle_core::Result<Tensor> {
    match act {
        Some(a) => a.forward_t(&xs, train),
        None => Ok(xs),
    }
}

impl Layer {
    /// `xs` has the batch dimension first. `train` turns on dropout and batch statistics.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            // Training on the CPU: one autograd node per dense layer (see `dense_train`).
            Layer::Dense(l, act) if train && dense_train_applies(l, xs) => {
                let relu = matches!(act, Some(a) if a.kind == Activation::Relu);
                let y = dense_train(l, xs, relu, None)?;
                if relu {
                    Ok(y)
                } else {
                    apply_act(y, act, train)
                }
            }
            Layer::Dense(l, act) => apply_act(l.forward(xs)?, act, train),
            Layer::Activation(a) => a.forward_t(xs, train),
            Layer::Dropout(rate) if train && *rate > 0.0 => candle_nn::ops::dropout(xs, *rate),
            Layer::Dropout(_) => Ok(xs.clone()),
            Layer::Flatten => xs.flatten_from(1),
            Layer::Reshape(shape) => {
                let mut dims = Vec::with_capacity(shape.len() + 1);
                dims.push(xs.dim(0)?);
                dims.extend_from_slice(shape);
                xs.reshape(dims)
            }
            Layer::Conv1d(c, act) => apply_act(c.forward(xs)?, act, train),
            Layer::Conv2d(c, act) => apply_act(c.forward(xs)?, act, train),
            Layer::MaxPool2d { size, stride } => xs.max_pool2d_with_stride(*size, *stride),
            Layer::AvgPool2d { size, stride } => xs.avg_pool2d_with_stride(*size, *stride),
            Layer::BatchNorm(bn) => bn.forward_t(xs, train),
            // Composite ops, not the fused `ops::layer_norm`, which drops gradients (CANDLE-NOTES).
            Layer::LayerNorm { weight, bias, eps } => {
                candle_nn::ops::layer_norm_slow(xs, weight, bias, *eps as f32)
            }
            Layer::Embedding(e) => e.forward(&xs.to_dtype(DType::U32)?),
            Layer::Lstm(l, full) => {
                let states = l.seq(&xs.contiguous()?)?;
                if *full {
                    l.states_to_tensor(&states)
                } else {
                    Ok(states
                        .last()
                        .expect("sequence length checked > 0 at load")
                        .h()
                        .clone())
                }
            }
            Layer::Gru(g, full) => {
                let states = g.seq(&xs.contiguous()?)?;
                if *full {
                    g.states_to_tensor(&states)
                } else {
                    Ok(states
                        .last()
                        .expect("sequence length checked > 0 at load")
                        .h()
                        .clone())
                }
            }
        }
    }
}

// === the training dense layer ===

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

impl Layer {
    /// [`Layer::forward_t`] in training mode, with the gradients of dense layers' weights and
    /// biases going to `sink` during `backward()` (see [`ParamGrads`]): call
    /// `sink.drain_into(&mut grads)` after every `backward()` of a graph built so.
    pub fn forward_train(
        &self,
        xs: &Tensor,
        sink: &std::sync::Arc<ParamGrads>,
    ) -> candle_core::Result<Tensor> {
        if let Layer::Dense(l, act) = self {
            if dense_train_applies(l, xs) {
                let relu = matches!(act, Some(a) if a.kind == Activation::Relu);
                let y = dense_train(l, xs, relu, Some(sink.clone()))?;
                return if relu { Ok(y) } else { apply_act(y, act, true) };
            }
        }
        self.forward_t(xs, true)
    }
}

/// Turns an initializer into candle's `Init` for a tensor with these fans.
pub fn init_for(init: Initializer, fan_in: usize, fan_out: usize) -> Init {
    let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
    match init {
        Initializer::GlorotUniform => {
            let b = (6.0 / (fi + fo)).sqrt();
            Init::Uniform { lo: -b, up: b }
        }
        Initializer::GlorotNormal => Init::Randn {
            mean: 0.0,
            stdev: (2.0 / (fi + fo)).sqrt(),
        },
        Initializer::HeUniform => {
            let b = (6.0 / fi).sqrt();
            Init::Uniform { lo: -b, up: b }
        }
        Initializer::HeNormal => Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fi).sqrt(),
        },
        Initializer::Normal => Init::Randn {
            mean: 0.0,
            stdev: 0.05,
        },
        Initializer::Uniform => Init::Uniform {
            lo: -0.05,
            up: 0.05,
        },
        Initializer::Zeros => Init::Const(0.0),
    }
}

/// Output length of a convolution or pooling along one axis, if positive (`None` too when
/// the sizes overflow: a spec is hostile input).
fn conv_out(
    len: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    padded(len, pad)?.checked_sub(span).map(|x| x / stride + 1)
}

/// `len + 2 * pad`, if it fits.
fn padded(len: usize, pad: usize) -> Option<usize> {
    len.checked_add(pad.checked_mul(2)?)
}

/// The number of values in a tensor of `shape`, if it fits in a `usize`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

fn resolve_padding(
    p: Padding,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Result<usize, String> {
    match p {
        Padding::Explicit(n) => Ok(n),
        Padding::Named(PaddingMode::Valid) => Ok(0),
        Padding::Named(PaddingMode::Same) => {
            let span = dilation.checked_mul(kernel - 1).ok_or_else(|| {
                format!("kernel_size {kernel} with dilation {dilation} is too large")
            })?;
            if stride != 1 || span % 2 != 0 {
                return Err(
                    "padding \"same\" needs stride 1 and an odd effective kernel size".into(),
                );
            }
            Ok(span / 2)
        }
    }
}

/// The built layers and the per-instance output shape.
pub struct Built {
    pub layers: Vec<Layer>,
    pub output_shape: Vec<usize>,
    /// Values all layers output for one instance together: what a training step keeps per
    /// instance for the backward pass.
    pub activations: usize,
    /// Every tensor name the layers read (to report unused tensors in a weights file).
    pub tensor_names: Vec<String>,
}

/// Builds `specs` for instances of `input_shape`, checking every shape on the way.
pub fn build(
    specs: &[LayerSpec],
    input_shape: &[usize],
    dtype: InputDType,
    vb: &VarBuilder,
) -> Result<Built, ModelError> {
    if input_shape.is_empty() || input_shape.contains(&0) {
        return Err(ModelError::Invalid(format!(
            "input shape {input_shape:?} must have at least one dimension and no zero dimension"
        )));
    }
    if specs.is_empty() {
        return Err(ModelError::Invalid("the layer list is empty".into()));
    }
    // Every shape's size is checked to fit, so `build_one` may multiply dimensions freely.
    if elements(input_shape).is_none() {
        return Err(ModelError::Invalid(format!(
            "input shape {input_shape:?} is too large"
        )));
    }
    let mut activations: usize = 0;
    let mut shape = input_shape.to_vec();
    let mut layers = Vec::with_capacity(specs.len());
    let mut names = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let prefix = spec.tensor_prefix(index);
        let err = |message: String| ModelError::Layer {
            index,
            kind: spec.kind(),
            name: prefix.clone(),
            message,
        };
        if dtype == InputDType::Int64 && index == 0 && !matches!(spec, LayerSpec::Embedding { .. })
        {
            return Err(err(
                "an int64 input must go into an embedding layer first".into()
            ));
        }
        let lvb = vb.pp(&prefix);
        let (layer, out) =
            build_one(spec, &shape, &lvb, index, dtype, &mut names, &prefix).map_err(err)?;
        let n = elements(&out).ok_or_else(|| err(format!("output shape {out:?} is too large")))?;
        activations = activations.saturating_add(n);
        layers.push(layer);
        shape = out;
    }
    Ok(Built {
        layers,
        output_shape: shape,
        activations,
        tensor_names: names,
    })
}

/// candle's message without the backtrace it appends when `RUST_BACKTRACE` is set.
pub fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// Fetches a tensor of an exact shape, naming it fully in the error.
fn get(
    vb: &VarBuilder,
    names: &mut Vec<String>,
    prefix: &str,
    name: &str,
    shape: &[usize],
    init: Init,
) -> Result<Tensor, String> {
    names.push(format!("{prefix}.{name}"));
    if elements(shape).is_none() {
        return Err(format!(
            "tensor '{prefix}.{name}' of shape {shape:?} is too large"
        ));
    }
    vb.get_with_hints(shape, name, init).map_err(|e| {
        format!(
            "tensor '{prefix}.{name}' (expected shape {shape:?}): {}",
            first_line(&e)
        )
    })
}

fn build_one(
    spec: &LayerSpec,
    shape: &[usize],
    vb: &VarBuilder,
    index: usize,
    dtype: InputDType,
    names: &mut Vec<String>,
    prefix: &str,
) -> Result<(Layer, Vec<usize>), String> {
    let rank = shape.len();
    let need_rank = |want: usize, what: &str| -> Result<(), String> {
        if rank == want {
            Ok(())
        } else {
            Err(format!(
                "expects a {what} input of rank {want} per instance, got shape {shape:?}"
            ))
        }
    };
    let zero_bias = Init::Const(0.0);
    Ok(match *spec {
        LayerSpec::Dense {
            units,
            activation,
            use_bias,
            initializer,
            ..
        } => {
            if units == 0 {
                return Err("units must be positive".into());
            }
            let fan_in = shape[rank - 1];
            let init = init_for(initializer.unwrap_or_default(), fan_in, units);
            let w = get(vb, names, prefix, "weight", &[units, fan_in], init)?;
            let b = if use_bias {
                Some(get(vb, names, prefix, "bias", &[units], zero_bias)?)
            } else {
                None
            };
            let mut out = shape.to_vec();
            out[rank - 1] = units;
            (
                Layer::Dense(candle_nn::Linear::new(w, b), activation.map(Act::new)),
                out,
            )
        }
        LayerSpec::Activation {
            activation, alpha, ..
        } => (
            Layer::Activation(Act {
                kind: activation,
                alpha,
            }),
            shape.to_vec(),
        ),
        LayerSpec::Dropout { rate, .. } => {
            if !(0.0..1.0).contains(&rate) {
                return Err(format!("rate must be in [0, 1), got {rate}"));
            }
            (Layer::Dropout(rate as f32), shape.to_vec())
        }
        // `build` checked that the input shape's size fits.
        LayerSpec::Flatten { .. } => (Layer::Flatten, vec![shape.iter().product()]),
        LayerSpec::Reshape {
            shape: ref target, ..
        } => {
            let from: usize = shape.iter().product();
            let Some(to) = elements(target) else {
                return Err(format!("reshape target {target:?} is too large"));
            };
            if from != to || target.is_empty() {
                return Err(format!(
                    "cannot reshape {shape:?} ({from} values) into {target:?} ({to} values)"
                ));
            }
            (Layer::Reshape(target.clone()), target.clone())
        }
        LayerSpec::Conv1d {
            filters,
            kernel_size,
            stride,
            padding,
            dilation,
            activation,
            use_bias,
            initializer,
            ..
        } => {
            need_rank(2, "[channels, length]")?;
            if filters == 0 || kernel_size == 0 || stride == 0 || dilation == 0 {
                return Err("filters, kernel_size, stride and dilation must be positive".into());
            }
            let (c, l) = (shape[0], shape[1]);
            let pad = resolve_padding(padding, kernel_size, stride, dilation)?;
            let padded_l = padded(l, pad).ok_or_else(|| format!("padding {pad} is too large"))?;
            let lout = conv_out(l, kernel_size, stride, pad, dilation)
                .ok_or_else(|| format!("kernel {kernel_size} (dilation {dilation}) is longer than the padded input length {padded_l}"))?;
            // Fans only scale the initial weights: saturating is exact enough.
            let init = init_for(
                initializer.unwrap_or_default(),
                c.saturating_mul(kernel_size),
                filters.saturating_mul(kernel_size),
            );
            let w = get(
                vb,
                names,
                prefix,
                "weight",
                &[filters, c, kernel_size],
                init,
            )?;
            let b = if use_bias {
                Some(get(vb, names, prefix, "bias", &[filters], zero_bias)?)
            } else {
                None
            };
            let cfg = candle_nn::Conv1dConfig {
                padding: pad,
                stride,
                dilation,
                ..Default::default()
            };
            (
                Layer::Conv1d(candle_nn::Conv1d::new(w, b, cfg), activation.map(Act::new)),
                vec![filters, lout],
            )
        }
        LayerSpec::Conv2d {
            filters,
            kernel_size,
            stride,
            padding,
            dilation,
            activation,
            use_bias,
            initializer,
            ..
        } => {
            need_rank(3, "[channels, height, width]")?;
            if filters == 0 || kernel_size == 0 || stride == 0 || dilation == 0 {
                return Err("filters, kernel_size, stride and dilation must be positive".into());
            }
            let (c, h, w_) = (shape[0], shape[1], shape[2]);
            let pad = resolve_padding(padding, kernel_size, stride, dilation)?;
            if padded(h.max(w_), pad).is_none() {
                return Err(format!("padding {pad} is too large"));
            }
            let too_big = || {
                format!("kernel {kernel_size} (dilation {dilation}) is larger than the padded input {}x{}", h + 2 * pad, w_ + 2 * pad)
            };
            let hout = conv_out(h, kernel_size, stride, pad, dilation).ok_or_else(too_big)?;
            let wout = conv_out(w_, kernel_size, stride, pad, dilation).ok_or_else(too_big)?;
            let k2 = kernel_size.saturating_mul(kernel_size);
            let init = init_for(
                initializer.unwrap_or_default(),
                c.saturating_mul(k2),
                filters.saturating_mul(k2),
            );
            let w = get(
                vb,
                names,
                prefix,
                "weight",
                &[filters, c, kernel_size, kernel_size],
                init,
            )?;
            let b = if use_bias {
                Some(get(vb, names, prefix, "bias", &[filters], zero_bias)?)
            } else {
                None
            };
            let cfg = candle_nn::Conv2dConfig {
                padding: pad,
                stride,
                dilation,
                ..Default::default()
            };
            (
                Layer::Conv2d(candle_nn::Conv2d::new(w, b, cfg), activation.map(Act::new)),
                vec![filters, hout, wout],
            )
        }
        LayerSpec::MaxPool2d {
            pool_size, stride, ..
        }
        | LayerSpec::AvgPool2d {
            pool_size, stride, ..
        } => {
            need_rank(3, "[channels, height, width]")?;
            let stride = stride.unwrap_or(pool_size);
            if pool_size == 0 || stride == 0 {
                return Err("pool_size and stride must be positive".into());
            }
            let too_big = || {
                format!(
                    "pool size {pool_size} is larger than the input {}x{}",
                    shape[1], shape[2]
                )
            };
            let hout = conv_out(shape[1], pool_size, stride, 0, 1).ok_or_else(too_big)?;
            let wout = conv_out(shape[2], pool_size, stride, 0, 1).ok_or_else(too_big)?;
            let layer = if matches!(spec, LayerSpec::MaxPool2d { .. }) {
                Layer::MaxPool2d {
                    size: pool_size,
                    stride,
                }
            } else {
                Layer::AvgPool2d {
                    size: pool_size,
                    stride,
                }
            };
            (layer, vec![shape[0], hout, wout])
        }
        LayerSpec::BatchNorm { eps, momentum, .. } => {
            // Channels are the first per-instance dimension, as in PyTorch's BatchNorm1d/2d.
            let c = shape[0];
            let running_mean = get(vb, names, prefix, "running_mean", &[c], Init::Const(0.0))?;
            let running_var = get(vb, names, prefix, "running_var", &[c], Init::Const(1.0))?;
            let weight = get(vb, names, prefix, "weight", &[c], Init::Const(1.0))?;
            let bias = get(vb, names, prefix, "bias", &[c], Init::Const(0.0))?;
            let bn = candle_nn::BatchNorm::new(c, running_mean, running_var, weight, bias, eps)
                .map_err(|e| e.to_string())?;
            let _ = momentum; // used by training to update the running statistics
            (Layer::BatchNorm(bn), shape.to_vec())
        }
        LayerSpec::LayerNorm { eps, .. } => {
            let n = shape[rank - 1];
            let weight = get(vb, names, prefix, "weight", &[n], Init::Const(1.0))?;
            let bias = get(vb, names, prefix, "bias", &[n], Init::Const(0.0))?;
            (Layer::LayerNorm { weight, bias, eps }, shape.to_vec())
        }
        LayerSpec::Embedding {
            input_dim,
            output_dim,
            ..
        } => {
            if index != 0 || dtype != InputDType::Int64 {
                return Err(
                    "an embedding must be the first layer of a model whose input dtype is int64"
                        .into(),
                );
            }
            need_rank(1, "[sequence length]")?;
            let w = get(
                vb,
                names,
                prefix,
                "weight",
                &[input_dim, output_dim],
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?;
            (
                Layer::Embedding(candle_nn::Embedding::new(w, output_dim)),
                vec![shape[0], output_dim],
            )
        }
        LayerSpec::Lstm {
            units,
            return_sequences,
            ..
        }
        | LayerSpec::Gru {
            units,
            return_sequences,
            ..
        } => {
            need_rank(2, "[steps, features]")?;
            let (steps, feat) = (shape[0], shape[1]);
            let gates: usize = if matches!(spec, LayerSpec::Lstm { .. }) {
                4
            } else {
                3
            };
            let k = 1.0 / (units as f64).sqrt();
            let u = Init::Uniform { lo: -k, up: k };
            let rows = gates
                .checked_mul(units)
                .ok_or_else(|| format!("units {units} is too large"))?;
            for (n, s) in [
                ("weight_ih_l0", vec![rows, feat]),
                ("weight_hh_l0", vec![rows, units]),
                ("bias_ih_l0", vec![rows]),
                ("bias_hh_l0", vec![rows]),
            ] {
                // Fetch once here so a missing or misshapen tensor is named precisely.
                get(vb, names, prefix, n, &s, u)?;
            }
            let out = if return_sequences {
                vec![steps, units]
            } else {
                vec![units]
            };
            let layer = if gates == 4 {
                let cfg = candle_nn::LSTMConfig {
                    w_ih_init: u,
                    w_hh_init: u,
                    b_ih_init: Some(u),
                    b_hh_init: Some(u),
                    ..Default::default()
                };
                Layer::Lstm(
                    candle_nn::lstm(feat, units, cfg, vb.clone()).map_err(|e| e.to_string())?,
                    return_sequences,
                )
            } else {
                let cfg = candle_nn::GRUConfig {
                    w_ih_init: u,
                    w_hh_init: u,
                    b_ih_init: Some(u),
                    b_hh_init: Some(u),
                };
                Layer::Gru(
                    candle_nn::gru(feat, units, cfg, vb.clone()).map_err(|e| e.to_string())?,
                    return_sequences,
                )
            };
            (layer, out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn built(
        json: &str,
        input: &[usize],
        dtype: InputDType,
    ) -> Result<(Built, VarMap), ModelError> {
        let specs: Vec<LayerSpec> = serde_json::from_str(json).unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        build(&specs, input, dtype, &vb).map(|b| (b, vm))
    }

    fn run(b: &Built, input: &Tensor) -> Tensor {
        b.layers
            .iter()
            .fold(input.clone(), |x, l| l.forward_t(&x, false).unwrap())
    }

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

    #[test]
    fn dense_stack_shapes_and_names() {
        let (b, vm) = built(
            r#"[{"type":"dense","units":8,"activation":"relu","name":"fc1"},{"type":"dropout","rate":0.2},
                {"type":"dense","units":3},{"type":"activation","activation":"softmax"}]"#,
            &[5],
            InputDType::Float32,
        )
        .unwrap();
        assert_eq!(b.output_shape, vec![3]);
        assert_eq!(
            b.tensor_names,
            vec!["fc1.weight", "fc1.bias", "2.weight", "2.bias"]
        );
        assert_eq!(vm.all_vars().len(), 4);
        let y = run(&b, &Tensor::ones((2, 5), DType::F32, &Device::Cpu).unwrap());
        assert_eq!(y.dims(), &[2, 3]);
        let sums: Vec<f32> = y.sum(1).unwrap().to_vec1().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }

    #[test]
    fn conv_pool_flatten_shapes() {
        let (b, _) = built(
            r#"[{"type":"conv2d","filters":4,"kernel_size":3,"padding":"same","activation":"relu"},
                {"type":"batch_norm"},{"type":"max_pool2d","pool_size":2},
                {"type":"conv2d","filters":6,"kernel_size":3},{"type":"avg_pool2d","pool_size":2,"stride":1},
                {"type":"flatten"},{"type":"layer_norm"},{"type":"dense","units":10}]"#,
            &[1, 8, 8],
            InputDType::Float32,
        )
        .unwrap();
        // 8x8 same → 8x8 → pool 4x4 → conv3 valid 2x2 → avg(2, stride 1) 1x1 → flatten 6.
        assert_eq!(b.output_shape, vec![10]);
        let y = run(
            &b,
            &Tensor::ones((3, 1, 8, 8), DType::F32, &Device::Cpu).unwrap(),
        );
        assert_eq!(y.dims(), &[3, 10]);
        let (b, _) = built(
            r#"[{"type":"conv1d","filters":2,"kernel_size":3,"stride":2}]"#,
            &[3, 9],
            InputDType::Float32,
        )
        .unwrap();
        assert_eq!(b.output_shape, vec![2, 4]);
    }

    #[test]
    fn recurrent_and_embedding_shapes() {
        let (b, _) = built(
            r#"[{"type":"embedding","input_dim":20,"output_dim":4},{"type":"lstm","units":5,"return_sequences":true},
                {"type":"gru","units":3}]"#,
            &[7],
            InputDType::Int64,
        )
        .unwrap();
        assert_eq!(b.output_shape, vec![3]);
        let ids = Tensor::new(&[[1f32, 2., 3., 4., 5., 6., 19.]], &Device::Cpu).unwrap();
        assert_eq!(run(&b, &ids).dims(), &[1, 3]);
        let (b, _) = built(
            r#"[{"type":"lstm","units":5},{"type":"reshape","shape":[5,1]}]"#,
            &[6, 2],
            InputDType::Float32,
        )
        .unwrap();
        assert_eq!(b.output_shape, vec![5, 1]);
    }

    #[test]
    fn shape_errors_name_the_layer() {
        let err = built(
            r#"[{"type":"dense","units":4},{"type":"conv2d","filters":2,"kernel_size":3}]"#,
            &[5],
            InputDType::Float32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("layer 1 (conv2d '1')") && err.contains("rank 3"),
            "{err}"
        );
        let err = built(
            r#"[{"type":"conv2d","filters":2,"kernel_size":9}]"#,
            &[1, 4, 4],
            InputDType::Float32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("larger than the padded input"), "{err}");
        let err = built(
            r#"[{"type":"reshape","shape":[3,3]}]"#,
            &[10],
            InputDType::Float32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("cannot reshape"), "{err}");
        let err = built(r#"[{"type":"dense","units":4}]"#, &[5], InputDType::Int64)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("embedding"), "{err}");
    }

    #[test]
    fn misshapen_tensor_is_named() {
        let mut ts = std::collections::HashMap::new();
        ts.insert(
            "fc.weight".to_string(),
            Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap(),
        );
        ts.insert(
            "fc.bias".to_string(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
        let specs: Vec<LayerSpec> =
            serde_json::from_str(r#"[{"type":"dense","units":3,"name":"fc"}]"#).unwrap();
        let err = build(&specs, &[5], InputDType::Float32, &vb)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("fc.weight") && err.contains("[3, 5]"), "{err}");
    }
}
