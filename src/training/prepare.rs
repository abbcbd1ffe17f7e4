//! Data preparation for one job: duplicates, missing targets, the (stratified) split, the
//! preprocessing fitted on the training split only, and the encoded matrices — plus the
//! report of what each step did. Runs on the job's thread.

use serde::Serialize;

use super::rng::{streams, Rng};
use super::spec::{number_label, ResolvedSpec};
use crate::dataset::{ColumnValues, Table};
use crate::model::format::Task;
use crate::preprocess::{ColumnRef, ColumnReport, Preprocessing, MISSING_CODE};

/// Matrices ready for the trainer.
pub struct Prepared {
    /// `[n_train, width]`, row-major.
    pub x_train: Vec<f32>,
    /// Class index (classification) or (standardized) value (regression).
    pub y_train: Vec<f32>,
    pub x_val: Vec<f32>,
    pub y_val: Vec<f32>,
    pub width: usize,
    pub preprocessing: Preprocessing,
    pub report: DataReport,
}

impl Prepared {
    pub fn n_train(&self) -> usize {
        self.y_train.len()
    }
    pub fn n_val(&self) -> usize {
        self.y_val.len()
    }
}

/// What preparation did, for the job's report.
#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub class_counts: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standardized: Option<[f64; 2]>,
}

/// Why preparation failed (the job fails with this message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PrepareError(pub String);

fn column_ref<'a>(table: &'a Table, name: &str) -> Result<ColumnRef<'a>, PrepareError> {
    let col = table
        .column(name)
        .ok_or_else(|| PrepareError(format!("column '{name}' is not in the dataset")))?;
    Ok(match &col.values {
        ColumnValues::Numeric(v) => ColumnRef::Numeric(v),
        ColumnValues::Category { codes, levels } => ColumnRef::Category { codes, levels },
    })
}

/// The target of each row: a class index into `labels`, or the value; `None` when missing.
fn targets(table: &Table, spec: &ResolvedSpec) -> Result<Vec<Option<f32>>, PrepareError> {
    let col = column_ref(table, &spec.spec.target)?;
    let task = spec.task();
    Ok(match (col, task) {
        (ColumnRef::Numeric(v), Task::Regression) => v
            .iter()
            .map(|x| (!x.is_nan()).then_some(*x as f32))
            .collect(),
        (ColumnRef::Numeric(v), Task::Classification) => v
            .iter()
            .map(|x| {
                if x.is_nan() {
                    None
                } else {
                    let l = number_label(*x);
                    spec.labels.iter().position(|c| *c == l).map(|i| i as f32)
                }
            })
            .collect(),
        (ColumnRef::Category { codes, levels }, Task::Classification) => {
            let map: Vec<Option<usize>> = levels
                .iter()
                .map(|l| spec.labels.iter().position(|c| c == l))
                .collect();
            codes
                .iter()
                .map(|&c| {
                    if c == MISSING_CODE {
                        None
                    } else {
                        map[c as usize].map(|i| i as f32)
                    }
                })
                .collect()
        }
        (ColumnRef::Category { .. }, Task::Regression) => {
            return Err(PrepareError(format!(
                "target '{}' is categorical",
                spec.spec.target
            )))
        }
    })
}

