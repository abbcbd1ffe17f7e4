//! Evaluation: a version's loss and metrics on a labelled table (`:evaluate`, `kiln
//! evaluate`).
//!
//! [`EvalData::of`] checks the table against the model (its feature columns, the target
//! column) and decides which rows can be used, counting the others by reason; it keeps the
//! table as it is and encodes rows chunk by chunk (through the fitted preprocessing, as
//! training encodes them), so a large dataset is never held twice. The server computes each
//! chunk through the version's batcher ([`Serving::evaluate`], as predictions are); the CLI
//! runs the model directly ([`evaluate_offline`]). Either way an [`Evaluator`] accumulates
//! the outputs with training's metric code (`training::metrics`).

use std::time::Duration;

use super::{Rows, Serving};
use crate::dataset::{ColumnValues, Table, MISSING_CODE};
use crate::error::Error;
use crate::model::format::{Metrics, Task, TrainingBlock};
use crate::model::Model;
use crate::preprocess::{ColumnRef, FeatureTransform};
use crate::registry::LoadedVersion;
use crate::training::metrics::{
    roc_auc, ClassScores, ConfusionMatrix, RegressionStats, ResidualSummary,
};

/// Rows encoded and computed at a time: one request's worth for the batcher.
pub const CHUNK_ROWS: usize = 1024;

/// What happened to the rows of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowReport {
    /// Rows in the table.
    pub rows: usize,
    /// Rows evaluated.
    pub used: usize,
    /// Dropped: the target cell is missing.
    pub missing_target: usize,
    /// Dropped: the target is a label the classifier does not know.
    pub unknown_label: usize,
    /// Dropped: a feature is missing and the model has no fill value for it.
    pub missing_feature: usize,
    /// Used, with a category the model did not see in training (encoded as unseen).
    pub unknown_categories: usize,
}

/// A feature column as the model needs it: the table's, or converted when the table typed
/// it otherwise (numbers for a categorical feature, texts for a numeric one).
enum Col<'t> {
    Table(ColumnRef<'t>),
    Numeric(Vec<f64>),
    Category {
        codes: Vec<u32>,
        levels: Vec<String>,
    },
}

impl Col<'_> {
    fn as_ref(&self) -> ColumnRef<'_> {
        match self {
            Col::Table(c) => *c,
            Col::Numeric(v) => ColumnRef::Numeric(v),
            Col::Category { codes, levels } => ColumnRef::Category { codes, levels },
        }
    }
}

/// A number as a category name, as requests and datasets name them (`3`, not `3.0`).
fn category_name(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// A labelled table checked against a model: the usable rows and their targets.
pub struct EvalData<'t> {
    model: &'t Model,
    target: String,
    columns: Vec<(&'t str, Col<'t>)>,
    /// Class index or value of each usable row.
    actual: Vec<f32>,
    /// The usable rows, in table order.
    rows: Vec<usize>,
    report: RowReport,
}

impl<'t> EvalData<'t> {
    /// Checks `table` against `model`: every feature column present, the target column
    /// (`target`, or the one the model was trained on) present and of the task's kind.
    pub fn of(model: &'t Model, table: &'t Table, target: Option<&str>) -> Result<Self, Error> {
        let invalid = |m: String| Error::InvalidInput(m);
        // kiln's training block names its target; a free-form one may too.
        let trained_on = match &model.spec().training {
            Some(TrainingBlock::Kiln(info)) => Some(info.target.as_str()),
            Some(TrainingBlock::Other(block)) => block.get("target").and_then(|t| t.as_str()),
            None => None,
        };
        let target = target.or(trained_on).ok_or_else(|| {
            invalid(
                "this model does not name the column it predicts: give \"target\" (the column of actual values)"
                    .into(),
            )
        })?;
        let Some(features) = model.signature().features else {
            return Err(invalid(
                "this model has no feature names, so a table cannot be matched to its input: evaluate it with :predict"
                    .into(),
            ));
        };
        let column = |name: &str| {
            table.column(name).ok_or_else(|| {
                invalid(format!(
                    "column '{name}' is not in the data; the model needs {features:?} and the target '{target}'"
                ))
            })
        };
        let transforms = model.spec().preprocessing.as_ref().map(|p| &p.features);
        let mut columns = Vec::with_capacity(features.len());
        for (i, name) in features.iter().enumerate() {
            let c = column(name)?;
            let categorical = matches!(
                transforms.map(|t| &t[i]),
                Some(FeatureTransform::Categorical { .. })
            );
            let col = match (&c.values, categorical) {
                (ColumnValues::Numeric(v), false) => Col::Table(ColumnRef::Numeric(v)),
                (ColumnValues::Category { codes, levels }, true) => {
                    Col::Table(ColumnRef::Category { codes, levels })
                }
                (ColumnValues::Numeric(v), true) => {
                    let mut levels: Vec<String> = Vec::new();
                    let codes = v
                        .iter()
                        .map(|&x| {
                            if x.is_nan() {
                                return MISSING_CODE;
                            }
                            let name = category_name(x);
                            match levels.iter().position(|l| *l == name) {
                                Some(k) => k as u32,
                                None => {
                                    levels.push(name);
                                    (levels.len() - 1) as u32
                                }
                            }
                        })
                        .collect();
                    Col::Category { codes, levels }
                }
                // Texts that are not numbers read as missing, as invalid cells of a numeric
                // column do in datasets.
                (ColumnValues::Category { codes, levels }, false) => {
                    let values: Vec<f64> = levels
                        .iter()
                        .map(|l| l.trim().parse::<f64>().unwrap_or(f64::NAN))
                        .collect();
                    Col::Numeric(
                        codes
                            .iter()
                            .map(|&c| {
                                if c == MISSING_CODE {
                                    f64::NAN
                                } else {
                                    values[c as usize]
                                }
                            })
                            .collect(),
                    )
                }
            };
            columns.push((name.as_str(), col));
        }
        let targets = actual_values(model, column(target)?, target)?;
        let mut report = RowReport {
            rows: table.n_rows,
            ..RowReport::default()
        };
        let mut rows = Vec::with_capacity(table.n_rows);
        let mut actual = Vec::with_capacity(table.n_rows);
        let refs: Vec<(&str, ColumnRef)> = columns.iter().map(|(n, c)| (*n, c.as_ref())).collect();
        for (r, y) in targets.into_iter().enumerate() {
            let encodable = match &model.spec().preprocessing {
                Some(p) => p.can_encode(&refs, r),
                None => refs.iter().all(|(_, c)| match c {
                    ColumnRef::Numeric(v) => !v[r].is_nan(),
                    ColumnRef::Category { .. } => false,
                }),
            };
            match y {
                Target::Missing => report.missing_target += 1,
                Target::UnknownLabel => report.unknown_label += 1,
                Target::Value(_) if !encodable => report.missing_feature += 1,
                Target::Value(y) => {
                    rows.push(r);
                    actual.push(y);
                }
            }
        }
        report.used = rows.len();
        Ok(EvalData {
            model,
            target: target.to_owned(),
            columns,
            actual,
            rows,
            report,
        })
    }

