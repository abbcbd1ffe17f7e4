//! Recurrent layers (LSTM, GRU) over `[steps, features]`, with PyTorch's tensor names and
//! initialization.

use candle_core::Tensor;
use candle_nn::rnn::RNN;
use candle_nn::Init;

use super::{Ctx, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cell {
    Lstm,
    Gru,
}

pub(super) fn build(
    ctx: &mut Ctx,
    cell: Cell,
    units: usize,
    return_sequences: bool,
) -> Result<(Layer, Vec<usize>), String> {
    ctx.need_rank(2, "[steps, features]")?;
    let (steps, feat) = (ctx.shape[0], ctx.shape[1]);
    let gates: usize = match cell {
        Cell::Lstm => 4,
        Cell::Gru => 3,
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
        ctx.get(n, &s, u)?;
    }
    let out = if return_sequences {
        vec![steps, units]
    } else {
        vec![units]
    };
    let layer = match cell {
        Cell::Lstm => {
            let cfg = candle_nn::LSTMConfig {
                w_ih_init: u,
                w_hh_init: u,
                b_ih_init: Some(u),
                b_hh_init: Some(u),
                ..Default::default()
            };
            Layer::Lstm(
                candle_nn::lstm(feat, units, cfg, ctx.vb.clone()).map_err(|e| e.to_string())?,
                return_sequences,
            )
        }
        Cell::Gru => {
            let cfg = candle_nn::GRUConfig {
                w_ih_init: u,
                w_hh_init: u,
                b_ih_init: Some(u),
                b_hh_init: Some(u),
            };
            Layer::Gru(
                candle_nn::gru(feat, units, cfg, ctx.vb.clone()).map_err(|e| e.to_string())?,
                return_sequences,
            )
        }
    };
    Ok((layer, out))
}

/// Runs the cell over the steps: every step's hidden state (`full`) or the last one (`h`
/// reads a state's hidden tensor: candle's `RNN` trait has no accessor for it).
pub(super) fn forward<R: RNN>(
    rnn: &R,
    xs: &Tensor,
    full: bool,
    h: impl Fn(&R::State) -> &Tensor,
) -> candle_core::Result<Tensor> {
    let states = rnn.seq(&xs.contiguous()?)?;
    if full {
        rnn.states_to_tensor(&states)
    } else {
        Ok(h(states.last().expect("sequence length checked > 0 at load")).clone())
    }
}
