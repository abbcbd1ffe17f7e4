//! Normalization: batch norm (running statistics per channel) and layer norm (over the last
//! dimension).

use candle_core::Tensor;
use candle_nn::Init;

use super::{Ctx, Layer};

pub(super) fn build_batch_norm(
    ctx: &mut Ctx,
    eps: f64,
    momentum: f64,
) -> Result<(Layer, Vec<usize>), String> {
    // Channels are the first per-instance dimension, as in PyTorch's BatchNorm1d/2d.
    let c = ctx.shape[0];
    let running_mean = ctx.get("running_mean", &[c], Init::Const(0.0))?;
    let running_var = ctx.get("running_var", &[c], Init::Const(1.0))?;
    let weight = ctx.get("weight", &[c], Init::Const(1.0))?;
    let bias = ctx.get("bias", &[c], Init::Const(0.0))?;
    let bn = candle_nn::BatchNorm::new(c, running_mean, running_var, weight, bias, eps)
        .map_err(|e| e.to_string())?;
    let _ = momentum; // used by training to update the running statistics
    Ok((Layer::BatchNorm(bn), ctx.shape.to_vec()))
}

pub(super) fn build_layer_norm(ctx: &mut Ctx, eps: f64) -> Result<(Layer, Vec<usize>), String> {
    let n = ctx.shape[ctx.shape.len() - 1];
    let weight = ctx.get("weight", &[n], Init::Const(1.0))?;
    let bias = ctx.get("bias", &[n], Init::Const(0.0))?;
    Ok((Layer::LayerNorm { weight, bias, eps }, ctx.shape.to_vec()))
}

/// Composite ops, not the fused `ops::layer_norm`, which drops gradients (docs/candle.md).
pub(super) fn layer_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    candle_nn::ops::layer_norm_slow(xs, weight, bias, eps as f32)
}
