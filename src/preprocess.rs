//! Fitted preprocessing: the transforms training fits on its training split, stored in
//! model.json and applied, identically, to every instance that arrives as named features.
//!
//! Runs on the request's tokio task while the request is decoded (it is cheap: a few
//! arithmetic operations per feature), so the rows handed to the batcher are model input.

use serde::{Deserialize, Serialize};

// Requests read missing cells as datasets do: training and serving agree on what is absent.
use crate::dataset::MISSING_MARKERS;
use utoipa::ToSchema;

/// The fitted transforms of one model version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// One transform per raw feature, in the order of the signature's feature names; their
    /// outputs are concatenated into the model's input row.
    pub features: Vec<FeatureTransform>,
    /// Regression only: the model predicts `(y - shift) / scale`; answers are mapped back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetTransform>,
    /// The mean of each model-input value (after encoding) over the training rows: the
    /// default baseline of explanations (`:explain`). Written by kiln's training; a model
    /// without it is explained from zero in model-input space, which for standardized
    /// numeric features is the same point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_mean: Option<Vec<f32>>,
}

/// The transform of one raw feature column.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureTransform {
    /// `((clip(x or fill)) - shift) / scale`: one value.
    Numeric {
        name: String,
        /// Value used when the feature is missing (null, absent, "", "NA", …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fill: Option<f64>,
        /// Clipping bounds `[low, high]` fitted for outliers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip: Option<[f64; 2]>,
        #[serde(default)]
        shift: f64,
        #[serde(default = "one")]
        scale: f64,
    },
    /// One value per category (`one_hot`) or the category's index (`ordinal`). A category not
    /// seen in training encodes as all zeros (one-hot) or -1 (ordinal) and raises a warning.
    Categorical {
        name: String,
        encoding: Encoding,
        categories: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fill: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    OneHot,
    Ordinal,
}

/// `y = output * scale + shift`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetTransform {
    pub shift: f64,
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// A raw feature value as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Number(f64),
    Text(String),
    Bool(bool),
    Missing,
}

impl RawValue {
    fn is_missing(&self) -> bool {
        match self {
            RawValue::Missing => true,
            RawValue::Text(s) => MISSING_MARKERS.contains(&s.trim()),
            RawValue::Number(_) | RawValue::Bool(_) => false,
        }
    }

    /// The category a value names: numbers print without a trailing `.0`.
    fn as_category(&self) -> String {
        match self {
            RawValue::Text(s) => s.clone(),
            RawValue::Bool(b) => b.to_string(),
            RawValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            RawValue::Number(n) => n.to_string(),
            RawValue::Missing => String::new(),
        }
    }
}

impl FeatureTransform {
    pub fn name(&self) -> &str {
        match self {
            FeatureTransform::Numeric { name, .. } | FeatureTransform::Categorical { name, .. } => {
                name
            }
        }
    }

    /// Number of model-input values this feature becomes.
    pub fn width(&self) -> usize {
        match self {
            FeatureTransform::Numeric { .. } => 1,
            FeatureTransform::Categorical {
                encoding: Encoding::OneHot,
                categories,
                ..
            } => categories.len(),
            FeatureTransform::Categorical {
                encoding: Encoding::Ordinal,
                ..
            } => 1,
        }
    }