    /// The rows that will be evaluated.
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    /// Model input and actual values of usable rows `start..end`; counts unknown categories.
    fn chunk(&mut self, start: usize, end: usize) -> (Vec<f32>, Vec<f32>) {
        let rows = &self.rows[start..end];
        let refs: Vec<(&str, ColumnRef)> =
            self.columns.iter().map(|(n, c)| (*n, c.as_ref())).collect();
        let x = match &self.model.spec().preprocessing {
            Some(p) => p.encode_rows(&refs, rows, &mut self.report.unknown_categories),
            None => {
                let mut x = Vec::with_capacity(rows.len() * refs.len());
                for &r in rows {
                    for (_, c) in &refs {
                        if let ColumnRef::Numeric(v) = c {
                            x.push(v[r] as f32);
                        }
                    }
                }
                x
            }
        };
        (x, self.actual[start..end].to_vec())
    }
}

enum Target {
    Value(f32),
    Missing,
    UnknownLabel,
}

/// The actual value of every row: a class index (classifiers) or a number.
fn actual_values(
    model: &Model,
    column: &crate::dataset::Column,
    name: &str,
) -> Result<Vec<Target>, Error> {
    let labels = model.labels();
    let class = |label: &str| {
        labels
            .iter()
            .position(|l| l == label)
            .map_or(Target::UnknownLabel, |k| Target::Value(k as f32))
    };
    Ok(match (&column.values, model.task()) {
        (ColumnValues::Numeric(v), Task::Regression) => v
            .iter()
            .map(|&y| {
                if y.is_nan() {
                    Target::Missing
                } else {
                    Target::Value(y as f32)
                }
            })
            .collect(),
        (ColumnValues::Numeric(v), Task::Classification) => v
            .iter()
            .map(|&y| {
                if y.is_nan() {
                    Target::Missing
                } else {
                    class(&category_name(y))
                }
            })
            .collect(),
        (ColumnValues::Category { codes, levels }, Task::Classification) => codes
            .iter()
            .map(|&c| {
                if c == MISSING_CODE {
                    Target::Missing
                } else {
                    class(&levels[c as usize])
                }
            })
            .collect(),
        (ColumnValues::Category { .. }, Task::Regression) => {
            return Err(Error::InvalidInput(format!(
                "target column '{name}' holds texts; a regression model needs numbers"
            )))
        }
    })
}

/// A version's quality on a table.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub task: Task,
    /// The column of actual values.
    pub target: String,
    pub rows: RowReport,
    /// The task's metrics, with `loss`: log loss of the scores (classifiers) or the mean
    /// squared error in original units (regression).
    pub metrics: Metrics,
    /// `log_loss` or `mse`.
    pub loss_name: &'static str,
    /// Each class's label and scores (classifiers).
    pub per_class: Vec<(String, ClassScores)>,
    /// Binary classifiers: the area under the ROC curve of the second label's score.
    pub roc_auc: Option<f64>,
    /// Regression: the distribution of predicted − actual.
    pub residuals: Option<ResidualSummary>,
}

