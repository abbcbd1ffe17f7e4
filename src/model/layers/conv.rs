//! Convolutions over `[channels, length]` (conv1d) and `[channels, height, width]` (conv2d),
//! and the output-size arithmetic that pooling shares.

use candle_nn::Init;

use super::{init_for, Act, Ctx, Layer};
use crate::model::format::{Activation, Initializer, Padding, PaddingMode};

/// A conv1d or conv2d spec's fields.
pub(super) struct Conv {
    pub filters: usize,
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: Padding,
    pub dilation: usize,
    pub activation: Option<Activation>,
    pub use_bias: bool,
    pub initializer: Option<Initializer>,
}

/// Output length of a convolution or pooling along one axis, if positive (`None` too when
/// the sizes overflow: a spec is hostile input).
pub(super) fn conv_out(
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

impl Conv {
    fn check_positive(&self) -> Result<(), String> {
        if self.filters == 0 || self.kernel_size == 0 || self.stride == 0 || self.dilation == 0 {
            return Err("filters, kernel_size, stride and dilation must be positive".into());
        }
        Ok(())
    }

    /// The weight (`weight_shape`, initialized for these fans in and out) and the bias, if
    /// the layer has one.
    fn params(
        &self,
        ctx: &mut Ctx,
        weight_shape: &[usize],
        fans: (usize, usize),
    ) -> Result<(candle_core::Tensor, Option<candle_core::Tensor>), String> {
        let init = init_for(self.initializer.unwrap_or_default(), fans.0, fans.1);
        let w = ctx.get("weight", weight_shape, init)?;
        let b = if self.use_bias {
            Some(ctx.get("bias", &[self.filters], Init::Const(0.0))?)
        } else {
            None
        };
        Ok((w, b))
    }
}

pub(super) fn build_1d(ctx: &mut Ctx, spec: &Conv) -> Result<(Layer, Vec<usize>), String> {
    ctx.need_rank(2, "[channels, length]")?;
    spec.check_positive()?;
    let Conv {
        filters,
        kernel_size,
        stride,
        dilation,
        ..
    } = *spec;
    let (c, l) = (ctx.shape[0], ctx.shape[1]);
    let pad = resolve_padding(spec.padding, kernel_size, stride, dilation)?;
    let padded_l = padded(l, pad).ok_or_else(|| format!("padding {pad} is too large"))?;
    let lout = conv_out(l, kernel_size, stride, pad, dilation)
        .ok_or_else(|| format!("kernel {kernel_size} (dilation {dilation}) is longer than the padded input length {padded_l}"))?;
    // Fans only scale the initial weights: saturating is exact enough.
    let fans = (
        c.saturating_mul(kernel_size),
        filters.saturating_mul(kernel_size),
    );
    let (w, b) = spec.params(ctx, &[filters, c, kernel_size], fans)?;
    let cfg = candle_nn::Conv1dConfig {
        padding: pad,
        stride,
        dilation,
        ..Default::default()
    };
    Ok((
        Layer::Conv1d(
            candle_nn::Conv1d::new(w, b, cfg),
            spec.activation.map(Act::new),
        ),
        vec![filters, lout],
    ))
}

pub(super) fn build_2d(ctx: &mut Ctx, spec: &Conv) -> Result<(Layer, Vec<usize>), String> {
    ctx.need_rank(3, "[channels, height, width]")?;
    spec.check_positive()?;
    let Conv {
        filters,
        kernel_size,
        stride,
        dilation,
        ..
    } = *spec;
    let (c, h, w_) = (ctx.shape[0], ctx.shape[1], ctx.shape[2]);
    let pad = resolve_padding(spec.padding, kernel_size, stride, dilation)?;
    if padded(h.max(w_), pad).is_none() {
        return Err(format!("padding {pad} is too large"));
    }
    let too_big = || {
        format!(
            "kernel {kernel_size} (dilation {dilation}) is larger than the padded input {}x{}",
            h + 2 * pad,
            w_ + 2 * pad
        )
    };
    let hout = conv_out(h, kernel_size, stride, pad, dilation).ok_or_else(too_big)?;
    let wout = conv_out(w_, kernel_size, stride, pad, dilation).ok_or_else(too_big)?;
    let k2 = kernel_size.saturating_mul(kernel_size);
    let fans = (c.saturating_mul(k2), filters.saturating_mul(k2));
    let (w, b) = spec.params(ctx, &[filters, c, kernel_size, kernel_size], fans)?;
    let cfg = candle_nn::Conv2dConfig {
        padding: pad,
        stride,
        dilation,
        ..Default::default()
    };
    Ok((
        Layer::Conv2d(
            candle_nn::Conv2d::new(w, b, cfg),
            spec.activation.map(Act::new),
        ),
        vec![filters, hout, wout],
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::built;
    use crate::model::format::InputDType;

    #[test]
    fn conv1d_output_length() {
        let (b, _) = built(
            r#"[{"type":"conv1d","filters":2,"kernel_size":3,"stride":2}]"#,
            &[3, 9],
            InputDType::Float32,
        )
        .unwrap();
        assert_eq!(b.output_shape, vec![2, 4]);
    }

    #[test]
    fn kernel_larger_than_the_input_is_named() {
        let err = built(
            r#"[{"type":"conv2d","filters":2,"kernel_size":9}]"#,
            &[1, 4, 4],
            InputDType::Float32,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("larger than the padded input"), "{err}");
    }
}