    /// Appends this feature's encoded values to `out`. `Err` says what was wrong with the
    /// value (the caller adds where); an unknown category is a warning, not an error.
    fn apply(
        &self,
        value: &RawValue,
        out: &mut Vec<f32>,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        match self {
            FeatureTransform::Numeric {
                fill,
                clip,
                shift,
                scale,
                ..
            } => {
                let x = if value.is_missing() {
                    fill.ok_or("is missing and the model has no fill value for it")?
                } else {
                    match value {
                        RawValue::Number(n) => *n,
                        RawValue::Bool(b) => f64::from(u8::from(*b)),
                        RawValue::Text(s) => s
                            .trim()
                            .parse::<f64>()
                            .map_err(|_| format!("expected a number, got the string {s:?}"))?,
                        RawValue::Missing => unreachable!("handled by is_missing above"),
                    }
                };
                if !x.is_finite() {
                    return Err(format!("value {x} is not finite"));
                }
                let x = match clip {
                    Some([lo, hi]) => x.clamp(*lo, *hi),
                    None => x,
                };
                let v = ((x - shift) / scale) as f32;
                if !v.is_finite() {
                    return Err(format!(
                        "value {x} is out of the 32-bit float range after scaling"
                    ));
                }
                out.push(v);
            }
            FeatureTransform::Categorical {
                encoding,
                categories,
                fill,
                ..
            } => {
                let category = if value.is_missing() {
                    fill.clone()
                        .ok_or("is missing and the model has no fill value for it")?
                } else {
                    value.as_category()
                };
                let index = categories.iter().position(|c| *c == category);
                if index.is_none() {
                    warnings.push(format!("unknown category {category:?}, encoded as unknown"));
                }
                match encoding {
                    Encoding::OneHot => {
                        let start = out.len();
                        out.resize(start + categories.len(), 0.0);
                        if let Some(i) = index {
                            out[start + i] = 1.0;
                        }
                    }
                    Encoding::Ordinal => out.push(index.map_or(-1.0, |i| i as f32)),
                }
            }
        }
        Ok(())
    }
}

impl Preprocessing {
    /// Width of the model input row this preprocessing produces.
    pub fn width(&self) -> usize {
        self.features.iter().map(FeatureTransform::width).sum()
    }

    /// Encodes one instance whose features are looked up by name. `Err` names the feature.
    /// Warnings (unknown categories) are prefixed with the feature name.
    ///
    /// `lookup` gets each feature's position and name: callers whose values usually come in
    /// the features' order check that position first (one comparison, not a search).
    pub fn apply<'a>(
        &self,
        lookup: impl Fn(usize, &str) -> Option<&'a RawValue>,
        out: &mut Vec<f32>,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        for (i, f) in self.features.iter().enumerate() {
            let value = lookup(i, f.name()).unwrap_or(&RawValue::Missing);
            let before = warnings.len();
            f.apply(value, out, warnings)
                .map_err(|e| format!("feature '{}' {e}", f.name()))?;
            for w in &mut warnings[before..] {
                *w = format!("feature '{}': {w}", f.name());
            }
        }
        Ok(())
    }

    /// Per model-input value, the `(scale, shift)` that maps it back to its raw feature's
    /// units (`raw = value · scale + shift`): a numeric feature's fitted scaling, `(1, 0)` for
    /// the values of a categorical one. Explanations integrate in this raw space.
    pub fn raw_affine(&self) -> Vec<(f32, f32)> {
        let mut out = Vec::with_capacity(self.width());
        for f in &self.features {
            match f {
                FeatureTransform::Numeric { shift, scale, .. } => {
                    out.push((*scale as f32, *shift as f32));
                }
                FeatureTransform::Categorical { .. } => {
                    out.extend(std::iter::repeat_n((1.0, 0.0), f.width()));
                }
            }
        }
        out
    }

    /// Maps a regression output back to the target's original units.
    pub fn untransform_target(&self, y: f32) -> f32 {
        match self.target {
            Some(t) => (f64::from(y) * t.scale + t.shift) as f32,
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep() -> Preprocessing {
        serde_json::from_str(
            r#"{"features": [
                {"kind": "numeric", "name": "x", "fill": 2.0, "shift": 1.0, "scale": 2.0, "clip": [-10, 10]},
                {"kind": "categorical", "name": "c", "encoding": "one_hot", "categories": ["a", "b", "1"]},
                {"kind": "categorical", "name": "o", "encoding": "ordinal", "categories": ["lo", "hi"], "fill": "lo"}
            ], "target": {"shift": 100.0, "scale": 10.0}}"#,
        )
        .unwrap()
    }

    fn run(values: &[(&str, RawValue)]) -> Result<(Vec<f32>, Vec<String>), String> {
        let p = prep();
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        p.apply(
            |_, name| values.iter().find(|(n, _)| *n == name).map(|(_, v)| v),
            &mut out,
            &mut warnings,
        )?;
        Ok((out, warnings))
    }

    #[test]
    fn encodes_scales_clips_and_fills() {
        let (out, w) = run(&[
            ("x", RawValue::Number(5.0)),
            ("c", RawValue::Text("b".into())),
            ("o", RawValue::Text("hi".into())),
        ])
        .unwrap();
        assert_eq!(out, vec![2.0, 0.0, 1.0, 0.0, 1.0]);
        assert!(w.is_empty());
        // Missing x is filled with 2 → 0.5; a number names category "1"; o filled with "lo".
        let (out, _) = run(&[
            ("x", RawValue::Text("NA".into())),
            ("c", RawValue::Number(1.0)),
        ])
        .unwrap();
        assert_eq!(out, vec![0.5, 0.0, 0.0, 1.0, 0.0]);
        // Clipped at 10 → 4.5.
        let (out, _) = run(&[
            ("x", RawValue::Number(1e6)),
            ("c", RawValue::Text("a".into())),
        ])
        .unwrap();
        assert_eq!(out[0], 4.5);
        assert_eq!(prep().width(), 5);
        assert_eq!(prep().untransform_target(0.5), 105.0);
    }

    #[test]
    fn unknown_category_is_a_warning_and_bad_values_are_errors() {
        let (out, w) = run(&[
            ("x", RawValue::Number(1.0)),
            ("c", RawValue::Text("zzz".into())),
        ])
        .unwrap();
        assert_eq!(&out[1..4], &[0.0, 0.0, 0.0]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("feature 'c'") && w[0].contains("zzz"),
            "{w:?}"
        );
        let err = run(&[
            ("x", RawValue::Text("abc".into())),
            ("c", RawValue::Text("a".into())),
        ])
        .unwrap_err();
        assert!(err.contains("feature 'x'") && err.contains("abc"), "{err}");
        let err = run(&[("x", RawValue::Number(1.0))]).unwrap_err();
        assert!(err.contains("feature 'c' is missing"), "{err}");
    }
}

