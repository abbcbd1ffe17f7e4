//! Layer specs → candle-nn modules, with every shape checked when the model is built.
//!
//! Building walks the layer list with the current per-instance shape (no batch dimension),
//! checks each layer against it and asks the `VarBuilder` for tensors of the exact expected
//! shapes, so a misshapen or missing tensor is reported with its layer and name at load time.
//! The same code builds trainable layers over a `VarMap` (training) and frozen ones over
//! loaded safetensors (serving). Forward passes run only on worker threads.
//!
//! This module holds the walk ([`build`]), the built [`Layer`] and its forward pass; each
//! family of layer kinds builds in a file of its own: `dense` (with its training node),
//! `activation` (activations, dropout), `shape` (flatten, reshape), `conv`, `pool`, `norm`
//! (batch and layer norm), `embedding` and `recurrent` (LSTM, GRU).

mod activation;
mod conv;
mod dense;
mod embedding;
mod norm;
mod pool;
mod recurrent;
mod shape;

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::model::format::{Activation, Initializer, InputDType, LayerSpec};
use crate::model::ModelError;

pub use activation::Act;
pub use dense::ParamGrads;

use activation::apply as apply_act;

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

impl Layer {
    /// `xs` has the batch dimension first. `train` turns on dropout and batch statistics.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        use candle_core::{Module, ModuleT};
        match self {
            Layer::Dense(l, act) => dense::forward(l, act, xs, train, None),
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
            Layer::LayerNorm { weight, bias, eps } => norm::layer_norm(xs, weight, bias, *eps),
            Layer::Embedding(e) => embedding::forward(e, xs),
            Layer::Lstm(l, full) => recurrent::forward(l, xs, *full, |s| s.h()),
            Layer::Gru(g, full) => recurrent::forward(g, xs, *full, |s| s.h()),
        }
    }

    /// [`Layer::forward_t`] in inference mode (no dropout, running statistics) with every
    /// op differentiable: the fused softmax kernel has no backward pass (docs/candle.md),
    /// so a softmax takes the composite op, and pooling takes ops whose backward pass is
    /// exact (see `pool::differentiable`). Explanations take the input's gradient so.
    pub fn forward_differentiable(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        let softmax = |a: &Option<Act>| matches!(a, Some(a) if a.kind == Activation::Softmax);
        let composite = |t: Tensor| candle_nn::ops::softmax(&t, candle_core::D::Minus1);
        match self {
            Layer::Activation(a) if a.kind == Activation::Softmax => composite(xs.clone()),
            Layer::Dense(l, act) if softmax(act) => composite(l.forward(xs)?),
            Layer::Conv1d(c, act) if softmax(act) => composite(c.forward(xs)?),
            Layer::Conv2d(c, act) if softmax(act) => composite(c.forward(xs)?),
            Layer::MaxPool2d { size, stride } => {
                pool::differentiable(xs, pool::Pool::Max, *size, *stride)
            }
            Layer::AvgPool2d { size, stride } => {
                pool::differentiable(xs, pool::Pool::Avg, *size, *stride)
            }
            Layer::Dense(..)
            | Layer::Activation(_)
            | Layer::Dropout(_)
            | Layer::Flatten
            | Layer::Reshape(_)
            | Layer::Conv1d(..)
            | Layer::Conv2d(..)
            | Layer::BatchNorm(_)
            | Layer::LayerNorm { .. }
            | Layer::Embedding(_)
            | Layer::Lstm(..)
            | Layer::Gru(..) => self.forward_t(xs, false),
        }
    }

    /// [`Layer::forward_t`] in training mode, with the gradients of dense layers' weights and
    /// biases going to `sink` during `backward()` (see [`ParamGrads`]): call
    /// `sink.drain_into(&mut grads)` after every `backward()` of a graph built so.
    pub fn forward_train(
        &self,
        xs: &Tensor,
        sink: &std::sync::Arc<ParamGrads>,
    ) -> candle_core::Result<Tensor> {
        if let Layer::Dense(l, act) = self {
            return dense::forward(l, act, xs, true, Some(sink));
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

/// The number of values in a tensor of `shape`, if it fits in a `usize`.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
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
        let mut ctx = Ctx {
            shape: &shape,
            vb: &lvb,
            names: &mut names,
            prefix: &prefix,
            index,
            dtype,
        };
        let (layer, out) = build_one(spec, &mut ctx).map_err(err)?;
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

/// What building one layer needs: the per-instance input shape, where the layer's tensors
/// come from, and the list of tensor names read so far.
struct Ctx<'a, 'v> {
    shape: &'a [usize],
    vb: &'a VarBuilder<'v>,
    names: &'a mut Vec<String>,
    prefix: &'a str,
    index: usize,
    dtype: InputDType,
}

impl Ctx<'_, '_> {
    fn need_rank(&self, want: usize, what: &str) -> Result<(), String> {
        if self.shape.len() == want {
            Ok(())
        } else {
            Err(format!(
                "expects a {what} input of rank {want} per instance, got shape {:?}",
                self.shape
            ))
        }
    }

    /// Fetches a tensor of an exact shape, naming it fully in the error.
    fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor, String> {
        let prefix = self.prefix;
        self.names.push(format!("{prefix}.{name}"));
        if elements(shape).is_none() {
            return Err(format!(
                "tensor '{prefix}.{name}' of shape {shape:?} is too large"
            ));
        }
        self.vb.get_with_hints(shape, name, init).map_err(|e| {
            format!(
                "tensor '{prefix}.{name}' (expected shape {shape:?}): {}",
                first_line(&e)
            )
        })
    }
}

/// One layer: each family's module checks its input shape and builds it.
fn build_one(spec: &LayerSpec, ctx: &mut Ctx) -> Result<(Layer, Vec<usize>), String> {
    match *spec {
        LayerSpec::Dense {
            units,
            activation,
            use_bias,
            initializer,
            ..
        } => dense::build(ctx, units, activation, use_bias, initializer),
        LayerSpec::Activation {
            activation, alpha, ..
        } => Ok(activation::build(ctx.shape, activation, alpha)),
        LayerSpec::Dropout { rate, .. } => activation::build_dropout(ctx.shape, rate),
        LayerSpec::Flatten { .. } => Ok(shape::build_flatten(ctx.shape)),
        LayerSpec::Reshape { ref shape, .. } => shape::build_reshape(ctx.shape, shape),
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
        } => conv::build_1d(
            ctx,
            &conv::Conv {
                filters,
                kernel_size,
                stride,
                padding,
                dilation,
                activation,
                use_bias,
                initializer,
            },
        ),
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
        } => conv::build_2d(
            ctx,
            &conv::Conv {
                filters,
                kernel_size,
                stride,
                padding,
                dilation,
                activation,
                use_bias,
                initializer,
            },
        ),
        LayerSpec::MaxPool2d {
            pool_size, stride, ..
        } => pool::build(ctx, pool::Pool::Max, pool_size, stride),
        LayerSpec::AvgPool2d {
            pool_size, stride, ..
        } => pool::build(ctx, pool::Pool::Avg, pool_size, stride),
        LayerSpec::BatchNorm { eps, momentum, .. } => norm::build_batch_norm(ctx, eps, momentum),
        LayerSpec::LayerNorm { eps, .. } => norm::build_layer_norm(ctx, eps),
        LayerSpec::Embedding {
            input_dim,
            output_dim,
            ..
        } => embedding::build(ctx, input_dim, output_dim),
        LayerSpec::Lstm {
            units,
            return_sequences,
            ..
        } => recurrent::build(ctx, recurrent::Cell::Lstm, units, return_sequences),
        LayerSpec::Gru {
            units,
            return_sequences,
            ..
        } => recurrent::build(ctx, recurrent::Cell::Gru, units, return_sequences),
    }
}

/// What the tests of every family use.
#[cfg(test)]
mod testing {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    pub(super) fn built(
        json: &str,
        input: &[usize],
        dtype: InputDType,
    ) -> Result<(Built, VarMap), ModelError> {
        let specs: Vec<LayerSpec> = serde_json::from_str(json).unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        build(&specs, input, dtype, &vb).map(|b| (b, vm))
    }

    pub(super) fn run(b: &Built, input: &Tensor) -> Tensor {
        b.layers
            .iter()
            .fold(input.clone(), |x, l| l.forward_t(&x, false).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{built, run};
    use super::*;
    use candle_core::{DType, Device};

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
