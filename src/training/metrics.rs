//! Evaluation metrics over predictions, in plain Rust (no tensors): accuracy, macro
//! precision/recall/F1 and the confusion matrix for classification; MAE, RMSE and R² for
//! regression.
//!
//! Both accumulators ([`ConfusionMatrix`], [`RegressionStats`]) take batches one at a time, so
//! the trainer can evaluate a validation set batch by batch and read [`Metrics`] at the end.
//! Definitions follow scikit-learn's defaults, noted on each item. Runs on the training
//! thread.

use super::error::{Result, TrainingError};

/// Metrics of one evaluation (defined with the model's training information, which stores
/// them).
pub use crate::model::format::Metrics;

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples whose actual class this is.
    pub support: u64,
    /// Examples predicted as this class.
    pub predicted: u64,
}

// === impl ConfusionMatrix ===

/// Counts of (actual, predicted) class pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    /// Row-major `[actual][predicted]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Adds a batch of predicted and actual class indices (both in `0..classes`).
    pub fn add(&mut self, predicted: &[usize], actual: &[usize]) -> Result<()> {
        if predicted.len() != actual.len() {
            return Err(TrainingError::Shape(format!(
                "{} predictions but {} actual classes",
                predicted.len(),
                actual.len()
            )));
        }
        let k = self.classes;
        if let Some(bad) = predicted.iter().chain(actual).find(|&&c| c >= k) {
            return Err(TrainingError::Shape(format!(
                "class index {bad} is out of range for {k} classes"
            )));
        }
        for (&p, &a) in predicted.iter().zip(actual) {
            self.counts[a * k + p] += 1;
        }
        Ok(())
    }

    /// How many examples of class `actual` were predicted as `predicted`.
    pub fn count(&self, actual: usize, predicted: usize) -> u64 {
        self.counts[actual * self.classes + predicted]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of examples predicted correctly; `None` before any example.
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        let correct: u64 = (0..self.classes).map(|c| self.count(c, c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// Scores of class `c`. A ratio with a zero denominator is 0, scikit-learn's
    /// `zero_division=0`: a class never predicted has precision 0, a class absent from the
    /// actual labels has recall 0, and F1 is 0 when precision + recall is 0.
    pub fn class_scores(&self, c: usize) -> ClassScores {
        let tp = self.count(c, c);
        let support: u64 = (0..self.classes).map(|p| self.count(c, p)).sum();
        let predicted: u64 = (0..self.classes).map(|a| self.count(a, c)).sum();
        let ratio = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let precision = ratio(tp, predicted);
        let recall = ratio(tp, support);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        ClassScores {
            precision,
            recall,
            f1,
            support,
            predicted,
        }
    }

    /// Unweighted means of the per-class precision, recall and F1 (F1 is the mean of the
    /// per-class F1s, not the F1 of the means). The mean runs over the classes that occur
    /// among the actual or the predicted labels, as scikit-learn's `labels=None` does: a class
    /// that appears nowhere in the evaluated data does not drag the average down.
    /// `None` before any example.
    pub fn macro_scores(&self) -> Option<(f64, f64, f64)> {
        let seen: Vec<ClassScores> = (0..self.classes)
            .map(|c| self.class_scores(c))
            .filter(|s| s.support > 0 || s.predicted > 0)
            .collect();
        if seen.is_empty() {
            return None;
        }
        let n = seen.len() as f64;
        let mean = |f: fn(&ClassScores) -> f64| seen.iter().map(f).sum::<f64>() / n;
        Some((mean(|s| s.precision), mean(|s| s.recall), mean(|s| s.f1)))
    }

    /// The matrix as rows: `rows()[actual][predicted]`.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        if self.classes == 0 {
            return Vec::new();
        }
        self.counts
            .chunks(self.classes)
            .map(<[u64]>::to_vec)
            .collect()
    }

    /// Accuracy, macro scores and the matrix.
    pub fn metrics(&self) -> Metrics {
        let macro_scores = self.macro_scores();
        Metrics {
            accuracy: self.accuracy(),
            precision_macro: macro_scores.map(|m| m.0),
            recall_macro: macro_scores.map(|m| m.1),
            f1_macro: macro_scores.map(|m| m.2),
            confusion_matrix: Some(self.rows()),
            ..Metrics::default()
        }
    }
}

