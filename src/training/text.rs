//! Fine-tuning a pretrained transformer as a training job: a spec with `base_model` names a
//! loaded text embedding model; its text feature columns (one text, or two read as a pair)
//! are encoded by that model's frozen encoder, once, into the pooled embedding of each row;
//! the job's usual path — cleaning, split, preprocessing, the loop, metrics, checkpoints,
//! events — trains a classification head on those embedding columns; and the result is
//! packaged as a transformer version: the base model's files with the head
//! ([`crate::text::format::Head::Kiln`], tensors under `head.`) and the labels.
//!
//! ```text
//! submit: resolve against a placeholder table (the target + `hidden` zero columns)
//! job:    base files → TextModel → embed each row's text (batches of 32, by length)
//!         → derived table (embedding columns + target) → prepare → train → package
//! ```
//!
//! Unfreezing encoder layers (`fine_tune.layers` > 0) is refused: it needs backpropagation
//! through candle-transformers' BERT, which this kiln does not do (docs/text-models.md).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::run::RunResult;
use super::spec::{JobSpec, ResolvedSpec, SpecError};
use crate::dataset::{Column, ColumnType, ColumnValues, Table};
use crate::model::format::Task;
use crate::preprocess::MISSING_CODE;
use crate::store::ModelFiles;
use crate::text::format::{Head, TextSpec, TextTask};
use crate::text::{TextFiles, TextModel, Tokens, CONFIG_FILE, TOKENIZER_FILE};

/// Names of the embedding columns of the derived table: `__embedding_0`, ….
pub const EMBEDDING_PREFIX: &str = "__embedding_";

/// Inputs encoded per forward pass while embedding a table.
const EMBED_BATCH: usize = 32;

fn bad<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

fn embedding_names(hidden: usize) -> Vec<String> {
    (0..hidden)
        .map(|i| format!("{EMBEDDING_PREFIX}{i}"))
        .collect()
}

/// The base model a text job encodes with, as the job system found it.
pub struct Base<'a> {
    pub name: &'a str,
    pub version: u64,
    pub model: &'a TextModel,
}

/// The text columns of a text job: its features (default: every column but the target),
/// each a text (category) column; one, or two read as a pair.
fn text_columns(spec: &JobSpec, table: &Table) -> Result<Vec<String>, SpecError> {
    let features: Vec<String> = match &spec.features {
        Some(f) => f.clone(),
        None => table
            .columns
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| *n != spec.target)
            .collect(),
    };
    if features.is_empty() {
        return bad("features is empty: a text job needs a text column");
    }
    for (i, f) in features.iter().enumerate() {
        let Some(c) = table.column(f) else {
            return bad(format!("feature '{f}' is not in the dataset"));
        };
        if *f == spec.target {
            return bad(format!("feature '{f}' is the target column"));
        }
        if features[..i].contains(f) {
            return bad(format!("feature '{f}' is listed twice"));
        }
        if c.dtype != ColumnType::Category {
            return bad(format!(
                "feature '{f}' is numeric: with base_model every feature is a text column (mixed text and numeric features are not supported yet)"
            ));
        }
    }
    if features.len() > 2 {
        return bad(format!(
            "{} text features: a text job takes one text column, or two read as a pair",
            features.len()
        ));
    }
    Ok(features)
}