/// Splits `rows` into (train, validation) by `frac`, stratified by class for
/// classification; deterministic for a seed.
fn split(
    rows: &[usize],
    y: &[Option<f32>],
    frac: f64,
    classes: usize,
    rng: &mut Rng,
) -> (Vec<usize>, Vec<usize>) {
    if frac <= 0.0 {
        return (rows.to_vec(), Vec::new());
    }
    let groups: Vec<Vec<usize>> = if classes > 0 {
        let mut g = vec![Vec::new(); classes];
        for &r in rows {
            g[y[r].expect("missing targets were dropped") as usize].push(r);
        }
        g
    } else {
        vec![rows.to_vec()]
    };
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut g in groups {
        rng.shuffle(&mut g);
        let n_val = ((g.len() as f64) * frac).round() as usize;
        // Keep at least one training row per class.
        let n_val = n_val.min(g.len().saturating_sub(1));
        val.extend_from_slice(&g[..n_val]);
        train.extend_from_slice(&g[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Prepares the job's data from its dataset.
pub fn prepare(table: &Table, spec: &ResolvedSpec) -> Result<Prepared, PrepareError> {
    let opts = &spec.spec.preprocessing;
    let task = spec.task();
    let y = targets(table, spec)?;
    let dup = table.duplicate_rows();
    let mut rows = Vec::with_capacity(table.n_rows);
    let (mut duplicates_dropped, mut missing_target_dropped) = (0, 0);
    for r in 0..table.n_rows {
        if opts.drop_duplicates && dup[r] {
            duplicates_dropped += 1;
        } else if y[r].is_none() {
            missing_target_dropped += 1;
        } else {
            rows.push(r);
        }
    }
    if rows.is_empty() {
        return Err(PrepareError(
            "no rows left after dropping duplicates and rows without a target".into(),
        ));
    }
    let classes = if task == Task::Classification {
        spec.labels.len()
    } else {
        0
    };
    let mut rng = Rng::with_stream(spec.spec.training.seed, streams::SPLIT);
    let (train, val) = split(
        &rows,
        &y,
        spec.spec.training.validation_split,
        classes,
        &mut rng,
    );
    let names = spec.features();
    let columns: Vec<(&str, ColumnRef)> = names
        .iter()
        .map(|n| column_ref(table, n).map(|c| (n.as_str(), c)))
        .collect::<Result<_, _>>()?;
    let fitted = crate::preprocess::fit(&columns, &train, opts).map_err(PrepareError)?;
    let mut preprocessing = fitted.preprocessing;
    let kept_train = fitted.kept;
    if kept_train.is_empty() {
        return Err(PrepareError(
            "no training rows left after the missing-value and outlier steps".into(),
        ));
    }
    let kept_val: Vec<usize> = val
        .iter()
        .copied()
        .filter(|&r| preprocessing.can_encode(&columns, r))
        .collect();
    let mut unknown_train = 0;
    let x_train = preprocessing.encode_rows(&columns, &kept_train, &mut unknown_train);
    let mut unknown_val = 0;
    let x_val = preprocessing.encode_rows(&columns, &kept_val, &mut unknown_val);
    let mut y_train: Vec<f32> = kept_train
        .iter()
        .map(|&r| y[r].expect("kept rows have targets"))
        .collect();
    let mut y_val: Vec<f32> = kept_val
        .iter()
        .map(|&r| y[r].expect("kept rows have targets"))
        .collect();
    let target = match task {
        Task::Classification => {
            let mut counts = vec![0usize; classes];
            for &c in &y_train {
                counts[c as usize] += 1;
            }
            TargetReport {
                name: spec.spec.target.clone(),
                classes: spec.labels.clone(),
                class_counts: counts,
                standardized: None,
            }
        }
        Task::Regression => {
            let standardized = if opts.standardize_target {
                let values: Vec<f64> = y_train.iter().map(|&v| f64::from(v)).collect();
                let t = Preprocessing::fit_target(&values);
                for v in y_train.iter_mut().chain(y_val.iter_mut()) {
                    *v = ((f64::from(*v) - t.shift) / t.scale) as f32;
                }
                preprocessing.target = Some(t);
                Some([t.shift, t.scale])
            } else {
                None
            };
            TargetReport {
                name: spec.spec.target.clone(),
                classes: Vec::new(),
                class_counts: Vec::new(),
                standardized,
            }
        }
    };
    let width = preprocessing.width();
    let report = DataReport {
        rows: table.n_rows,
        duplicates_dropped,
        missing_target_dropped,
        train_rows: kept_train.len(),
        validation_rows: kept_val.len(),
        train_rows_dropped: train.len() - kept_train.len(),
        validation_rows_dropped: val.len() - kept_val.len(),
        validation_unknown_categories: unknown_val,
        columns: fitted.columns,
        target: Some(target),
    };
    Ok(Prepared {
        x_train,
        y_train,
        x_val,
        y_val,
        width,
        preprocessing,
        report,
    })
}
