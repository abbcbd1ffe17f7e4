//! What a model takes and what its outputs mean, read from its spec once: the input
//! [`Signature`] every request decoder checks against, and the [`Scores`] of a classifier's
//! output row. Protocols ask the model; none of them reads `model.json` to find out.

use crate::model::format::{InputDType, LayerSpec, ModelSpec};
use crate::preprocess::{FeatureTransform, Preprocessing};

/// The input of one instance, as a request must send it.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    /// Shape of one instance of model input (after preprocessing), without the batch
    /// dimension.
    pub shape: &'a [usize],
    pub dtype: InputDType,
    /// Raw feature names, in the order an array instance lists them.
    pub features: Option<&'a [String]>,
    /// Fitted preprocessing: present when named features are transformed into model input.
    pub preprocessing: Option<&'a Preprocessing>,
    /// Exclusive upper bound of ids for an embedding input.
    pub vocab: Option<usize>,
    /// Values per instance of model input.
    pub row_len: usize,
}

impl<'a> Signature<'a> {
    pub(crate) fn of(spec: &'a ModelSpec) -> Self {
        // Only a first embedding layer bounds the ids; an int64 input without one is refused
        // when the model is built.
        let vocab = match spec.layers.first() {
            Some(LayerSpec::Embedding { input_dim, .. }) => Some(*input_dim),
            _ => None,
        };
        Signature {
            shape: &spec.input.shape,
            dtype: spec.input.dtype,
            features: spec.input.features.as_deref(),
            preprocessing: spec.preprocessing.as_ref(),
            vocab,
            row_len: spec.row_len(),
        }
    }

    /// The feature names when instances arrive as raw feature values that preprocessing
    /// turns into model input (so a raw tensor holds one value per feature).
    pub fn preprocessed_features(&self) -> Option<&'a [String]> {
        self.preprocessing.and(self.features)
    }

    /// Values per instance a raw tensor must carry: the feature count for models with
    /// preprocessing (raw values in signature order), else the input shape's size.
    pub fn raw_width(&self) -> usize {
        self.preprocessed_features()
            .map_or(self.row_len, <[String]>::len)
    }

    /// The raw per-instance shape a tensor input must have (after the batch dimension).
    pub fn raw_shape(&self) -> Vec<usize> {
        match self.preprocessed_features() {
            Some(f) => vec![f.len()],
            None => self.shape.to_vec(),
        }
    }

    /// Whether a request must send `feature`: true unless preprocessing fills it in.
    pub fn requires(&self, feature: &str) -> bool {
        let Some(p) = self.preprocessing else {
            return true;
        };
        p.features.iter().any(|f| {
            f.name() == feature
                && match f {
                    FeatureTransform::Numeric { fill, .. } => fill.is_none(),
                    FeatureTransform::Categorical { fill, .. } => fill.is_none(),
                }
        })
    }
}

/// How a classifier's output row becomes one score per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScoreKind {
    /// The last layer is a softmax or a sigmoid: the values are probabilities already.
    Probabilities,
    /// Logits: a softmax (several units) or a sigmoid (one unit) makes them probabilities.
    Logits,
}

/// The scores of one output row, one per class, computed as they are read (nothing is
/// allocated): a single unit `p` gives `[1 - p, p]`, probabilities are passed through, and
/// logits go through a softmax (or a sigmoid for a single unit).
#[derive(Debug, Clone)]
pub struct Scores<'r> {
    inner: ScoresInner<'r>,
}

#[derive(Debug, Clone)]
enum ScoresInner<'r> {
    /// `[1 - p, p]`; `next` is the class to give next (0, 1, then done).
    Binary {
        p: f32,
        next: u8,
    },
    AsIs(std::slice::Iter<'r, f32>),
    Softmax {
        logits: std::slice::Iter<'r, f32>,
        max: f32,
        sum: f32,
    },
}

