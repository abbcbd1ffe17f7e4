//! Layers that act on each value alone: an activation function, dropout.

use candle_core::{Tensor, D};

use super::Layer;
use crate::model::format::Activation;

/// An activation with its parameter (slope of leaky_relu, alpha of elu).
#[derive(Debug, Clone, Copy)]
pub struct Act {
    pub kind: Activation,
    pub alpha: f64,
}

impl Act {
    pub(super) fn new(kind: Activation) -> Self {
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
            // The fused kernel has no backward (docs/candle.md): training takes the composite op.
            Activation::Softmax if train => candle_nn::ops::softmax(xs, D::Minus1),
            Activation::Softmax => candle_nn::ops::softmax_last_dim(xs),
        }
    }
}

/// The activation a layer spec names, applied after the layer's own computation.
pub(super) fn apply(xs: Tensor, act: &Option<Act>, train: bool) -> candle_core::Result<Tensor> {
    match act {
        Some(a) => a.forward_t(&xs, train),
        None => Ok(xs),
    }
}

/// An `activation` layer: the shape goes through unchanged.
pub(super) fn build(shape: &[usize], kind: Activation, alpha: f64) -> (Layer, Vec<usize>) {
    (Layer::Activation(Act { kind, alpha }), shape.to_vec())
}

/// A `dropout` layer: active only in training.
pub(super) fn build_dropout(shape: &[usize], rate: f64) -> Result<(Layer, Vec<usize>), String> {
    if !(0.0..1.0).contains(&rate) {
        return Err(format!("rate must be in [0, 1), got {rate}"));
    }
    Ok((Layer::Dropout(rate as f32), shape.to_vec()))
}
