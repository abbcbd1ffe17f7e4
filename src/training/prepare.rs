//! Data preparation for one job: duplicates, missing targets, the (stratified) split, the
//! preprocessing fitted on the training split only, and the encoded matrices — plus the
//! report of what each step did. Runs on the job's thread.

use super::rng::{streams, Rng};
use super::spec::{number_label, ResolvedSpec};
use crate::dataset::{ColumnValues, Table};
use crate::model::format::Task;
use crate::preprocess::{ColumnRef, FeatureTransform, Preprocessing, MISSING_CODE};

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

    /// Every row as training rows, none for validation (the refit). The transforms stay
    /// the ones fitted on the training rows, so the refit's inputs are encoded exactly as the
    /// run that chose its epoch count saw them.
    pub fn all_rows(&self) -> Prepared {
        let mut x_train = Vec::with_capacity(self.x_train.len() + self.x_val.len());
        x_train.extend_from_slice(&self.x_train);
        x_train.extend_from_slice(&self.x_val);
        let mut y_train = Vec::with_capacity(self.y_train.len() + self.y_val.len());
        y_train.extend_from_slice(&self.y_train);
        y_train.extend_from_slice(&self.y_val);
        Prepared {
            x_train,
            y_train,
            x_val: Vec::new(),
            y_val: Vec::new(),
            width: self.width,
            preprocessing: self.preprocessing.clone(),
            report: self.report.clone(),
        }
    }
}

/// What preparation did (defined beside the per-column reports it holds).
pub use crate::preprocess::{DataReport, TargetReport};

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

/// Rows of `table` that can train: not a dropped duplicate, with a target.
fn usable_rows(
    table: &Table,
    y: &[Option<f32>],
    drop_duplicates: bool,
) -> (Vec<usize>, usize, usize) {
    let dup = table.duplicate_rows();
    let mut rows = Vec::with_capacity(table.n_rows);
    let (mut duplicates, mut missing_target) = (0, 0);
    for r in 0..table.n_rows {
        if drop_duplicates && dup[r] {
            duplicates += 1;
        } else if y[r].is_none() {
            missing_target += 1;
        } else {
            rows.push(r);
        }
    }
    (rows, duplicates, missing_target)
}

fn feature_columns<'a>(
    table: &'a Table,
    names: &'a [String],
) -> Result<Vec<(&'a str, ColumnRef<'a>)>, PrepareError> {
    names
        .iter()
        .map(|n| column_ref(table, n).map(|c| (n.as_str(), c)))
        .collect()
}

/// Cells of `rows` that encoding fills (missing) or clips (outliers), per feature.
fn fills_and_clips(
    p: &Preprocessing,
    columns: &[(&str, ColumnRef)],
    rows: &[usize],
) -> Vec<(usize, usize)> {
    p.features
        .iter()
        .zip(columns)
        .map(|(f, (_, c))| match (f, c) {
            (FeatureTransform::Numeric { clip, .. }, ColumnRef::Numeric(v)) => {
                let filled = rows.iter().filter(|&&r| v[r].is_nan()).count();
                let clipped = clip.map_or(0, |[lo, hi]| {
                    rows.iter().filter(|&&r| v[r] < lo || v[r] > hi).count()
                });
                (filled, clipped)
            }
            (_, ColumnRef::Category { codes, .. }) => (
                rows.iter().filter(|&&r| codes[r] == MISSING_CODE).count(),
                0,
            ),
            (FeatureTransform::Categorical { .. }, ColumnRef::Numeric(_)) => (0, 0),
        })
        .collect()
}