impl<'r> Scores<'r> {
    pub(crate) fn new(row: &'r [f32], kind: ScoreKind) -> Self {
        let inner = match (row, kind) {
            ([p], ScoreKind::Probabilities) => ScoresInner::Binary { p: *p, next: 0 },
            ([z], ScoreKind::Logits) => ScoresInner::Binary {
                p: 1.0 / (1.0 + (-z).exp()),
                next: 0,
            },
            (_, ScoreKind::Probabilities) => ScoresInner::AsIs(row.iter()),
            (_, ScoreKind::Logits) => {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = row.iter().map(|x| (x - max).exp()).sum();
                ScoresInner::Softmax {
                    logits: row.iter(),
                    max,
                    sum,
                }
            }
        };
        Scores { inner }
    }

    /// The class with the highest score (the last of equal ones).
    pub fn best(self) -> usize {
        self.enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(i, _)| i)
    }
}

impl Iterator for Scores<'_> {
    type Item = f32;

    fn next(&mut self) -> Option<f32> {
        match &mut self.inner {
            ScoresInner::Binary { p, next } => {
                let s = match *next {
                    0 => 1.0 - *p,
                    1 => *p,
                    _ => return None,
                };
                *next += 1;
                Some(s)
            }
            ScoresInner::AsIs(values) => values.next().copied(),
            ScoresInner::Softmax { logits, max, sum } => {
                logits.next().map(|x| (x - *max).exp() / *sum)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.inner {
            ScoresInner::Binary { next, .. } => 2usize.saturating_sub(usize::from(*next)),
            ScoresInner::AsIs(values) => values.len(),
            ScoresInner::Softmax { logits, .. } => logits.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Scores<'_> {}

#[cfg(test)]
mod tests {
    use super::{ScoreKind, Scores};

    fn scores(row: &[f32], kind: ScoreKind) -> Vec<f32> {
        let s = Scores::new(row, kind);
        let n = s.len();
        let v: Vec<f32> = s.collect();
        assert_eq!(v.len(), n, "the size hint is exact");
        v
    }

    #[test]
    fn one_probability_is_the_second_class() {
        assert_eq!(scores(&[0.25], ScoreKind::Probabilities), [0.75, 0.25]);
        assert_eq!(Scores::new(&[0.25], ScoreKind::Probabilities).best(), 0);
        assert_eq!(Scores::new(&[0.5], ScoreKind::Probabilities).best(), 1);
    }

    #[test]
    fn one_logit_goes_through_a_sigmoid() {
        assert_eq!(scores(&[0.0], ScoreKind::Logits), [0.5, 0.5]);
        // sigmoid(ln 3) = 3/4.
        let s = scores(&[3f32.ln()], ScoreKind::Logits);
        assert!(
            (s[0] - 0.25).abs() < 1e-6 && (s[1] - 0.75).abs() < 1e-6,
            "{s:?}"
        );
    }

    #[test]
    fn probabilities_are_passed_through() {
        assert_eq!(
            scores(&[0.1, 0.7, 0.2], ScoreKind::Probabilities),
            [0.1, 0.7, 0.2]
        );
        assert_eq!(
            Scores::new(&[0.1, 0.7, 0.2], ScoreKind::Probabilities).best(),
            1
        );
    }

    #[test]
    fn logits_go_through_a_softmax() {
        let s = scores(&[0.0, 0.0], ScoreKind::Logits);
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 0.5).abs() < 1e-6);
        // softmax([1, 2, 3]) = e^k / (e + e^2 + e^3), reference values from numpy.
        let s = scores(&[1.0, 2.0, 3.0], ScoreKind::Logits);
        for (got, want) in s.iter().zip([0.090_030_57, 0.244_728_47, 0.665_240_96]) {
            assert!((got - want).abs() < 1e-6, "{s:?}");
        }
        // Large logits do not overflow: the maximum is subtracted first.
        let s = scores(&[1000.0, 1000.0], ScoreKind::Logits);
        assert_eq!(s, [0.5, 0.5]);
        assert_eq!(Scores::new(&[1.0, 3.0, 2.0], ScoreKind::Logits).best(), 1);
    }
}