// === fitting (training) ===

/// How training cleans and encodes its features (the job spec's `preprocessing`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessOptions {
    /// Missing cells: one strategy for every column, or a default plus per-column ones.
    pub missing: MissingPolicy,
    /// Drop exact duplicate rows before splitting (counted in the report).
    pub drop_duplicates: bool,
    /// Optional outlier handling for numeric features, fitted on the training split.
    pub outliers: Option<OutlierOptions>,
    /// Encoding of categorical features.
    pub categorical: Encoding,
    /// Scaling of numeric features (and ordinal codes).
    pub scale: Scale,
    /// Regression: train on a standardized target, answer in original units.
    pub standardize_target: bool,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        PreprocessOptions {
            missing: MissingPolicy::All(MissingStrategy::Mean),
            drop_duplicates: true,
            outliers: None,
            categorical: Encoding::OneHot,
            scale: Scale::Standard,
            standardize_target: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MissingPolicy {
    All(MissingStrategy),
    PerColumn {
        default: MissingStrategy,
        #[serde(default)]
        columns: std::collections::BTreeMap<String, MissingStrategy>,
    },
}

impl MissingPolicy {
    fn for_column(&self, name: &str) -> &MissingStrategy {
        match self {
            MissingPolicy::All(s) => s,
            MissingPolicy::PerColumn { default, columns } => columns.get(name).unwrap_or(default),
        }
    }
}

/// What to do with a missing cell. Categorical columns fill `mean`/`median` with the most
/// frequent category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissingStrategy {
    Drop,
    Mean,
    Median,
    MostFrequent,
    Constant(ConstantValue),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ConstantValue {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierOptions {
    pub method: OutlierMethod,
    /// z-score: |x - mean| > threshold·std (default 3); IQR: outside
    /// [q1 - threshold·iqr, q3 + threshold·iqr] (default 1.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub action: OutlierAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutlierMethod {
    Zscore,
    Iqr,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutlierAction {
    #[default]
    Clip,
    Drop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    #[default]
    Standard,
    Minmax,
    None,
}

/// A feature column as training sees it (a view over the dataset's typed table).
#[derive(Debug, Clone, Copy)]
pub enum ColumnRef<'a> {
    /// NaN marks a missing (or unparseable) cell.
    Numeric(&'a [f64]),
    /// `u32::MAX` marks a missing cell.
    Category {
        codes: &'a [u32],
        levels: &'a [String],
    },
}

/// Missing category code.
pub const MISSING_CODE: u32 = u32::MAX;

impl ColumnRef<'_> {
    fn is_missing(&self, row: usize) -> bool {
        match self {
            ColumnRef::Numeric(v) => v[row].is_nan(),
            ColumnRef::Category { codes, .. } => codes[row] == MISSING_CODE,
        }
    }
}

/// What each preprocessing step did, per column (the job's report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    pub name: String,
    pub kind: String,
    /// Missing cells (empty, `NA`, …) in the dataset.
    pub missing: usize,
    /// Unparseable cells of a numeric column in the dataset (typos), treated as missing.
    pub invalid: usize,
    /// Missing or invalid cells filled, in the rows used for training and validation.
    pub filled: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_value: Option<serde_json::Value>,
    /// Training rows dropped because this column was missing.
    pub rows_dropped_missing: usize,
    /// Values clipped as outliers, in the rows used for training and validation.
    pub clipped: usize,
    /// Training rows dropped as outliers of this column.
    pub rows_dropped_outliers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

/// What preparing a job's data did: rows kept and dropped, the split, and each column's
/// cleaning. Stored with the job and in the trained model's training information.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    pub rows: usize,
    pub duplicates_dropped: usize,
    pub missing_target_dropped: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Training rows dropped by the missing-value and outlier steps (in `columns`).
    pub train_rows_dropped: usize,
    /// Validation rows that could not be encoded (missing in a `drop` column).
    pub validation_rows_dropped: usize,
    /// Validation cells holding a category unseen in training (encoded as unknown).
    pub validation_unknown_categories: usize,
    pub columns: Vec<ColumnReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetReport>,
}

/// The target column in a [`DataReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_counts: Vec<usize>,
    /// `[shift, scale]` of a standardized regression target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardized: Option<[f64; 2]>,
}