/// Prepares the job's data: validation rows come from `validation` when given (a second
/// dataset with the same columns), else from a (stratified) split of `table`.
pub fn prepare(
    table: &Table,
    spec: &ResolvedSpec,
    validation: Option<&Table>,
) -> Result<Prepared, PrepareError> {
    let opts = &spec.spec.preprocessing;
    let task = spec.task();
    let classes = if task == Task::Classification {
        spec.labels.len()
    } else {
        0
    };
    let y = targets(table, spec)?;
    let (rows, mut duplicates_dropped, mut missing_target_dropped) =
        usable_rows(table, &y, opts.drop_duplicates);
    if rows.is_empty() {
        return Err(PrepareError(
            "no rows left after dropping duplicates and rows without a target".into(),
        ));
    }
    let names = spec.features();
    let columns = feature_columns(table, names)?;
    // The validation rows and their columns: a second table, or a split of this one.
    let y_other;
    let (train, val, val_table, val_y) = match validation {
        Some(vt) => {
            for (name, c) in &columns {
                let other = column_ref(vt, name).map_err(|_| {
                    PrepareError(format!("the validation dataset has no column '{name}'"))
                })?;
                if std::mem::discriminant(c) != std::mem::discriminant(&other) {
                    return Err(PrepareError(format!(
                        "column '{name}' is numeric in one dataset and categorical in the other"
                    )));
                }
            }
            y_other = targets(vt, spec)?;
            let (vrows, vdup, vmissing) = usable_rows(vt, &y_other, opts.drop_duplicates);
            duplicates_dropped += vdup;
            missing_target_dropped += vmissing;
            (rows, vrows, vt, &y_other)
        }
        None => {
            let mut rng = Rng::with_stream(spec.spec.training.seed, streams::SPLIT);
            let (train, val) = split(
                &rows,
                &y,
                spec.spec.training.validation_split,
                classes,
                &mut rng,
            );
            (train, val, table, &y)
        }
    };
    let val_columns = feature_columns(val_table, names)?;
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
        .filter(|&r| preprocessing.can_encode(&val_columns, r))
        .collect();
    let mut unknown_train = 0;
    let x_train = preprocessing.encode_rows(&columns, &kept_train, &mut unknown_train);
    let mut unknown_val = 0;
    let x_val = preprocessing.encode_rows(&val_columns, &kept_val, &mut unknown_val);
    let mut y_train: Vec<f32> = kept_train
        .iter()
        .map(|&r| y[r].expect("kept rows have targets"))
        .collect();
    let mut y_val: Vec<f32> = kept_val
        .iter()
        .map(|&r| val_y[r].expect("kept rows have targets"))
        .collect();
    // Per-column counts over the whole data: what each cleaning step did.
    let mut column_reports = fitted.columns;
    let train_counts = fills_and_clips(&preprocessing, &columns, &kept_train);
    let val_counts = fills_and_clips(&preprocessing, &val_columns, &kept_val);
    for (i, rep) in column_reports.iter_mut().enumerate() {
        let mut missing = 0;
        let mut invalid = 0;
        for t in std::iter::once(table).chain(validation) {
            if let Some(c) = t.column(&rep.name) {
                missing += c.missing;
                invalid += c.invalid;
            }
        }
        rep.missing = missing;
        rep.invalid = invalid;
        if rep.fill_value.is_some() {
            rep.filled = train_counts[i].0 + val_counts[i].0;
        }
        rep.clipped = train_counts[i].1 + val_counts[i].1;
    }
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
    preprocessing.input_mean = Some(column_means(&x_train, width));
    let report = DataReport {
        rows: table.n_rows + validation.map_or(0, |v| v.n_rows),
        duplicates_dropped,
        missing_target_dropped,
        train_rows: kept_train.len(),
        validation_rows: kept_val.len(),
        train_rows_dropped: train.len() - kept_train.len(),
        validation_rows_dropped: val.len() - kept_val.len(),
        validation_unknown_categories: unknown_val,
        columns: column_reports,
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

/// The mean of each column of a row-major `[rows, width]` matrix (summed in f64): the
/// training rows' mean input, which explanations start from.
fn column_means(x: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0f64; width];
    for row in x.chunks_exact(width.max(1)) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += f64::from(*v);
        }
    }
    let n = (x.len() / width.max(1)).max(1) as f64;
    sums.into_iter().map(|s| (s / n) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::spec::JobSpec;

    fn dirty() -> Table {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/iris_dirty.csv");
        crate::dataset::read_table(std::path::Path::new(path), None, None).unwrap()
    }

    /// tests/data/iris_dirty.csv (see tests/data/README.md and the manifest): 7 missing
    /// cells, 4 typos in numeric columns, 1 outlier (57.0 for 5.7), 4 redundant rows.
    #[test]
    fn the_dirty_data_report_counts_exactly_what_was_dirtied() {
        let table = dirty();
        let spec = JobSpec::from_json(
            br#"{"model": "m", "dataset": "d", "target": "label",
                 "preprocessing": {"missing": "mean", "outliers": {"method": "zscore", "threshold": 3.0, "action": "clip"}}}"#,
        )
        .unwrap()
        .resolve(&table)
        .unwrap();
        let p = prepare(&table, &spec, None).unwrap();
        let r = &p.report;
        assert_eq!(r.rows, 123);
        assert_eq!(r.duplicates_dropped, 4);
        let sum = |f: fn(&crate::preprocess::ColumnReport) -> usize| {
            r.columns.iter().map(f).sum::<usize>()
        };
        assert_eq!(sum(|c| c.missing), 7);
        assert_eq!(sum(|c| c.invalid), 4);
        assert_eq!(sum(|c| c.filled), 11);
        assert_eq!(sum(|c| c.clipped), 1);
        let sl = r
            .columns
            .iter()
            .find(|c| c.name == "sepal_length_cm")
            .unwrap();
        assert_eq!((sl.missing, sl.invalid, sl.clipped), (2, 1, 1));
        assert_eq!(r.train_rows + r.validation_rows, 119);
        assert!(p.x_train.iter().chain(&p.x_val).all(|x| x.is_finite()));
    }

    #[test]
    fn a_second_dataset_validates_instead_of_a_split() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/iris.csv");
        let table = crate::dataset::read_table(std::path::Path::new(path), None, None).unwrap();
        let spec = JobSpec::from_json(br#"{"model": "m", "dataset": "d", "target": "species"}"#)
            .unwrap()
            .resolve(&table)
            .unwrap();
        let p = prepare(&table, &spec, Some(&table)).unwrap();
        // Duplicates are dropped in each table: 119 rows each.
        assert_eq!((p.n_train(), p.n_val()), (119, 119));
        assert_eq!(p.x_train, p.x_val);
        // Standardized features average zero over the training rows: the stored mean input
        // (the explanation baseline) is that point.
        let mean = p.preprocessing.input_mean.as_deref().unwrap();
        assert_eq!(mean.len(), p.width);
        assert!(mean.iter().all(|m| m.abs() < 1e-5), "{mean:?}");
    }
}