/// Resolves a text job's spec: checks it against the table and the base model, then fills
/// in every default as for a job on `hidden` numeric columns (what the head trains on). The
/// resolved spec keeps the text column names as its features and pins the base version.
pub fn resolve(
    mut spec: JobSpec,
    table: &Table,
    base: &Base<'_>,
) -> Result<ResolvedSpec, SpecError> {
    let layers = spec.fine_tune.as_ref().map_or(0, |f| f.layers);
    if layers > 0 {
        return bad(format!(
            "fine_tune.layers {layers}: unfreezing encoder layers is not supported by this kiln (it needs backpropagation through the transformer); leave it out or 0 to train a head on the frozen encoder"
        ));
    }
    if base.model.is_classifier() {
        return bad(format!(
            "base_model '{}' is a text classifier: name a text embedding model (its pooled embeddings are what the head trains on)",
            base.name
        ));
    }
    if spec.search.is_some() {
        return bad("search with base_model is not supported yet: give the head's layers");
    }
    let columns = text_columns(&spec, table)?;
    if spec.task == Some(Task::Regression) {
        return bad("a text job trains a classifier: task must be \"classification\"");
    }
    let hidden = base.model.hidden_size();
    let placeholder = placeholder_table(table, &spec.target, hidden)?;
    let base_name = spec.base_model.take().unwrap_or_default();
    let fine_tune = spec.fine_tune.take();
    spec.base_version = None;
    spec.features = Some(embedding_names(hidden));
    let mut resolved = spec.resolve(&placeholder)?;
    if resolved.task() != Task::Classification {
        return bad(format!(
            "target '{}' is numeric with many values: a text job trains a classifier (give task \"classification\" for numeric classes)",
            resolved.spec.target
        ));
    }
    resolved.spec.features = Some(columns.clone());
    resolved.spec.base_model = Some(base_name);
    resolved.spec.base_version = Some(base.version);
    resolved.spec.fine_tune = fine_tune;
    resolved.defaults.insert(
        "base_model".into(),
        format!(
            "{} version {}, frozen: {} is encoded once into its {} pooled embedding ({hidden} values), and the head trains on that",
            base.name,
            base.version,
            if columns.len() == 2 {
                format!("each pair ({}, {})", columns[0], columns[1])
            } else {
                format!("each '{}'", columns[0])
            },
            base.model.spec().pooling.as_str(),
        ),
    );
    Ok(resolved)
}

/// The target column and `hidden` zero columns: what resolving a text job's defaults reads.
fn placeholder_table(table: &Table, target: &str, hidden: usize) -> Result<Table, SpecError> {
    let Some(t) = table.column(target) else {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        return bad(format!(
            "target column '{target}' is not in the dataset; its columns are {names:?}"
        ));
    };
    let mut columns = vec![t.clone()];
    columns.extend(embedding_names(hidden).into_iter().map(|name| Column {
        name,
        dtype: ColumnType::Float,
        values: ColumnValues::Numeric(vec![0.0; table.n_rows]),
        missing: 0,
        invalid: 0,
        invalid_examples: Vec::new(),
    }));
    Table::new(columns).map_err(|e| SpecError(e.to_string()))
}

/// A running text job: the base model loaded from its files, and the spec the head trains
/// with (features: the embedding columns).
pub struct TextJob {
    base_files: ModelFiles,
    model: TextModel,
    /// The resolved spec as queued (features: the text columns).
    text_spec: ResolvedSpec,
    /// The same with the embedding columns as features: what prepare and train read.
    pub derived: ResolvedSpec,
}

impl TextJob {
    /// Loads the base version (its files as the store holds them) for a resolved text job.
    pub fn open(
        resolved: &ResolvedSpec,
        base_files: ModelFiles,
        origin: &std::path::Path,
    ) -> Result<TextJob, String> {
        let extra = |name: &str| {
            base_files
                .extra
                .get(name)
                .map(|b| b.to_vec())
                .ok_or_else(|| {
                    format!("the base model has no {name}: it is not a transformer version")
                })
        };
        let (config, tokenizer) = (extra(CONFIG_FILE)?, extra(TOKENIZER_FILE)?);
        let files = TextFiles {
            spec: &base_files.spec,
            config: &config,
            tokenizer: &tokenizer,
            weights: &base_files.weights,
            origin,
        };
        let model = TextModel::load(&files, &Device::Cpu)
            .map_err(|e| format!("loading the base model: {e}"))?;
        if model.is_classifier() {
            return Err("the base model is a text classifier, not an embedding model".into());
        }
        let mut derived = resolved.clone();
        derived.spec.features = Some(embedding_names(model.hidden_size()));
        derived.spec.base_model = None;
        derived.spec.base_version = None;
        derived.spec.fine_tune = None;
        Ok(TextJob {
            base_files,
            model,
            text_spec: resolved.clone(),
            derived,
        })
    }

    fn columns(&self) -> &[String] {
        self.text_spec.features()
    }

