//! Layers that only change the per-instance shape: flatten, reshape.

use super::{elements, Layer};

/// `build` checked that the input shape's size fits.
pub(super) fn build_flatten(shape: &[usize]) -> (Layer, Vec<usize>) {
    (Layer::Flatten, vec![shape.iter().product()])
}

pub(super) fn build_reshape(
    shape: &[usize],
    target: &[usize],
) -> Result<(Layer, Vec<usize>), String> {
    let from: usize = shape.iter().product();
    let Some(to) = elements(target) else {
        return Err(format!("reshape target {target:?} is too large"));
    };
    if from != to || target.is_empty() {
        return Err(format!(
            "cannot reshape {shape:?} ({from} values) into {target:?} ({to} values)"
        ));
    }
    Ok((Layer::Reshape(target.to_vec()), target.to_vec()))
}