/// Classification metrics of predicted against actual class indices.
pub fn classification_metrics(
    predicted: &[usize],
    actual: &[usize],
    classes: usize,
) -> Result<Metrics> {
    let mut m = ConfusionMatrix::new(classes);
    m.add(predicted, actual)?;
    Ok(m.metrics())
}

/// The index of the largest value of each row of `width` values (the predicted class of
/// logits or probabilities). Ties go to the lowest index; NaN never wins.
pub fn argmax_rows(values: &[f32], width: usize) -> Vec<usize> {
    if width == 0 {
        return Vec::new();
    }
    values
        .chunks(width)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] || row[best].is_nan() {
                    best = i;
                }
            }
            best
        })
        .collect()
}

/// Class 1 where the value exceeds `cut`, else class 0: a single-unit binary classifier's
/// prediction (cut 0 for logits, 0.5 for probabilities).
pub fn threshold(values: &[f32], cut: f32) -> Vec<usize> {
    values.iter().map(|&v| usize::from(v > cut)).collect()
}

// === impl RegressionStats ===

/// Running sums for MAE, RMSE and R² over examples of `outputs` values each.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionStats {
    outputs: usize,
    /// Examples seen (rows of `outputs` values).
    rows: u64,
    abs_error: f64,
    sq_error: f64,
    /// Per output column: mean and sum of squared deviations of the actual values
    /// (Welford's update, stable for large offsets) and the residual sum of squares.
    mean: Vec<f64>,
    m2: Vec<f64>,
    ss_res: Vec<f64>,
}

impl RegressionStats {
    pub fn new(outputs: usize) -> Self {
        RegressionStats {
            outputs,
            rows: 0,
            abs_error: 0.0,
            sq_error: 0.0,
            mean: vec![0.0; outputs],
            m2: vec![0.0; outputs],
            ss_res: vec![0.0; outputs],
        }
    }

    /// Adds a batch: row-major `[rows, outputs]` predictions and actual values.
    pub fn add(&mut self, predicted: &[f32], actual: &[f32]) -> Result<()> {
        if predicted.len() != actual.len()
            || self.outputs == 0
            || !actual.len().is_multiple_of(self.outputs)
        {
            return Err(TrainingError::Shape(format!(
                "{} predictions and {} actual values do not form rows of {} outputs",
                predicted.len(),
                actual.len(),
                self.outputs
            )));
        }
        for (p_row, a_row) in predicted
            .chunks(self.outputs)
            .zip(actual.chunks(self.outputs))
        {
            self.rows += 1;
            let n = self.rows as f64;
            for (j, (&p, &a)) in p_row.iter().zip(a_row).enumerate() {
                let (p, a) = (p as f64, a as f64);
                let e = p - a;
                self.abs_error += e.abs();
                self.sq_error += e * e;
                self.ss_res[j] += e * e;
                let delta = a - self.mean[j];
                self.mean[j] += delta / n;
                self.m2[j] += delta * (a - self.mean[j]);
            }
        }
        Ok(())
    }

    /// MAE and RMSE over every value (Keras' `MeanAbsoluteError` and
    /// `RootMeanSquaredError`); R² per output column, averaged uniformly (scikit-learn's and
    /// Keras' default `uniform_average`). A column whose actual values are all equal has
    /// R² 1 if predicted exactly and 0 otherwise (scikit-learn's `force_finite`).
    /// All `None` before any example.
    pub fn metrics(&self) -> Metrics {
        if self.rows == 0 {
            return Metrics::default();
        }
        let values = (self.rows * self.outputs as u64) as f64;
        let r2 = self
            .ss_res
            .iter()
            .zip(&self.m2)
            .map(|(&res, &tot)| match (res == 0.0, tot == 0.0) {
                (true, _) => 1.0,
                (false, true) => 0.0,
                (false, false) => 1.0 - res / tot,
            })
            .sum::<f64>()
            / self.outputs as f64;
        Metrics {
            mae: Some(self.abs_error / values),
            rmse: Some((self.sq_error / values).sqrt()),
            r2: Some(r2),
            ..Metrics::default()
        }
    }
}

/// Regression metrics of row-major `[rows, outputs]` predictions against actual values.
pub fn regression_metrics(predicted: &[f32], actual: &[f32], outputs: usize) -> Result<Metrics> {
    let mut stats = RegressionStats::new(outputs);
    stats.add(predicted, actual)?;
    Ok(stats.metrics())
}

// === ranking and residuals ===

