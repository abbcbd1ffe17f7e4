//! The serving core: the one call every protocol makes once it has decoded a request.
//!
//! ```text
//! v1 handler ─┐                                              ┌─ v1 encoder
//!             ├─ decode → Serving::predict(rows, deadline) ──┤
//! v2 handler ─┘      registry.get · batcher.run · span ·     └─ v2 encoder
//!                    un-scaling → Prediction (model terms)
//! ```
//!
//! A [`Prediction`] is the version's output in model terms: regression values in the
//! target's original units, classifier rows with their labels and per-class scores (computed
//! when an encoder reads them, row by row). Protocols decode and encode; the row limit, the
//! span's fields, the default deadline and the batcher call are here, once. Runs on the
//! request's tokio task; the model itself runs on the version's workers.

pub mod evaluate;
pub mod explain;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::model::format::Task;
use crate::model::{Model, Scores};
use crate::registry::{LoadedVersion, Registry};

/// The serving core's handle: the registry and the request limits. Two pointers wide; made
/// per request from the app state (see `state::Shared::serving`).
#[derive(Clone, Copy)]
pub struct Serving<'a> {
    registry: &'a Registry,
    max_rows: usize,
}

/// The rows of one request, decoded into model input: `n_rows` rows of the model's
/// `row_len` values each, flat and row-major.
#[derive(Debug)]
pub struct Rows {
    pub data: Vec<f32>,
    pub n_rows: usize,
}

impl<'a> Serving<'a> {
    pub fn new(registry: &'a Registry, max_rows: usize) -> Self {
        Serving { registry, max_rows }
    }

    /// The version to serve: the given one, or the highest available.
    pub fn version(&self, name: &str, version: Option<u64>) -> Result<Arc<LoadedVersion>, Error> {
        self.registry.get(name, version)
    }

    /// Most instances one request may carry (`max_rows_per_request`). Decoders refuse more
    /// ([`check_rows`]) while they read, before the rows are built: the core takes only
    /// rows within it.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Computes a request's rows on its version, through the version's batcher (v1 and v2
    /// alike, so they share one queue), by `timeout` (the version's `request_timeout` when
    /// `None`). Records the model, version and batch size on `span`, the request's span,
    /// which the workers enter too.
    pub async fn predict<'v>(
        &self,
        lv: &'v LoadedVersion,
        rows: Rows,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Prediction<'v>, Error> {
        debug_assert!(
            rows.n_rows <= self.max_rows,
            "decoders refuse more rows than the limit"
        );
        let layers = lv.layers()?;
        let model = &*layers.model;
        let row_len = model.signature().row_len;
        debug_assert_eq!(rows.data.len(), rows.n_rows * row_len);
        span.record("model", lv.name.as_str());
        span.record("version", lv.version);
        let timeout = timeout.unwrap_or(layers.batcher.config().request_timeout);
        let computed = layers
            .batcher
            .run(rows.data, rows.n_rows, row_len, timeout, span)
            .await?;
        span.record("batch", computed.batch_rows);
        let timing = Timing {
            queue: computed.queue_time,
            compute: computed.compute_time,
            batch_rows: computed.batch_rows,
        };
        Ok(Prediction::new(
            model,
            computed.outputs,
            rows.n_rows,
            timing,
        ))
    }
}

/// Refuses a request of `n` instances over `limit` ([`Error::TooManyRows`]). Every decoder
/// calls it (through its input spec) before it keeps more rows than the limit.
pub fn check_rows(n: usize, limit: usize) -> Result<(), Error> {
    if n > limit {
        return Err(Error::TooManyRows { rows: n, limit });
    }
    Ok(())
}

/// Where a request's time went, for the answer's headers.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// From the request's arrival in the queue to a worker taking its batch.
    pub queue: Duration,
    /// The forward pass of its batch (summed over the batches of a split request).
    pub compute: Duration,
    /// Rows in the (largest) batch it was computed in.
    pub batch_rows: usize,
}

/// A version's answer to one request, in model terms.
#[derive(Debug)]
pub struct Prediction<'m> {
    model: &'m Model,
    /// `n_rows × output_len` values; regression values already in original units.
    values: Vec<f32>,
    n_rows: usize,
    pub timing: Timing,
}

impl<'m> Prediction<'m> {
    /// Builds one from a model's output values (as the core does from the batcher's reply).
    pub fn new(model: &'m Model, mut values: Vec<f32>, n_rows: usize, timing: Timing) -> Self {
        debug_assert_eq!(values.len(), n_rows * model.output_len());
        model.untransform(&mut values);
        Prediction {
            model,
            values,
            n_rows,
            timing,
        }
    }

