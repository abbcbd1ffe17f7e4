//! The serving core's call for text versions: texts → tokens (checked against the model's
//! maximum, on a blocking thread) → the version's token-budget batcher → embeddings. Every
//! text protocol (TEI's routes, OpenAI's, and later V2 BYTES and TF Serving instances)
//! decodes into [`TextRequest`] and encodes the [`Embeddings`] it gets back.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::registry::LoadedVersion;
use crate::text::{TextModel, Token, TokenizeError};

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
        let cfg = text.batcher.config();
        check_request(&req.texts, cfg.max_client_batch_size)?;
        span.record("model", lv.name.as_str());
        span.record("version", lv.version);
        let model: Arc<TextModel> = text.model.clone();
        let truncate = req.truncate;
        let texts = req.texts;
        let ids = blocking(move || {
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    model
                        .tokenize(t, truncate)
                        .map(|t| t.ids)
                        .map_err(|e| tokenize_error(i, e))
                })
                .collect::<Result<Vec<_>, Error>>()
        })
        .await??;
        let tokens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let normalize = req.normalize.unwrap_or(text.model.spec().normalize);
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
        Ok(Embeddings {
            vectors,
            tokens,
            timing,
        })
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
    use super::check_request;
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