/// The area under the ROC curve of a binary classifier: the probability that a random
/// positive scores above a random negative, ties counting one half (the Mann–Whitney
/// statistic, as scikit-learn's `roc_auc_score`). `None` without both classes.
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 || scores.len() != positive.len() {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' ranks (1-based), equal scores sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += rank * order[i..=j].iter().filter(|&&r| positive[r]).count() as f64;
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// The distribution of a regression's residuals (predicted − actual).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResidualSummary {
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub min: f64,
    /// Quartiles, linearly interpolated (numpy's default).
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
}

impl ResidualSummary {
    /// `None` for no residuals. Sorts `residuals`.
    pub fn of(residuals: &mut [f32]) -> Option<ResidualSummary> {
        if residuals.is_empty() {
            return None;
        }
        residuals.sort_by(f32::total_cmp);
        let n = residuals.len() as f64;
        let mean = residuals.iter().map(|&r| f64::from(r)).sum::<f64>() / n;
        let var = residuals
            .iter()
            .map(|&r| (f64::from(r) - mean).powi(2))
            .sum::<f64>()
            / n;
        let q = |p: f64| {
            let at = p * (n - 1.0);
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            let (a, b) = (f64::from(residuals[lo]), f64::from(residuals[hi]));
            a + (b - a) * (at - lo as f64)
        };
        Some(ResidualSummary {
            mean,
            std: var.sqrt(),
            min: f64::from(residuals[0]),
            p25: q(0.25),
            median: q(0.5),
            p75: q(0.75),
            max: f64::from(residuals[residuals.len() - 1]),
        })
    }
}

#[cfg(test)]
mod ranking_tests {
    use super::*;