    /// The table the head trains on: the target column and one column per embedding value
    /// (missing where a row's text is missing), rows as in `table`. Inputs longer than the
    /// model's maximum are truncated, as sentence-transformers does when it encodes.
    pub fn embed(&self, table: &Table) -> Result<Table, String> {
        let texts = |name: &str| -> Result<Vec<Option<&str>>, String> {
            let c = table
                .column(name)
                .ok_or_else(|| format!("the dataset has no column '{name}'"))?;
            match &c.values {
                ColumnValues::Category { codes, levels } => Ok(codes
                    .iter()
                    .map(|&k| (k != MISSING_CODE).then(|| levels[k as usize].as_str()))
                    .collect()),
                ColumnValues::Numeric(_) => Err(format!("column '{name}' is not a text column")),
            }
        };
        let cols = self.columns();
        let first = texts(&cols[0])?;
        let second = cols.get(1).map(|c| texts(c)).transpose()?;
        // Tokenize every row that has its text(s); the others stay missing.
        let mut tokens: Vec<(usize, Tokens)> = Vec::with_capacity(table.n_rows);
        for row in 0..table.n_rows {
            let t = match (&first[row], second.as_ref().map(|s| s[row])) {
                (Some(a), None) if second.is_none() && !a.is_empty() => {
                    self.model.tokenize(a, true)
                }
                (Some(a), Some(Some(b))) if !a.is_empty() && !b.is_empty() => {
                    self.model.tokenize_pair(a, b, true)
                }
                _ => continue,
            }
            .map_err(|e| format!("row {}: {e}", row + 1))?;
            tokens.push((row, t));
        }
        // By length, so a batch pads little.
        tokens.sort_by_key(|(_, t)| t.len());
        let hidden = self.model.hidden_size();
        let mut values = vec![vec![f64::NAN; table.n_rows]; hidden];
        for chunk in tokens.chunks(EMBED_BATCH) {
            let batch: Vec<&Tokens> = chunk.iter().map(|(_, t)| t).collect();
            let pooled = self
                .model
                .pooled(&batch)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                .map_err(|e| format!("encoding the texts: {e}"))?;
            for ((row, _), v) in chunk.iter().zip(pooled.chunks_exact(hidden)) {
                for (j, x) in v.iter().enumerate() {
                    values[j][*row] = f64::from(*x);
                }
            }
        }
        let missing = table.n_rows - tokens.len();
        let target = table
            .column(&self.text_spec.spec.target)
            .ok_or_else(|| format!("the dataset has no column '{}'", self.text_spec.spec.target))?;
        let mut columns = vec![target.clone()];
        columns.extend(
            embedding_names(hidden)
                .into_iter()
                .zip(values)
                .map(|(name, v)| Column {
                    name,
                    dtype: ColumnType::Float,
                    values: ColumnValues::Numeric(v),
                    missing,
                    invalid: 0,
                    invalid_examples: Vec::new(),
                }),
        );
        Table::new(columns).map_err(|e| e.to_string())
    }

    /// The transformer version to publish: the base model's files, its model.json with the
    /// trained head and labels, and the head's tensors under `head.` beside the encoder's.
    pub fn package(&self, result: &RunResult, job: Option<&str>) -> Result<ModelFiles, String> {
        let base_text = std::str::from_utf8(&self.base_files.spec)
            .map_err(|e| format!("the base model.json: {e}"))?;
        let base =
            TextSpec::from_json(base_text).map_err(|e| format!("the base model.json: {e}"))?;
        let resolved = &self.text_spec;
        let head = serde_json::to_value(&result.model_spec).map_err(|e| e.to_string())?;
        let source = serde_json::json!({
            "fine_tuned_from": {
                "model": resolved.spec.base_model,
                "version": resolved.spec.base_version,
                "frozen": true,
            },
            "job": job,
            "dataset": resolved.spec.dataset,
            "target": resolved.spec.target,
            "text_columns": self.columns(),
            "base_source": base.source,
        });
        let spec = TextSpec {
            task: TextTask::Classification,
            labels: result.model_spec.labels.clone(),
            head: Some(Head::Kiln { model: head }),
            pairs: self.columns().len() == 2,
            source: Some(source),
            ..base
        };
        let json = serde_json::to_vec_pretty(&spec).expect("text specs serialize");
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&self.base_files.weights, &Device::Cpu)
                .map_err(|e| format!("the base weights: {e}"))?;
        for (name, t) in &result.weights {
            tensors.insert(
                format!("{}{name}", crate::text::format::HEAD_PREFIX),
                t.clone(),
            );
        }
        let weights = safetensors::tensor::serialize(tensors.iter(), None)
            .map_err(|e| format!("writing the weights: {e}"))?;
        let mut files = ModelFiles::new(json, weights);
        files.extra = self.base_files.extra.clone();
        Ok(files)
    }
}