    /// The model that computed it.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn task(&self) -> Task {
        self.model.task()
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Per-instance output shape.
    pub fn output_shape(&self) -> &'m [usize] {
        self.model.output_shape()
    }

    /// Every output value, flat and row-major: regression values in the target's original
    /// units, a classifier's raw output (logits, or probabilities if its last layer makes
    /// them). Borrowed: encoders that write raw floats copy nothing.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// One output row per instance.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.values.chunks_exact(self.model.output_len().max(1))
    }

    /// A classifier's class names, in score order ("0", "1", … when the model has none).
    pub fn labels(&self) -> &'m [String] {
        self.model.labels()
    }

    /// The per-class scores of instance `row` (classifiers), computed as they are read.
    pub fn scores(&self, row: usize) -> Scores<'_> {
        let len = self.model.output_len();
        self.model.scores(&self.values[row * len..(row + 1) * len])
    }

    /// The label of instance `row`'s best-scoring class (classifiers).
    pub fn best_label(&self, row: usize) -> &'m str {
        let labels = self.labels();
        labels
            .get(self.scores(row).best())
            .map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{check_rows, Prediction, Timing};
    use crate::error::Error;
    use crate::model::format::Task;
    use crate::model::Model;

    fn model(spec: serde_json::Value) -> Model {
        Model::of_spec(spec)
    }

    fn classifier(units: usize, labels: &[&str], last: Option<&str>) -> Model {
        let mut layers = vec![serde_json::json!({"type": "dense", "units": units})];
        if let Some(act) = last {
            layers.push(serde_json::json!({"type": "activation", "activation": act}));
        }
        model(
            serde_json::json!({"format_version": 1, "task": "classification",
            "input": {"shape": [2]}, "labels": labels, "layers": layers}),
        )
    }

    const TIMING: Timing = Timing {
        queue: Duration::ZERO,
        compute: Duration::ZERO,
        batch_rows: 1,
    };

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn binary_sigmoid_scores_two_classes() {
        // One unit with a sigmoid: the output is p(second class).
        let m = classifier(1, &["no", "yes"], Some("sigmoid"));
        let p = Prediction::new(&m, vec![0.2, 0.9], 2, TIMING);
        assert_eq!(p.labels(), ["no", "yes"]);
        assert!(close(&p.scores(0).collect::<Vec<_>>(), &[0.8, 0.2]));
        assert_eq!((p.best_label(0), p.best_label(1)), ("no", "yes"));
        assert_eq!(p.values(), [0.2, 0.9], "raw values are the output as is");
        // One unit of logits: a sigmoid first (sigmoid(ln 4) = 0.8).
        let m = classifier(1, &[], None);
        let p = Prediction::new(&m, vec![4f32.ln()], 1, TIMING);
        assert_eq!(
            p.labels(),
            ["0", "1"],
            "a binary classifier has two classes"
        );
        assert!(close(&p.scores(0).collect::<Vec<_>>(), &[0.2, 0.8]));
        assert_eq!(p.best_label(0), "1");
    }

    #[test]
    fn logits_get_a_softmax_and_probabilities_do_not() {
        let m = classifier(3, &["a", "b", "c"], None);
        let p = Prediction::new(&m, vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0], 2, TIMING);
        // Reference values from numpy: softmax([1, 2, 3]).
        let s: Vec<f32> = p.scores(0).collect();
        assert!(
            close(&s, &[0.090_030_57, 0.244_728_47, 0.665_240_96]),
            "{s:?}"
        );
        assert!(close(&p.scores(1).collect::<Vec<_>>(), &[1.0 / 3.0; 3]));
        assert_eq!(p.best_label(0), "c");
        assert_eq!(p.rows().len(), 2);
        let m = classifier(3, &["a", "b", "c"], Some("softmax"));
        let p = Prediction::new(&m, vec![0.1, 0.6, 0.3], 1, TIMING);
        assert_eq!(p.scores(0).collect::<Vec<_>>(), [0.1, 0.6, 0.3]);
        assert_eq!(p.best_label(0), "b");
    }

    #[test]
    fn labels_are_invented_when_the_spec_has_none() {
        let m = classifier(4, &[], Some("softmax"));
        assert_eq!(m.labels(), ["0", "1", "2", "3"]);
        let p = Prediction::new(&m, vec![0.1, 0.2, 0.6, 0.1], 1, TIMING);
        assert_eq!(p.best_label(0), "2");
    }

    #[test]
    fn regression_values_are_in_original_units() {
        // The model predicts (y - 3) / 2; answers are mapped back: y = 2 * out + 3.
        let m = model(
            serde_json::json!({"format_version": 1, "task": "regression",
            "input": {"shape": [1], "features": ["x"]},
            "layers": [{"type": "dense", "units": 1}],
            "preprocessing": {"features": [{"kind": "numeric", "name": "x"}],
                              "target": {"shift": 3.0, "scale": 2.0}}}),
        );
        assert_eq!(m.task(), Task::Regression);
        assert!(m.labels().is_empty());
        let p = Prediction::new(&m, vec![0.0, 1.0, -1.5], 3, TIMING);
        assert_eq!(p.values(), [3.0, 5.0, 0.0]);
        // Without a fitted target the output is already in the target's units.
        let m = model(
            serde_json::json!({"format_version": 1, "task": "regression",
            "input": {"shape": [1]}, "layers": [{"type": "dense", "units": 1}]}),
        );
        assert_eq!(Prediction::new(&m, vec![0.5], 1, TIMING).values(), [0.5]);
    }

    #[test]
    fn the_row_limit() {
        assert!(check_rows(10, 10).is_ok());
        assert!(matches!(
            check_rows(11, 10),
            Err(Error::TooManyRows {
                rows: 11,
                limit: 10
            })
        ));
    }
}