    #[test]
    fn roc_auc_matches_scikit_learn() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        let auc = roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
        // Ties count one half: roc_auc_score([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
        let auc = roc_auc(&[0.5, 0.5, 0.2, 0.9], &[false, true, false, true]).unwrap();
        assert!((auc - 0.875).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.3, 0.6], &[true, true]), None);
    }

    #[test]
    fn residual_quartiles_interpolate_as_numpy() {
        // numpy.percentile([-2, 0, 1, 3, 8], [25, 50, 75]) == [0, 1, 3]
        let s = ResidualSummary::of(&mut [3.0, -2.0, 8.0, 0.0, 1.0]).unwrap();
        assert_eq!(
            (s.min, s.p25, s.median, s.p75, s.max),
            (-2.0, 0.0, 1.0, 3.0, 8.0)
        );
        assert!((s.mean - 2.0).abs() < 1e-12);
        // Population standard deviation (numpy.std's default): sqrt((16 + 4 + 1 + 1 + 36) / 5).
        assert!((s.std - 11.6f64.sqrt()).abs() < 1e-9);
        let s = ResidualSummary::of(&mut [1.0, 2.0]).unwrap();
        assert_eq!(s.p25, 1.25);
        assert!(ResidualSummary::of(&mut []).is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: Option<f64>, want: f64) {
        let got = got.expect("metric present");
        assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
    }

    #[test]
    fn classification_by_hand_with_a_class_never_predicted() {
        // Actual [0,0,1,1,2,2], predicted [0,1,1,1,0,0]; class 2 is never predicted.
        // Matrix (rows actual): [1,1,0] [0,2,0] [2,0,0]. Accuracy 3/6.
        // Precision: 1/3, 2/3, 0 (nothing predicted as 2: zero_division=0) → macro 1/3.
        // Recall: 1/2, 2/2, 0/2 → macro 1/2.
        // F1: 2·(1/3)(1/2)/(5/6) = 0.4, 2·(2/3)(1)/(5/3) = 0.8, 0 → macro 0.4.
        // scikit-learn: precision_score(.., average="macro", zero_division=0) = 0.3333,
        // recall_score = 0.5, f1_score = 0.4.
        let m = classification_metrics(&[0, 1, 1, 1, 0, 0], &[0, 0, 1, 1, 2, 2], 3).unwrap();
        close(m.accuracy, 0.5);
        close(m.precision_macro, 1.0 / 3.0);
        close(m.recall_macro, 0.5);
        close(m.f1_macro, 0.4);
        assert_eq!(
            m.confusion_matrix.unwrap(),
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![2, 0, 0]]
        );
        // A fourth class that occurs nowhere is left out of the macro means.
        let m4 = classification_metrics(&[0, 1, 1, 1, 0, 0], &[0, 0, 1, 1, 2, 2], 4).unwrap();
        close(m4.precision_macro, 1.0 / 3.0);
        close(m4.f1_macro, 0.4);
        assert_eq!(m4.confusion_matrix.unwrap().len(), 4);
    }

    #[test]
    fn batches_accumulate_like_one_pass() {
        let mut m = ConfusionMatrix::new(3);
        m.add(&[0, 1, 1], &[0, 0, 1]).unwrap();
        m.add(&[1, 0, 0], &[1, 2, 2]).unwrap();
        let once = classification_metrics(&[0, 1, 1, 1, 0, 0], &[0, 0, 1, 1, 2, 2], 3).unwrap();
        assert_eq!(m.metrics(), once);
        assert_eq!(m.total(), 6);
        let s = m.class_scores(2);
        assert_eq!(
            (s.precision, s.recall, s.support, s.predicted),
            (0.0, 0.0, 2, 0)
        );
    }

    #[test]
    fn bad_class_inputs_are_errors_and_empty_is_none() {
        assert!(classification_metrics(&[0, 3], &[0, 1], 3).is_err());
        assert!(classification_metrics(&[0], &[0, 1], 3).is_err());
        let empty = ConfusionMatrix::new(3).metrics();
        assert_eq!(empty.accuracy, None);
        assert_eq!(empty.f1_macro, None);
    }

    #[test]
    fn argmax_and_threshold() {
        assert_eq!(
            argmax_rows(&[0.1, 0.7, 0.2, 3.0, -1.0, 3.0, f32::NAN, 1.0, 0.0], 3),
            vec![1, 0, 1]
        );
        assert_eq!(threshold(&[-0.2, 0.0, 0.3], 0.0), vec![0, 0, 1]);
    }

    #[test]
    fn regression_by_hand() {
        // scikit-learn's documentation example: actual [3, -0.5, 2, 7], predicted
        // [2.5, 0, 2, 8]. Errors [-0.5, 0.5, 0, 1]: MAE 0.5, MSE 0.375, RMSE 0.6123724.
        // Actual mean 2.875, SS_tot 29.1875, SS_res 1.5: R² = 1 - 1.5/29.1875 = 0.9486081.
        let m = regression_metrics(&[2.5, 0.0, 2.0, 8.0], &[3.0, -0.5, 2.0, 7.0], 1).unwrap();
        close(m.mae, 0.5);
        close(m.rmse, 0.375f64.sqrt());
        close(m.r2, 0.948_608_1);
        assert_eq!(m.accuracy, None);
    }

    #[test]
    fn regression_two_outputs_averages_r2_per_column() {
        // scikit-learn's multi-output example: actual [[0.5, 1], [-1, 1], [7, -6]],
        // predicted [[0, 2], [-1, 2], [8, -5]]. MAE 4.5/6 = 0.75; MSE 4.25/6.
        // Column 0: SS_tot 36.16667, SS_res 1.25 → 0.9654378. Column 1: SS_tot 32.66667,
        // SS_res 3 → 0.9081633. Uniform average 0.9368005 (scikit-learn prints 0.936...).
        let mut s = RegressionStats::new(2);
        s.add(&[0.0, 2.0, -1.0, 2.0], &[0.5, 1.0, -1.0, 1.0])
            .unwrap();
        s.add(&[8.0, -5.0], &[7.0, -6.0]).unwrap();
        let m = s.metrics();
        close(m.mae, 0.75);
        close(m.rmse, (4.25f64 / 6.0).sqrt());
        close(m.r2, 0.936_800_5);
        assert!(s.add(&[1.0], &[1.0]).is_err());
    }

    #[test]
    fn constant_targets_follow_force_finite() {
        let exact = regression_metrics(&[2.0, 2.0], &[2.0, 2.0], 1).unwrap();
        close(exact.r2, 1.0);
        let off = regression_metrics(&[1.0, 3.0], &[2.0, 2.0], 1).unwrap();
        close(off.r2, 0.0);
    }

    #[test]
    fn serializes_with_snake_case_names_and_only_what_applies() {
        let m = classification_metrics(&[0, 1], &[0, 0], 2).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "accuracy",
                "confusion_matrix",
                "f1_macro",
                "precision_macro",
                "recall_macro"
            ]
        );
        assert_eq!(
            json["confusion_matrix"],
            serde_json::json!([[1, 1], [0, 0]])
        );
        let r = regression_metrics(&[1.0], &[2.0], 1).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["mae", "r2", "rmse"]);
    }
}
