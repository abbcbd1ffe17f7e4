//! A loaded model: its spec, its built layers and its device.
//!
//! `Model` is immutable once built and shared as `Arc<Model>` by a version's worker threads,
//! which are the only callers of `forward` (async code never runs the model).

pub mod error;
pub mod explain;
pub mod format;
pub mod layers;
pub mod signature;

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use format::{Activation, LayerSpec, ModelSpec, Task};
use layers::{Built, Layer};
use signature::ScoreKind;

pub use error::ModelError;
pub use signature::{Scores, Signature};

/// A model ready to run.
#[derive(Debug)]
pub struct Model {
    spec: ModelSpec,
    layers: Vec<Layer>,
    device: Device,
    output_shape: Vec<usize>,
    /// Tensors present in the weights file that no layer reads (reported, not fatal).
    unused_tensors: Vec<String>,
    /// A classifier's class names: the spec's, or "0", "1", … when it has none. Made once
    /// here so that no request builds them. Empty for regression.
    labels: Vec<String>,
    /// How a classifier's output row becomes scores.
    score_kind: ScoreKind,
}

impl Model {
    /// A model of `spec` with freshly initialized weights, for unit tests that read only what
    /// the spec says (signature, labels, scores).
    #[cfg(test)]
    pub(crate) fn of_spec(spec: serde_json::Value) -> Model {
        let spec: ModelSpec = serde_json::from_value(spec).expect("a valid model spec");
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Model::check_and_build(&spec, &vb).expect("the spec builds");
        let tensors = vm
            .data()
            .lock()
            .expect("the var map lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        Model::from_tensors(spec, tensors, &Device::Cpu).expect("the model loads")
    }

    /// Builds a model from a spec and named tensors (PyTorch names), checking every shape.
    pub fn from_tensors(
        spec: ModelSpec,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Model, ModelError> {
        let present: Vec<String> = tensors.keys().cloned().collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let built = Self::check_and_build(&spec, &vb)?;
        let used: HashSet<&str> = built.tensor_names.iter().map(String::as_str).collect();
        let mut unused_tensors: Vec<String> = present
            .into_iter()
            .filter(|n| !used.contains(n.as_str()) && !n.ends_with(".num_batches_tracked"))
            .collect();
        unused_tensors.sort();
        let output_len: usize = built.output_shape.iter().product();
        let labels = match spec.task {
            Task::Classification if spec.labels.is_empty() => {
                // One unit is a binary classifier: two classes.
                (0..output_len.max(2)).map(|i| i.to_string()).collect()
            }
            Task::Classification => spec.labels.clone(),
            Task::Regression => Vec::new(),
        };
        let score_kind = if outputs_probabilities(&spec) {
            ScoreKind::Probabilities
        } else {
            ScoreKind::Logits
        };
        Ok(Model {
            spec,
            layers: built.layers,
            device: device.clone(),
            output_shape: built.output_shape,
            unused_tensors,
            labels,
            score_kind,
        })
    }

    /// Checks the spec's own consistency (labels, features, preprocessing width, output
    /// width) and builds its layers over `vb`. Training uses this with a `VarMap`.
    pub fn check_and_build(spec: &ModelSpec, vb: &VarBuilder) -> Result<Built, ModelError> {
        let built = layers::build(&spec.layers, &spec.input.shape, spec.input.dtype, vb)?;
        let row_len = spec.row_len();
        let invalid = |m: String| Err(ModelError::Invalid(m));
        if let Some(features) = &spec.input.features {
            let mut seen = HashSet::new();
            if let Some(dup) = features.iter().find(|f| !seen.insert(f.as_str())) {
                return invalid(format!(
                    "feature name '{dup}' appears twice in input.features"
                ));
            }
            match &spec.preprocessing {
                Some(p) => {
                    let names: Vec<&str> = p.features.iter().map(|f| f.name()).collect();
                    if names != features.iter().map(String::as_str).collect::<Vec<_>>() {
                        return invalid(format!(
                            "preprocessing features {names:?} differ from input.features {features:?}"
                        ));
                    }
                }
                None if features.len() != row_len => {
                    return invalid(format!(
                        "input.features names {} features but the input shape {:?} holds {row_len} values",
                        features.len(),
                        spec.input.shape
                    ))
                }
                None => {}
            }
        }
        if let Some(p) = &spec.preprocessing {
            if spec.input.features.is_none() {
                return invalid(
                    "preprocessing needs input.features (the raw feature names)".into(),
                );
            }
            if p.width() != row_len {
                return invalid(format!(
                    "preprocessing produces {} values per instance but the input shape {:?} holds {row_len}",
                    p.width(),
                    spec.input.shape
                ));
            }
        }
        let out_len: usize = built.output_shape.iter().product();
        match spec.task {
            Task::Classification => {
                if built.output_shape.len() != 1 {
                    return invalid(format!(
                        "a classifier must output one vector per instance, got shape {:?}",
                        built.output_shape
                    ));
                }
                let n = spec.labels.len();
                let binary_ok = out_len == 1 && n == 2;
                if n != 0 && n != out_len && !binary_ok {
                    return invalid(format!("{n} labels but the last layer has {out_len} units"));
                }
            }
            Task::Regression => {
                if !spec.labels.is_empty() {
                    return invalid("a regression model has no labels".into());
                }
            }
        }
        Ok(built)
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Per-instance output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// Values per instance in the output.
    pub fn output_len(&self) -> usize {
        self.output_shape.iter().product()
    }

    pub fn unused_tensors(&self) -> &[String] {
        &self.unused_tensors
    }

    pub fn task(&self) -> Task {
        self.spec.task
    }

    /// What a request must send, read from the spec (input shape and dtype, feature names,
    /// preprocessing, the embedding's id range).
    pub fn signature(&self) -> Signature<'_> {
        Signature::of(&self.spec)
    }

    /// A classifier's class names in output order: the spec's labels, or "0", "1", … when
    /// it has none (two for a single-unit binary classifier). Empty for regression.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The per-class scores of one output row of a classifier, in the order of
    /// [`Self::labels`]: the output as is when the last layer is a softmax or a sigmoid,
    /// otherwise a softmax over the logits (a sigmoid for a single unit). Computed as read.
    pub fn scores<'r>(&self, row: &'r [f32]) -> Scores<'r> {
        debug_assert_eq!(row.len(), self.output_len());
        Scores::new(row, self.score_kind)
    }