/// The fitted preprocessing, its report and the training rows that survive it.
pub struct Fitted {
    pub preprocessing: Preprocessing,
    pub columns: Vec<ColumnReport>,
    /// Training rows kept (in the given order), after drops for missing values and outliers.
    pub kept: Vec<usize>,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

fn std_pop(xs: &[f64], m: f64) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt()
    }
}

/// Linear-interpolated quantile of sorted values (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Fits the preprocessing on the training rows only. `columns` are the raw feature columns
/// in signature order. Errors name the column (e.g. a constant fill of the wrong type).
pub fn fit(
    columns: &[(&str, ColumnRef)],
    rows: &[usize],
    opts: &PreprocessOptions,
) -> Result<Fitted, String> {
    let mut reports: Vec<ColumnReport> = columns
        .iter()
        .map(|(name, c)| ColumnReport {
            name: (*name).to_owned(),
            kind: match c {
                ColumnRef::Numeric(_) => "numeric".into(),
                ColumnRef::Category { .. } => "categorical".into(),
            },
            missing: rows.iter().filter(|&&r| c.is_missing(r)).count(),
            ..Default::default()
        })
        .collect();
    // 1. Rows dropped for missing values (columns whose strategy is `drop`).
    let mut kept: Vec<usize> = Vec::with_capacity(rows.len());
    for &r in rows {
        let first_bad = columns.iter().position(|(name, c)| {
            c.is_missing(r) && *opts.missing.for_column(name) == MissingStrategy::Drop
        });
        match first_bad {
            Some(i) => reports[i].rows_dropped_missing += 1,
            None => kept.push(r),
        }
    }
    // 2. Outlier bounds on numeric columns, from the kept rows' present values.
    let mut clips: Vec<Option<[f64; 2]>> = vec![None; columns.len()];
    if let Some(o) = &opts.outliers {
        for (i, (_, c)) in columns.iter().enumerate() {
            let ColumnRef::Numeric(v) = c else { continue };
            let mut present: Vec<f64> =
                kept.iter().map(|&r| v[r]).filter(|x| !x.is_nan()).collect();
            if present.len() < 2 {
                continue;
            }
            let bounds = match o.method {
                OutlierMethod::Zscore => {
                    let t = o.threshold.unwrap_or(3.0);
                    let m = mean(&present);
                    let s = std_pop(&present, m);
                    [m - t * s, m + t * s]
                }
                OutlierMethod::Iqr => {
                    let t = o.threshold.unwrap_or(1.5);
                    present.sort_by(f64::total_cmp);
                    let (q1, q3) = (quantile(&present, 0.25), quantile(&present, 0.75));
                    [q1 - t * (q3 - q1), q3 + t * (q3 - q1)]
                }
            };
            match o.action {
                OutlierAction::Clip => {
                    reports[i].clipped = kept
                        .iter()
                        .filter(|&&r| v[r] < bounds[0] || v[r] > bounds[1])
                        .count();
                    clips[i] = Some(bounds);
                }
                OutlierAction::Drop => {
                    let before = kept.len();
                    kept.retain(|&r| v[r].is_nan() || (bounds[0]..=bounds[1]).contains(&v[r]));
                    reports[i].rows_dropped_outliers = before - kept.len();
                }
            }
        }
    }
    // 3. Fill values, categories and scaling, from the kept rows.
    let mut features = Vec::with_capacity(columns.len());
    for (i, (name, c)) in columns.iter().enumerate() {
        let strategy = opts.missing.for_column(name);
        let filled = kept.iter().filter(|&&r| c.is_missing(r)).count();
        let feature = match *c {
            ColumnRef::Numeric(v) => {
                let clip = clips[i];
                let clipped = |x: f64| clip.map_or(x, |[lo, hi]| x.clamp(lo, hi));
                let mut present: Vec<f64> = kept
                    .iter()
                    .map(|&r| v[r])
                    .filter(|x| !x.is_nan())
                    .map(clipped)
                    .collect();
                let fill = match strategy {
                    MissingStrategy::Drop => None,
                    MissingStrategy::Mean => Some(mean(&present)),
                    MissingStrategy::Median => {
                        present.sort_by(f64::total_cmp);
                        Some(quantile(&present, 0.5))
                    }
                    MissingStrategy::MostFrequent => {
                        let mut counts: Vec<(f64, usize)> = Vec::new();
                        let mut sorted = present.clone();
                        sorted.sort_by(f64::total_cmp);
                        for x in sorted {
                            match counts.last_mut() {
                                Some((y, n)) if *y == x => *n += 1,
                                _ => counts.push((x, 1)),
                            }
                        }
                        // Ties go to the smallest value (as scikit-learn's SimpleImputer).
                        counts
                            .iter()
                            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.total_cmp(&a.0)))
                            .map(|(x, _)| *x)
                    }
                    MissingStrategy::Constant(ConstantValue::Number(x)) => Some(*x),
                    MissingStrategy::Constant(ConstantValue::Text(t)) => {
                        return Err(format!(
                        "column '{name}' is numeric: its constant fill must be a number, got {t:?}"
                    ))
                    }
                };
                // Statistics for scaling include filled cells, as the model will see them.
                let mut seen: Vec<f64> = kept
                    .iter()
                    .map(|&r| {
                        if v[r].is_nan() {
                            fill.unwrap_or(0.0)
                        } else {
                            clipped(v[r])
                        }
                    })
                    .collect();
                if seen.is_empty() {
                    seen.push(0.0);
                }
                let (shift, scale) = scaling(opts.scale, &seen);
                if fill.is_some() {
                    reports[i].filled = filled;
                }
                reports[i].fill_value = fill.map(serde_json::Value::from);
                FeatureTransform::Numeric {
                    name: (*name).to_owned(),
                    fill,
                    clip,
                    shift,
                    scale,
                }
            }
            ColumnRef::Category { codes, levels } => {
                let mut counts = vec![0usize; levels.len()];
                for &r in &kept {
                    if codes[r] != MISSING_CODE {
                        counts[codes[r] as usize] += 1;
                    }
                }
                let mut categories: Vec<String> = levels
                    .iter()
                    .zip(&counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|(l, _)| l.clone())
                    .collect();
                categories.sort();
                let most_frequent = levels
                    .iter()
                    .zip(&counts)
                    .filter(|(_, n)| **n > 0)
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .map(|(l, _)| l.clone());
                let fill = match strategy {
                    MissingStrategy::Drop => None,
                    MissingStrategy::Mean
                    | MissingStrategy::Median
                    | MissingStrategy::MostFrequent => most_frequent,
                    MissingStrategy::Constant(ConstantValue::Text(t)) => Some(t.clone()),
                    MissingStrategy::Constant(ConstantValue::Number(x)) => {
                        Some(RawValue::Number(*x).as_category())
                    }
                };
                if fill.is_some() {
                    reports[i].filled = filled;
                }
                reports[i].fill_value = fill.clone().map(serde_json::Value::from);
                reports[i].categories = Some(categories.clone());
                FeatureTransform::Categorical {
                    name: (*name).to_owned(),
                    encoding: opts.categorical,
                    categories,
                    fill,
                }
            }
        };
        features.push(feature);
    }
    Ok(Fitted {
        preprocessing: Preprocessing {
            features,
            target: None,
            input_mean: None,
        },
        columns: reports,
        kept,
    })
}

