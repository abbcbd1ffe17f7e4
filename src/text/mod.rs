//! Pretrained transformer encoders (the BERT family): a Hugging Face model directory
//! (`config.json`, `tokenizer.json`, `model.safetensors`) with kiln's `model.json`
//! ([`format::TextSpec`]) → a [`TextModel`] that tokenizes texts and embeds batches of them
//! (docs/text-models.md).
//!
//! Tokenizing is the `tokenizers` crate with the model's own `tokenizer.json`; the encoder
//! is candle-transformers'. Nothing is fetched: every file is in the version directory.
//! Both are CPU work: callers run them on blocking or worker threads, never on the runtime.

pub mod format;
pub mod import;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert;

use crate::model::ModelError;
pub use format::{Architecture, Pooling, TextSpec, TextTask};

/// File names of a transformer version beside `model.json` and `model.safetensors`.
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A transformer version's files, in memory, with the directory (or upload) they came from
/// for error messages.
pub struct TextFiles<'a> {
    pub spec: &'a [u8],
    pub config: &'a [u8],
    pub tokenizer: &'a [u8],
    pub weights: &'a [u8],
    pub origin: &'a Path,
}

/// One input, tokenized: the ids the encoder reads (special tokens included).
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One token as `/tokenize` shows it: byte offsets into the text, none for special tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub offsets: Option<(usize, usize)>,
}

/// Why an input cannot be tokenized for this model.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{tokens} tokens; the model takes at most {limit}")]
    TooLong { tokens: usize, limit: usize },
    #[error("the tokenizer failed: {0}")]
    Tokenizer(String),
}

enum Encoder {
    Bert(bert::BertModel),
}

/// A loaded transformer: its spec, tokenizer and encoder. Immutable once built and shared
/// by the version's workers (`Arc<TextModel>`).
pub struct TextModel {
    spec: TextSpec,
    tokenizer: tokenizers::Tokenizer,
    encoder: Encoder,
    /// Special tokens the tokenizer adds around one text (`[CLS]` … `[SEP]`: 2).
    added: usize,
    pad_id: u32,
    hidden: usize,
    device: Device,
}

fn spec_error(origin: &Path, file: &str, message: impl Into<String>) -> ModelError {
    ModelError::Spec {
        path: origin.join(file),
        message: message.into(),
    }
}

impl TextModel {
    /// Parses the four files and builds the encoder (every tensor is checked for presence
    /// and shape). CPU-bound: call from a blocking thread.
    pub fn load(files: &TextFiles<'_>, device: &Device) -> Result<Self, ModelError> {
        let origin = files.origin;
        let spec_text = std::str::from_utf8(files.spec)
            .map_err(|e| spec_error(origin, "model.json", format!("not UTF-8: {e}")))?;
        let spec =
            TextSpec::from_json(spec_text).map_err(|m| spec_error(origin, "model.json", m))?;
        if spec.task == TextTask::Classification {
            return Err(ModelError::Invalid(format!(
                "{}: classification heads on transformers are not served by this kiln yet (task \"embedding\" is)",
                origin.join("model.json").display()
            )));
        }
        let config_path = origin.join(CONFIG_FILE);
        let config: bert::Config = serde_json::from_slice(files.config).map_err(|e| {
            ModelError::Invalid(format!("{}: not a BERT config: {e}", config_path.display()))
        })?;
        if spec.max_length > config.max_position_embeddings {
            return Err(spec_error(
                origin,
                "model.json",
                format!(
                    "max_length {} is over the model's max_position_embeddings {} (config.json)",
                    spec.max_length, config.max_position_embeddings
                ),
            ));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_bytes(files.tokenizer).map_err(|e| {
            ModelError::Invalid(format!(
                "{}: not a tokenizer: {e}",
                origin.join(TOKENIZER_FILE).display()
            ))
        })?;
        // kiln truncates (or refuses) by the spec's max_length and pads batches itself.
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Invalid(format!("the tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        let weights_path = origin.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load_buffer(files.weights, device).map_err(|e| {
                ModelError::Weights {
                    path: weights_path.clone(),
                    message: format!("not a valid safetensors file: {e}"),
                }
            })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let encoder = match spec.architecture {
            Architecture::Bert => {
                Encoder::Bert(bert::BertModel::load(vb, &config).map_err(|e| {
                    ModelError::Weights {
                        path: weights_path.clone(),
                        message: format!(
                            "does not hold the BERT that config.json describes: {}",
                            crate::model::layers::first_line(&e)
                        ),
                    }
                })?)
            }
        };
        Ok(TextModel {
            added,
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            hidden: config.hidden_size,
            spec,
            tokenizer,
            encoder,
            device: device.clone(),
        })
    }

    /// Loads and runs one input through the encoder: a version that cannot answer is
    /// refused before it serves.
    pub fn load_and_warm(files: &TextFiles<'_>, device: &Device) -> Result<Self, ModelError> {
        let model = Self::load(files, device)?;
        let tokens = model
            .tokenize("kiln", true)
            .map_err(|e| ModelError::Invalid(format!("warm-up: {e}")))?;
        model.embed(&[&tokens.ids])?;
        Ok(model)
    }

    pub fn spec(&self) -> &TextSpec {
        &self.spec
    }

    /// Length of one embedding.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    pub fn max_length(&self) -> usize {
        self.spec.max_length
    }