    /// True when the last layer already produces probabilities (softmax or sigmoid), so
    /// scores are the output as is; otherwise they are a softmax over the logits.
    pub fn outputs_probabilities(&self) -> bool {
        self.score_kind == ScoreKind::Probabilities
    }

    /// Maps a regression output back to the target's original units (training scaled the
    /// target); identity for classifiers and for targets that were not scaled.
    pub fn untransform(&self, values: &mut [f32]) {
        if self.spec.task != Task::Regression {
            return;
        }
        if let Some(p) = &self.spec.preprocessing {
            if p.target.is_some() {
                for y in values {
                    *y = p.untransform_target(*y);
                }
            }
        }
    }

    /// Runs the layers on a batch tensor (batch dimension first).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |x, l| l.forward_t(&x, false))
    }

    /// Runs `n` rows given as one flat row-major buffer, and returns the flat output: one
    /// tensor built, one forward, one copy back to the host.
    pub fn run_rows(&self, rows: Vec<f32>, n: usize) -> candle_core::Result<Vec<f32>> {
        let mut dims = Vec::with_capacity(self.spec.input.shape.len() + 1);
        dims.push(n);
        dims.extend_from_slice(&self.spec.input.shape);
        let xs = Tensor::from_vec(rows, dims, &self.device)?;
        let ys = self.forward(&xs)?;
        ys.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    }

    /// One forward pass on a zero instance: proves the model runs before it serves.
    pub fn warm_up(&self) -> Result<(), ModelError> {
        let out = self.run_rows(vec![0.0; self.spec.row_len()], 1)?;
        if out.len() != self.output_len() {
            return Err(ModelError::Invalid(format!(
                "warm-up produced {} values, expected {}",
                out.len(),
                self.output_len()
            )));
        }
        Ok(())
    }
}

fn outputs_probabilities(spec: &ModelSpec) -> bool {
    let last_act = match spec.layers.last() {
        Some(LayerSpec::Activation { activation, .. }) => Some(*activation),
        Some(LayerSpec::Dense { activation, .. }) => *activation,
        _ => None,
    };
    matches!(last_act, Some(Activation::Softmax | Activation::Sigmoid))
}
