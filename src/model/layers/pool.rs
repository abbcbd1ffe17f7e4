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