    /// Tokenizes one input for the encoder. Longer than `max_length` (special tokens
    /// included): cut to it when `truncate`, else [`TokenizeError::TooLong`] with the count.
    pub fn tokenize(&self, text: &str, truncate: bool) -> Result<Tokens, TokenizeError> {
        let tok = |e: tokenizers::Error| TokenizeError::Tokenizer(e.to_string());
        let mut raw = self.tokenizer.encode_fast(text, false).map_err(tok)?;
        let tokens = raw.len() + self.added;
        let limit = self.spec.max_length;
        if tokens > limit {
            if !truncate {
                return Err(TokenizeError::TooLong { tokens, limit });
            }
            let direction = match self.spec.truncation {
                format::Truncation::Right => tokenizers::TruncationDirection::Right,
            };
            raw.truncate(limit - self.added, 0, direction);
        }
        let encoding = self.tokenizer.post_process(raw, None, true).map_err(tok)?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
        })
    }

    /// The tokens of one input as the tokenizer sees them (`/tokenize`): not truncated.
    pub fn tokens(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<Token>, TokenizeError> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_special_tokens_mask())
            .zip(encoding.get_offsets())
            .map(|(((&id, token), &special), &(start, stop))| {
                let special = special == 1;
                let offsets = (!special).then_some((start, stop));
                let text = match offsets {
                    Some((a, b)) => text.get(a..b).unwrap_or(token).to_owned(),
                    None => token.clone(),
                };
                Token {
                    id,
                    text,
                    special,
                    offsets,
                }
            })
            .collect())
    }

    /// Embeds a batch of tokenized inputs: `batch.len() × hidden_size` values, pooled, not
    /// normalised. Inputs are padded to the longest; padding is masked out of attention and
    /// of mean pooling, so an input's embedding does not depend on its batch.
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let n = batch.len();
        let longest = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        if n == 0 || longest == 0 {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(n * longest);
        let mut mask = Vec::with_capacity(n * longest);
        for t in batch {
            ids.extend_from_slice(t);
            ids.extend(std::iter::repeat_n(self.pad_id, longest - t.len()));
            mask.extend(std::iter::repeat_n(1u32, t.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - t.len()));
        }
        let ids = Tensor::from_vec(ids, (n, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, longest), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = match &self.encoder {
            Encoder::Bert(m) => m.forward(&ids, &types, Some(&mask))?,
        };
        let pooled = match self.spec.pooling {
            Pooling::Cls => hidden.i((.., 0))?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                summed.broadcast_div(&m.sum(1)?)?
            }
        };
        Ok(pooled.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Scales `v` to unit length (left as is when it is all zeros).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
