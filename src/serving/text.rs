//! The serving core's call for text versions: texts → tokens (checked against the model's
//! maximum, on a blocking thread) → the version's token-budget batcher → embeddings. Every
//! text protocol (TEI's routes, OpenAI's, and later V2 BYTES and TF Serving instances)
//! decodes into [`TextRequest`] and encodes the [`Embeddings`] it gets back.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::registry::LoadedVersion;
use crate::text::{TextModel, Token, TokenizeError, Tokens};

/// What a text request asks.
#[derive(Debug)]
pub struct TextRequest {
    pub texts: Vec<String>,
    /// Cut inputs longer than the model's maximum instead of refusing them (413).
    pub truncate: bool,
    /// L2-normalise; `None`: the model's default (`normalize` in its model.json).
    pub normalize: Option<bool>,
}

/// One embedding per input, in input order, with the tokens each cost.
#[derive(Debug)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens computed per input (after truncation, special tokens included).
    pub tokens: Vec<usize>,
    pub timing: super::Timing,
}

impl Embeddings {
    pub fn total_tokens(&self) -> usize {
        self.tokens.iter().sum()
    }
}

/// One input of a classifier: a text, or a pair of texts encoded together.
#[derive(Debug, Clone)]
pub enum Sequence {
    Single(String),
    Pair(String, String),
}

/// What `/predict` (and TF Serving's and V2's calls on a classifier) asks.
#[derive(Debug)]
pub struct PredictRequest {
    pub inputs: Vec<Sequence>,
    pub truncate: bool,
    /// The head's outputs as they are (logits), not softmax (or sigmoid for one output).
    pub raw_scores: bool,
}

/// What `/rerank` asks: `texts` scored against `query`.
#[derive(Debug)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    pub truncate: bool,
    /// Logits, not probabilities.
    pub raw_scores: bool,
}

/// One row of scores per input, in the order of `labels`.
#[derive(Debug)]
pub struct Predictions {
    pub scores: Vec<Vec<f32>>,
    pub labels: Vec<String>,
    /// Tokens computed per input.
    pub tokens: Vec<usize>,
    pub timing: super::Timing,
}

/// Probabilities from a head's outputs, in place: softmax over several, sigmoid of one
/// (what TEI does).
pub fn activate(row: &mut [f32]) {
    if row.len() == 1 {
        row[0] = 1.0 / (1.0 + (-row[0]).exp());
        return;
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// Refuses what no text model takes: no input, an empty input, more inputs than
/// `max_client_batch_size`.
fn check_request(texts: &[String], limit: usize) -> Result<(), Error> {
    if texts.is_empty() {
        return Err(Error::InvalidInput(
            "inputs is empty: send at least one text".into(),
        ));
    }
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(Error::InvalidInput(format!("input {i} is an empty string")));
    }
    if texts.len() > limit {
        return Err(Error::TooManyRows {
            rows: texts.len(),
            limit,
        });
    }
    Ok(())
}

/// Runs CPU work (tokenizing) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("tokenizing failed: {e}")))
}

fn tokenize_error(index: usize, e: TokenizeError) -> Error {
    match e {
        TokenizeError::TooLong { tokens, limit } => Error::InputTooLong {
            index,
            tokens,
            limit,
        },
        TokenizeError::Tokenizer(m) => Error::InvalidInput(format!("input {index}: {m}")),
    }
}