fn scaling(scale: Scale, xs: &[f64]) -> (f64, f64) {
    match scale {
        Scale::None => (0.0, 1.0),
        Scale::Standard => {
            let m = mean(xs);
            let s = std_pop(xs, m);
            (m, if s > 1e-12 { s } else { 1.0 })
        }
        Scale::Minmax => {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, if hi - lo > 1e-12 { hi - lo } else { 1.0 })
        }
    }
}

impl Preprocessing {
    /// Fits a regression target's standardization on the training values.
    pub fn fit_target(values: &[f64]) -> TargetTransform {
        let (shift, scale) = scaling(Scale::Standard, values);
        TargetTransform { shift, scale }
    }

    /// True when a row can be encoded: every missing cell has a fill value.
    pub fn can_encode(&self, columns: &[(&str, ColumnRef)], row: usize) -> bool {
        self.features.iter().zip(columns).all(|(f, (_, c))| {
            !c.is_missing(row)
                || match f {
                    FeatureTransform::Numeric { fill, .. } => fill.is_some(),
                    FeatureTransform::Categorical { fill, .. } => fill.is_some(),
                }
        })
    }

    /// Encodes `rows` column by column into a row-major `[rows, width]` matrix — the
    /// training-time twin of [`Preprocessing::apply`], giving identical values.
    /// Rows must satisfy [`Preprocessing::can_encode`]. Unknown categories count in `unknown`.
    pub fn encode_rows(
        &self,
        columns: &[(&str, ColumnRef)],
        rows: &[usize],
        unknown: &mut usize,
    ) -> Vec<f32> {
        let width = self.width();
        let mut out = vec![0f32; rows.len() * width];
        let mut offset = 0;
        for (f, (_, c)) in self.features.iter().zip(columns) {
            match (f, c) {
                (
                    FeatureTransform::Numeric {
                        fill,
                        clip,
                        shift,
                        scale,
                        ..
                    },
                    ColumnRef::Numeric(v),
                ) => {
                    for (i, &r) in rows.iter().enumerate() {
                        let x = if v[r].is_nan() {
                            fill.unwrap_or(0.0)
                        } else {
                            v[r]
                        };
                        let x = clip.map_or(x, |[lo, hi]| x.clamp(lo, hi));
                        out[i * width + offset] = ((x - shift) / scale) as f32;
                    }
                }
                (
                    FeatureTransform::Categorical {
                        encoding,
                        categories,
                        fill,
                        ..
                    },
                    ColumnRef::Category { codes, levels },
                ) => {
                    // Map dataset level index → category index once.
                    let map: Vec<Option<usize>> = levels
                        .iter()
                        .map(|l| categories.iter().position(|c| c == l))
                        .collect();
                    let fill_idx = fill
                        .as_ref()
                        .and_then(|f| categories.iter().position(|c| c == f));
                    for (i, &r) in rows.iter().enumerate() {
                        let idx = if codes[r] == MISSING_CODE {
                            fill_idx
                        } else {
                            map[codes[r] as usize]
                        };
                        if idx.is_none() {
                            *unknown += 1;
                        }
                        match encoding {
                            Encoding::OneHot => {
                                if let Some(k) = idx {
                                    out[i * width + offset + k] = 1.0;
                                }
                            }
                            Encoding::Ordinal => {
                                out[i * width + offset] = idx.map_or(-1.0, |k| k as f32)
                            }
                        }
                    }
                }
                (f, _) => panic!(
                    "feature '{}' was fitted on a column of another kind",
                    f.name()
                ),
            }
            offset += f.width();
        }
        out
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    #[test]
    fn fits_on_training_rows_and_encodes_like_apply() {
        let nan = f64::NAN;
        let x = [1.0, 2.0, nan, 4.0, 100.0, 3.0];
        let levels = vec!["a".to_string(), "b".to_string(), "z".to_string()];
        let codes = [0, 1, MISSING_CODE, 0, 1, 2];
        let cols = [
            ("x", ColumnRef::Numeric(&x)),
            (
                "c",
                ColumnRef::Category {
                    codes: &codes,
                    levels: &levels,
                },
            ),
        ];
        // Row 5 is held out: category "z" is unseen in training.
        let opts = PreprocessOptions {
            outliers: Some(OutlierOptions {
                method: OutlierMethod::Iqr,
                threshold: Some(1.5),
                action: OutlierAction::Clip,
            }),
            ..Default::default()
        };
        let fitted = fit(&cols, &[0, 1, 2, 3, 4], &opts).unwrap();
        let p = &fitted.preprocessing;
        assert_eq!(fitted.kept, vec![0, 1, 2, 3, 4]);
        assert_eq!(fitted.columns[0].missing, 1);
        assert_eq!(fitted.columns[0].filled, 1);
        assert_eq!(fitted.columns[0].clipped, 1, "100 is an outlier");
        assert_eq!(
            fitted.columns[1].categories.as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        // Training-time encoding equals request-time encoding.
        let mut unknown = 0;
        let m = p.encode_rows(&cols, &[0, 2, 4, 5], &mut unknown);
        assert_eq!(unknown, 1);
        for (i, r) in [0usize, 2, 4, 5].iter().enumerate() {
            let xv = if x[*r].is_nan() {
                RawValue::Missing
            } else {
                RawValue::Number(x[*r])
            };
            let cv = if codes[*r] == MISSING_CODE {
                RawValue::Missing
            } else {
                RawValue::Text(levels[codes[*r] as usize].clone())
            };
            let vals = [("x", xv), ("c", cv)];
            let (mut out, mut w) = (Vec::new(), Vec::new());
            p.apply(
                |_, n| vals.iter().find(|(k, _)| *k == n).map(|(_, v)| v),
                &mut out,
                &mut w,
            )
            .unwrap();
            assert_eq!(&m[i * 3..i * 3 + 3], &out[..], "row {r}");
        }
    }

    #[test]
    fn drop_strategies_and_options_parse() {
        let nan = f64::NAN;
        let x = [1.0, nan, 3.0, 50.0];
        let cols = [("x", ColumnRef::Numeric(&x))];
        let opts: PreprocessOptions = serde_json::from_value(serde_json::json!({
            "missing": {"default": "mean", "columns": {"x": "drop"}},
            "outliers": {"method": "zscore", "threshold": 1.0, "action": "drop"},
            "scale": "minmax"
        }))
        .unwrap();
        let f = fit(&cols, &[0, 1, 2, 3], &opts).unwrap();
        assert_eq!(f.columns[0].rows_dropped_missing, 1);
        assert_eq!(f.columns[0].rows_dropped_outliers, 1);
        assert_eq!(f.kept, vec![0, 2]);
        let FeatureTransform::Numeric {
            shift, scale, fill, ..
        } = &f.preprocessing.features[0]
        else {
            panic!()
        };
        assert_eq!((*shift, *scale, *fill), (1.0, 2.0, None));
        let o: PreprocessOptions = serde_json::from_value(
            serde_json::json!({"missing": {"constant": 0}, "outliers": null}),
        )
        .unwrap();
        assert_eq!(
            *o.missing.for_column("any"),
            MissingStrategy::Constant(ConstantValue::Number(0.0))
        );
        assert!(
            serde_json::from_value::<PreprocessOptions>(serde_json::json!({"scale": "log"}))
                .is_err()
        );
    }
}
