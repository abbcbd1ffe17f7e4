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

/// One input, tokenized: the ids the encoder reads (special tokens included) and their
/// token types (all 0 for one text; 0 then 1 for a pair).
#[derive(Debug, Clone)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
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

/// A loaded classification head (see [`format::Head`]).
enum LoadedHead {
    /// BERT's pooler (dense + tanh on `[CLS]`) and the `classifier` layer.
    BertPooler {
        pooler: candle_nn::Linear,
        classifier: candle_nn::Linear,
    },
    /// kiln's network on the pooled embedding, after its standardization.
    Kiln {
        shift: Tensor,
        scale: Tensor,
        model: Box<crate::model::Model>,
    },
}

/// A loaded transformer: its spec, tokenizer and encoder. Immutable once built and shared
/// by the version's workers (`Arc<TextModel>`).
pub struct TextModel {
    spec: TextSpec,
    tokenizer: tokenizers::Tokenizer,
    encoder: Encoder,
    head: Option<LoadedHead>,
    /// Values per input the model answers with: the embedding size, or one per class.
    outputs: usize,
    /// The head's outputs are already probabilities (a kiln head ending in softmax).
    probabilities: bool,
    /// Special tokens the tokenizer adds around one text (`[CLS]` … `[SEP]`: 2).
    added: usize,
    /// … and around a pair (`[CLS]` a `[SEP]` b `[SEP]`: 3).
    added_pair: usize,
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
        let added_pair = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
        let weights_path = origin.join("model.safetensors");
        let mut tensors =
            candle_core::safetensors::load_buffer(files.weights, device).map_err(|e| {
                ModelError::Weights {
                    path: weights_path.clone(),
                    message: format!("not a valid safetensors file: {e}"),
                }
            })?;
        let head_tensors: std::collections::HashMap<String, Tensor> = {
            let names: Vec<String> = tensors
                .keys()
                .filter(|k| k.starts_with(format::HEAD_PREFIX))
                .cloned()
                .collect();
            names
                .into_iter()
                .filter_map(|k| {
                    let t = tensors.remove(&k)?;
                    Some((k[format::HEAD_PREFIX.len()..].to_owned(), t))
                })
                .collect()
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let encoder = match spec.architecture {
            Architecture::Bert => {
                Encoder::Bert(bert::BertModel::load(vb.clone(), &config).map_err(|e| {
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
        let hidden = config.hidden_size;
        let weights_error = |what: &str, e: &dyn std::fmt::Display| ModelError::Weights {
            path: weights_path.clone(),
            message: format!("{what}: {e}"),
        };
        let (head, outputs, probabilities) = match &spec.head {
            None => (None, hidden, false),
            Some(format::Head::BertPooler) => {
                let pooler = candle_nn::linear(hidden, hidden, vb.pp("pooler.dense"))
                    .or_else(|_| candle_nn::linear(hidden, hidden, vb.pp("bert.pooler.dense")))
                    .map_err(|e| weights_error("the bert_pooler head needs pooler.dense", &e))?;
                let classes = vb
                    .get_unchecked_dtype("classifier.bias", DType::F32)
                    .and_then(|b| b.dims1())
                    .map_err(|e| weights_error("the bert_pooler head needs classifier", &e))?;
                let classifier = candle_nn::linear(hidden, classes, vb.pp("classifier"))
                    .map_err(|e| weights_error("the bert_pooler head's classifier", &e))?;
                (
                    Some(LoadedHead::BertPooler { pooler, classifier }),
                    classes,
                    false,
                )
            }
            Some(format::Head::Kiln { model }) => {
                let head_spec = crate::model::format::ModelSpec::from_json(&model.to_string())
                    .map_err(|m| spec_error(origin, "model.json", format!("head: {m}")))?;
                let (shift, scale) = head_scaling(&head_spec, hidden)
                    .map_err(|m| spec_error(origin, "model.json", format!("head: {m}")))?;
                let model = crate::model::Model::from_tensors(head_spec, head_tensors, device)?;
                let outputs = model.output_len();
                let probabilities = model.outputs_probabilities();
                let head = LoadedHead::Kiln {
                    shift: Tensor::from_vec(shift, (1, hidden), device)?,
                    scale: Tensor::from_vec(scale, (1, hidden), device)?,
                    model: Box::new(model),
                };
                (Some(head), outputs, probabilities)
            }
        };
        if head.is_some() && !spec.labels.is_empty() && spec.labels.len() != outputs {
            // One output is a binary classifier's or a cross-encoder's score.
            if !(outputs == 1 && spec.labels.len() <= 2) {
                return Err(spec_error(
                    origin,
                    "model.json",
                    format!(
                        "{} labels for a head with {outputs} outputs",
                        spec.labels.len()
                    ),
                ));
            }
        }
        Ok(TextModel {
            added,
            added_pair,
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            hidden,
            head,
            outputs,
            probabilities,
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
        let tokens = if model.spec.pairs {
            model.tokenize_pair("kiln", "kiln", true)
        } else {
            model.tokenize("kiln", true)
        }
        .map_err(|e| ModelError::Invalid(format!("warm-up: {e}")))?;
        let out = model.forward(&[&tokens])?;
        if out.len() != model.outputs || out.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "warm-up: {} values, expected {} finite ones",
                out.len(),
                model.outputs
            )));
        }
        Ok(model)
    }

    /// Whether the version is a classifier (a head on the encoder).
    pub fn is_classifier(&self) -> bool {
        self.head.is_some()
    }

    /// Values per input [`TextModel::forward`] answers with: the embedding size, or one
    /// score per class (one for a cross-encoder).
    pub fn output_size(&self) -> usize {
        self.outputs
    }

    /// The head's outputs are probabilities already (else logits).
    pub fn outputs_probabilities(&self) -> bool {
        self.probabilities
    }

    /// A classifier's class names, in output order: the spec's, else `LABEL_0`, … as
    /// Hugging Face names them.
    pub fn labels(&self) -> Vec<String> {
        if !self.spec.labels.is_empty() {
            return self.spec.labels.clone();
        }
        (0..self.outputs).map(|i| format!("LABEL_{i}")).collect()
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
            types: encoding.get_type_ids().to_vec(),
        })
    }

    /// Tokenizes a pair (`[CLS]` a `[SEP]` b `[SEP]`, token types 0 then 1). Longer than
    /// `max_length`: cut to it when `truncate`, the longer text first (as TEI and
    /// sentence-transformers do), else [`TokenizeError::TooLong`].
    pub fn tokenize_pair(
        &self,
        first: &str,
        second: &str,
        truncate: bool,
    ) -> Result<Tokens, TokenizeError> {
        use tokenizers::utils::truncation::{
            truncate_encodings, TruncationParams, TruncationStrategy,
        };
        let tok = |e: tokenizers::Error| TokenizeError::Tokenizer(e.to_string());
        let mut a = self.tokenizer.encode_fast(first, false).map_err(tok)?;
        let mut b = self.tokenizer.encode_fast(second, false).map_err(tok)?;
        let tokens = a.len() + b.len() + self.added_pair;
        let limit = self.spec.max_length;
        if tokens > limit {
            if !truncate {
                return Err(TokenizeError::TooLong { tokens, limit });
            }
            let params = TruncationParams {
                max_length: limit - self.added_pair,
                strategy: TruncationStrategy::LongestFirst,
                ..TruncationParams::default()
            };
            let (ta, tb) = truncate_encodings(a, Some(b), &params).map_err(tok)?;
            a = ta;
            b = tb.ok_or_else(|| TokenizeError::Tokenizer("pair truncation lost a text".into()))?;
        }
        let encoding = self.tokenizer.post_process(a, Some(b), true).map_err(tok)?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
            types: encoding.get_type_ids().to_vec(),
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

    /// Embeds a batch of tokenized single texts (token types 0): `batch.len() ×
    /// hidden_size` values, pooled, not normalised.
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let tokens: Vec<Tokens> = batch
            .iter()
            .map(|ids| Tokens {
                ids: ids.to_vec(),
                types: vec![0; ids.len()],
            })
            .collect();
        let refs: Vec<&Tokens> = tokens.iter().collect();
        Ok(self.pooled(&refs)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Runs a batch: `batch.len() × output_size` values — the pooled embeddings (not
    /// normalised) of an embedding model, a classifier's logits (or probabilities, see
    /// [`TextModel::outputs_probabilities`]).
    pub fn forward(&self, batch: &[&Tokens]) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let out = match &self.head {
            None => self.pooled(batch)?,
            Some(LoadedHead::BertPooler { pooler, classifier }) => {
                let (hidden, _) = self.encode(batch)?;
                let cls = hidden.i((.., 0))?;
                let pooled = candle_nn::Module::forward(pooler, &cls)?.tanh()?;
                candle_nn::Module::forward(classifier, &pooled)?
            }
            Some(LoadedHead::Kiln {
                shift,
                scale,
                model,
            }) => {
                let pooled = self.pooled(batch)?;
                let x = pooled.broadcast_sub(shift)?.broadcast_div(scale)?;
                model.forward(&x)?
            }
        };
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The encoder's last hidden states `[n, longest, hidden]` and the attention mask.
    /// Inputs are padded to the longest; padding is masked out of attention (and of mean
    /// pooling), so an input's answer does not depend on its batch.
    fn encode(&self, batch: &[&Tokens]) -> Result<(Tensor, Tensor), ModelError> {
        let n = batch.len();
        let longest = batch.iter().map(|t| t.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(n * longest);
        let mut types = Vec::with_capacity(n * longest);
        let mut mask = Vec::with_capacity(n * longest);
        for t in batch {
            let pad = longest - t.ids.len();
            ids.extend_from_slice(&t.ids);
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            types.extend_from_slice(&t.types);
            types.extend(std::iter::repeat_n(0u32, longest - t.types.len()));
            mask.extend(std::iter::repeat_n(1u32, t.ids.len()));
            mask.extend(std::iter::repeat_n(0u32, pad));
        }
        let ids = Tensor::from_vec(ids, (n, longest), &self.device)?;
        let types = Tensor::from_vec(types, (n, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, longest), &self.device)?;
        let hidden = match &self.encoder {
            Encoder::Bert(m) => m.forward(&ids, &types, Some(&mask))?,
        };
        Ok((hidden, mask))
    }

    /// The pooled vectors `[n, hidden]` of a batch (by the spec's pooling).
    pub fn pooled(&self, batch: &[&Tokens]) -> Result<Tensor, ModelError> {
        let (hidden, mask) = self.encode(batch)?;
        Ok(match self.spec.pooling {
            Pooling::Cls => hidden.i((.., 0))?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                summed.broadcast_div(&m.sum(1)?)?
            }
        })
    }
}

/// The standardization a kiln head applies first: `(x - shift) / scale` per embedding value,
/// from its numeric preprocessing (none: identity).
fn head_scaling(
    spec: &crate::model::format::ModelSpec,
    hidden: usize,
) -> Result<(Vec<f32>, Vec<f32>), String> {
    if spec.row_len() != hidden {
        return Err(format!(
            "the head takes {} values; the encoder makes {hidden}",
            spec.row_len()
        ));
    }
    let Some(p) = &spec.preprocessing else {
        return Ok((vec![0.0; hidden], vec![1.0; hidden]));
    };
    if p.features.len() != hidden {
        return Err(format!(
            "the head's preprocessing has {} features; the encoder makes {hidden} values",
            p.features.len()
        ));
    }
    let mut shift = Vec::with_capacity(hidden);
    let mut scale = Vec::with_capacity(hidden);
    for f in &p.features {
        match f {
            crate::preprocess::FeatureTransform::Numeric {
                shift: s, scale: c, ..
            } => {
                shift.push(*s as f32);
                scale.push(if *c == 0.0 { 1.0 } else { *c as f32 });
            }
            crate::preprocess::FeatureTransform::Categorical { name, .. } => {
                return Err(format!(
                    "the head's feature '{name}' is categorical; a head reads the embedding"
                ))
            }
        }
    }
    Ok((shift, scale))
}

/// Scales `v` to unit length (left as is when it is all zeros).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