/// Accumulates the outputs of chunks against their actual values.
pub struct Evaluator {
    task: Task,
    confusion: ConfusionMatrix,
    regression: RegressionStats,
    loss_sum: f64,
    count: u64,
    /// Binary classifiers: the second label's score and whether it is the actual class.
    ranking: Vec<(f32, bool)>,
    residuals: Vec<f32>,
}

impl Evaluator {
    pub fn new(model: &Model) -> Self {
        Evaluator {
            task: model.task(),
            confusion: ConfusionMatrix::new(model.labels().len().max(1)),
            regression: RegressionStats::new(model.output_len().max(1)),
            loss_sum: 0.0,
            count: 0,
            ranking: Vec::new(),
            residuals: Vec::new(),
        }
    }

    /// Adds a chunk: the model's outputs (`values`: regression in original units) and the
    /// actual values (class indices or numbers), row by row.
    pub fn add(&mut self, model: &Model, values: &[f32], actual: &[f32]) -> Result<(), Error> {
        let width = model.output_len().max(1);
        let shape = |e: crate::training::TrainingError| Error::Forward(e.to_string());
        match self.task {
            Task::Classification => {
                let binary = model.labels().len() == 2;
                let mut predicted = Vec::with_capacity(actual.len());
                let mut classes = Vec::with_capacity(actual.len());
                for (row, &y) in values.chunks(width).zip(actual) {
                    let scores: Vec<f32> = model.scores(row).collect();
                    let k = y as usize;
                    let p = f64::from(scores.get(k).copied().unwrap_or(0.0));
                    self.loss_sum -= p.max(1e-7).ln();
                    predicted.push(model.scores(row).best());
                    classes.push(k);
                    if binary {
                        self.ranking.push((scores[1], k == 1));
                    }
                }
                self.confusion.add(&predicted, &classes).map_err(shape)?;
            }
            Task::Regression => {
                self.regression.add(values, actual).map_err(shape)?;
                for (p, a) in values.iter().zip(actual) {
                    let e = f64::from(p - a);
                    self.loss_sum += e * e;
                    self.residuals.push(p - a);
                }
            }
        }
        self.count += actual.len() as u64;
        Ok(())
    }

    pub fn finish(mut self, model: &Model, data: &EvalData) -> Evaluation {
        let mut metrics = match self.task {
            Task::Classification => self.confusion.metrics(),
            Task::Regression => self.regression.metrics(),
        };
        if self.count > 0 {
            let n = match self.task {
                Task::Classification => self.count as f64,
                Task::Regression => self.residuals.len() as f64,
            };
            metrics.loss = Some(self.loss_sum / n);
        }
        let per_class = match self.task {
            Task::Classification => model
                .labels()
                .iter()
                .enumerate()
                .map(|(c, l)| (l.clone(), self.confusion.class_scores(c)))
                .collect(),
            Task::Regression => Vec::new(),
        };
        let (scores, positive): (Vec<f32>, Vec<bool>) = self.ranking.into_iter().unzip();
        Evaluation {
            task: self.task,
            target: data.target.clone(),
            rows: data.report,
            metrics,
            loss_name: match self.task {
                Task::Classification => "log_loss",
                Task::Regression => "mse",
            },
            per_class,
            roc_auc: roc_auc(&scores, &positive),
            residuals: ResidualSummary::of(&mut self.residuals),
        }
    }
}

impl Serving<'_> {
    /// Evaluates a version on `data`, [`CHUNK_ROWS`] rows at a time through its batcher (as
    /// predictions are computed), each chunk by `timeout`.
    pub async fn evaluate(
        &self,
        lv: &LoadedVersion,
        mut data: EvalData<'_>,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Evaluation, Error> {
        let model = &*lv.layers()?.model;
        let mut evaluator = Evaluator::new(model);
        let chunk = CHUNK_ROWS.min(self.max_rows()).max(1);
        let mut start = 0;
        while start < data.n_rows() {
            let end = (start + chunk).min(data.n_rows());
            let (x, y) = data.chunk(start, end);
            let rows = Rows {
                data: x,
                n_rows: end - start,
            };
            let prediction = self.predict(lv, rows, timeout, span).await?;
            evaluator.add(model, prediction.values(), &y)?;
            start = end;
        }
        Ok(evaluator.finish(model, &data))
    }
}

/// [`Serving::evaluate`] without a server: the model runs on this thread (`kiln evaluate`).
pub fn evaluate_offline(model: &Model, mut data: EvalData<'_>) -> Result<Evaluation, Error> {
    let mut evaluator = Evaluator::new(model);
    let mut start = 0;
    while start < data.n_rows() {
        let end = (start + CHUNK_ROWS).min(data.n_rows());
        let (x, y) = data.chunk(start, end);
        let mut values = model
            .run_rows(x, end - start)
            .map_err(|e| Error::Forward(e.to_string()))?;
        model.untransform(&mut values);
        evaluator.add(model, &values, &y)?;
        start = end;
    }
    Ok(evaluator.finish(model, &data))
}