impl super::Serving<'_> {
    /// Embeds `req.texts` on a text version, through its batcher, by `timeout` (the
    /// version's `request_timeout` when `None`).
    pub async fn embed(
        &self,
        lv: &LoadedVersion,
        req: TextRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Embeddings, Error> {
        let text = lv.text()?;
        if text.model.is_classifier() {
            return Err(Error::InvalidInput(format!(
                "model '{}' is a text classifier: it answers /predict (and :classify), not embeddings",
                lv.name
            )));
        }
        let cfg = text.batcher.config();
        check_request(&req.texts, cfg.max_client_batch_size)?;
        let inputs = req.texts.into_iter().map(Sequence::Single).collect();
        let normalize = req.normalize.unwrap_or(text.model.spec().normalize);
        let (vectors, tokens, timing) = self
            .run_text(lv, inputs, req.truncate, normalize, timeout, span)
            .await?;
        Ok(Embeddings {
            vectors,
            tokens,
            timing,
        })
    }

    /// Classifies `req.inputs` on a text classifier, through its batcher.
    pub async fn classify_text(
        &self,
        lv: &LoadedVersion,
        req: PredictRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Predictions, Error> {
        let text = lv.text()?;
        let model = &text.model;
        if !model.is_classifier() {
            return Err(Error::InvalidInput(format!(
                "model '{}' is a text embedding model: it answers /embed, not /predict (it has no classification head)",
                lv.name
            )));
        }
        let cfg = text.batcher.config();
        if req.inputs.is_empty() {
            return Err(Error::InvalidInput(
                "inputs is empty: send at least one text".into(),
            ));
        }
        if req.inputs.len() > cfg.max_client_batch_size {
            return Err(Error::TooManyRows {
                rows: req.inputs.len(),
                limit: cfg.max_client_batch_size,
            });
        }
        let pairs = model.spec().pairs;
        let pairs_allowed = pairs
            || matches!(
                model.spec().head,
                Some(crate::text::format::Head::BertPooler)
            );
        for (i, s) in req.inputs.iter().enumerate() {
            match s {
                Sequence::Single(t) if t.is_empty() => {
                    return Err(Error::InvalidInput(format!("input {i} is an empty string")))
                }
                Sequence::Pair(a, b) if a.is_empty() || b.is_empty() => {
                    return Err(Error::InvalidInput(format!(
                        "input {i} is a pair with an empty string"
                    )))
                }
                Sequence::Single(_) if pairs => {
                    return Err(Error::InvalidInput(format!(
                        "input {i} is one text; model '{}' takes pairs of texts ([first, second])",
                        lv.name
                    )))
                }
                Sequence::Pair(..) if !pairs_allowed => {
                    return Err(Error::InvalidInput(format!(
                        "input {i} is a pair; model '{}' takes one text per input",
                        lv.name
                    )))
                }
                Sequence::Single(_) | Sequence::Pair(..) => {}
            }
        }
        let probabilities = model.outputs_probabilities();
        let labels = model.labels();
        let (mut scores, tokens, timing) = self
            .run_text(lv, req.inputs, req.truncate, false, timeout, span)
            .await?;
        if !req.raw_scores && !probabilities {
            scores.iter_mut().for_each(|row| activate(row));
        }
        Ok(Predictions {
            scores,
            labels,
            tokens,
            timing,
        })
    }

    /// Scores `texts` against `query` with a cross-encoder: a classifier over pairs with
    /// one output (its sigmoid; the logit with `raw_scores`), or with two classes (the
    /// second class's probability; the logit of it against the first with `raw_scores`,
    /// whose sigmoid that probability is). One score per text, in order.
    pub async fn rerank(
        &self,
        lv: &LoadedVersion,
        req: RerankRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Vec<f32>, Error> {
        let RerankRequest {
            query,
            texts,
            truncate,
            raw_scores,
        } = req;
        let text = lv.text()?;
        let model = &text.model;
        let outputs = model.output_size();
        if !model.is_classifier() || outputs > 2 {
            return Err(Error::InvalidInput(format!(
                "model '{}' is not a cross-encoder (a classifier over pairs with one output, or two classes): {}",
                lv.name,
                if model.is_classifier() {
                    format!("it has {outputs} outputs")
                } else {
                    "it is an embedding model".to_owned()
                }
            )));
        }
        if query.is_empty() {
            return Err(Error::InvalidInput("query is an empty string".into()));
        }
        if texts.is_empty() {
            return Err(Error::InvalidInput(
                "texts is empty: send at least one text".into(),
            ));
        }
        let inputs = texts
            .into_iter()
            .map(|t| Sequence::Pair(query.clone(), t))
            .collect();
        // Two classes: their logits (or probabilities) become one logit, l1 - l0.
        let two = outputs == 2;
        let p = self
            .classify_text(
                lv,
                PredictRequest {
                    inputs,
                    truncate,
                    raw_scores: raw_scores || two,
                },
                timeout,
                span,
            )
            .await?;
        let probabilities = model.outputs_probabilities();
        Ok(p.scores
            .iter()
            .map(|row| {
                if !two {
                    return row[0];
                }
                let logit = if probabilities {
                    (row[1].max(f32::MIN_POSITIVE) / row[0].max(f32::MIN_POSITIVE)).ln()
                } else {
                    row[1] - row[0]
                };
                if raw_scores {
                    logit
                } else {
                    1.0 / (1.0 + (-logit).exp())
                }
            })
            .collect())
    }

    /// Tokenizes the inputs (off the runtime) and runs them through the version's batcher:
    /// one row of `output_size` values per input, the tokens of each, the timing.
    async fn run_text(
        &self,
        lv: &LoadedVersion,
        inputs: Vec<Sequence>,
        truncate: bool,
        normalize: bool,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<(Vec<Vec<f32>>, Vec<usize>, super::Timing), Error> {
        let text = lv.text()?;
        let cfg = text.batcher.config();
        span.record("model", lv.name.as_str());
        span.record("version", lv.version);
        let model: Arc<TextModel> = text.model.clone();
        let ids = blocking(move || {
            inputs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    match s {
                        Sequence::Single(t) => model.tokenize(t, truncate),
                        Sequence::Pair(a, b) => model.tokenize_pair(a, b, truncate),
                    }
                    .map_err(|e| tokenize_error(i, e))
                })
                .collect::<Result<Vec<Tokens>, Error>>()
        })
        .await??;
        let tokens: Vec<usize> = ids.iter().map(Tokens::len).collect();
        let timeout = timeout.unwrap_or(cfg.request_timeout);
        let embedded = text.batcher.embed(ids, normalize, timeout, span).await?;
        let mut timing = super::Timing {
            queue: Duration::ZERO,
            compute: Duration::ZERO,
            batch_rows: 0,
        };
        let mut vectors = Vec::with_capacity(embedded.len());
        for e in embedded {
            timing.queue = timing.queue.max(e.queue_time);
            timing.compute = timing.compute.max(e.compute_time);
            timing.batch_rows = timing.batch_rows.max(e.batch_size);
            vectors.push(e.embedding);
        }
        span.record("batch", timing.batch_rows);
        Ok((vectors, tokens, timing))
    }

    /// The tokens of each text as the model's tokenizer sees them (`/tokenize`).
    pub async fn tokenize(
        &self,
        lv: &LoadedVersion,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<Token>>, Error> {
        let text = lv.text()?;
        check_request(&texts, text.batcher.config().max_client_batch_size)?;
        let model = text.model.clone();
        blocking(move || {
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    model
                        .tokens(t, add_special_tokens)
                        .map_err(|e| tokenize_error(i, e))
                })
                .collect()
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::{activate, check_request};

    #[test]
    fn scores_are_a_softmax_or_a_sigmoid() {
        let mut two = [1.0f32, 3.0];
        activate(&mut two);
        assert!((two[0] + two[1] - 1.0).abs() < 1e-6 && two[1] > two[0]);
        assert!((two[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        let mut one = [0.0f32];
        activate(&mut one);
        assert_eq!(one, [0.5]);
    }
    use crate::error::Error;

    #[test]
    fn empty_and_too_many_inputs_are_refused() {
        let texts = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_request(&texts(&["a", "b"]), 2).is_ok());
        assert!(matches!(
            check_request(&[], 2),
            Err(Error::InvalidInput(m)) if m.contains("empty")
        ));
        assert!(matches!(
            check_request(&texts(&["a", ""]), 2),
            Err(Error::InvalidInput(m)) if m.contains("input 1")
        ));
        assert!(matches!(
            check_request(&texts(&["a", "b", "c"]), 2),
            Err(Error::TooManyRows { rows: 3, limit: 2 })
        ));
    }
}
