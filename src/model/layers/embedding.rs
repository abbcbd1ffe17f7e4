//! Embeddings: int64 token ids `[sequence length]` → `[sequence length, output_dim]`.

use candle_core::{DType, Module, Tensor};
use candle_nn::Init;

use super::{Ctx, Layer};
use crate::model::format::InputDType;

pub(super) fn build(
    ctx: &mut Ctx,
    input_dim: usize,
    output_dim: usize,
) -> Result<(Layer, Vec<usize>), String> {
    if ctx.index != 0 || ctx.dtype != InputDType::Int64 {
        return Err(
            "an embedding must be the first layer of a model whose input dtype is int64".into(),
        );
    }
    ctx.need_rank(1, "[sequence length]")?;
    let w = ctx.get(
        "weight",
        &[input_dim, output_dim],
        Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )?;
    Ok((
        Layer::Embedding(candle_nn::Embedding::new(w, output_dim)),
        vec![ctx.shape[0], output_dim],
    ))
}

/// The ids arrive as f32 (the batch tensor's dtype) and are looked up as u32.
pub(super) fn forward(e: &candle_nn::Embedding, xs: &Tensor) -> candle_core::Result<Tensor> {
    e.forward(&xs.to_dtype(DType::U32)?)
}
