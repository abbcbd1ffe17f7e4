//! 2-D pooling (max, average) over `[channels, height, width]`.

use super::conv::conv_out;
use super::{Ctx, Layer};

#[derive(Debug, Clone, Copy)]
pub(super) enum Pool {
    Max,
    Avg,
}

pub(super) fn build(
    ctx: &Ctx,
    pool: Pool,
    pool_size: usize,
    stride: Option<usize>,
) -> Result<(Layer, Vec<usize>), String> {
    ctx.need_rank(3, "[channels, height, width]")?;
    let shape = ctx.shape;
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
    let layer = match pool {
        Pool::Max => Layer::MaxPool2d {
            size: pool_size,
            stride,
        },
        Pool::Avg => Layer::AvgPool2d {
            size: pool_size,
            stride,
        },
    };
    Ok((layer, vec![shape[0], hout, wout]))
}

/// Pooling written with ops whose backward pass is exact, for explanations: the input's
/// `size²` window offsets picked with `index_select` (each `[batch, channels, hout, wout]`)
/// and combined with `maximum` or summed. candle's own `max_pool2d` backward scales the
/// gradient by the share of maxima in the window (`1/size²` for one maximum) and refuses
/// `stride != size`; its `avg_pool2d` refuses the latter too.
pub(super) fn differentiable(
    xs: &candle_core::Tensor,
    pool: Pool,
    size: usize,
    stride: usize,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::Tensor;
    let (_, _, h, w) = xs.dims4()?;
    let (hout, wout) = ((h - size) / stride + 1, (w - size) / stride + 1);
    let device = xs.device();
    let picks = |offset: usize, n: usize| {
        let idx: Vec<u32> = (0..n).map(|o| (offset + o * stride) as u32).collect();
        Tensor::from_vec(idx, n, device)
    };
    let mut out: Option<Tensor> = None;
    for di in 0..size {
        let rows = xs.index_select(&picks(di, hout)?, 2)?;
        for dj in 0..size {
            let window = rows.index_select(&picks(dj, wout)?, 3)?;
            out = Some(match (out, pool) {
                (None, _) => window,
                (Some(o), Pool::Max) => o.maximum(&window)?,
                (Some(o), Pool::Avg) => (o + window)?,
            });
        }
    }
    let out = out.expect("a pool window has at least one value");
    match pool {
        Pool::Max => Ok(out),
        Pool::Avg => out.affine(1.0 / (size * size) as f64, 0.0),
    }
}
