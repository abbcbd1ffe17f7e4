//! kiln's `model.json` for a pretrained transformer (`"kind": "transformer"`): what the
//! Hugging Face files beside it (`config.json`, `tokenizer.json`, `model.safetensors`) do
//! not say, or say differently from how the model is meant to be used.

use serde::{Deserialize, Serialize};

/// The `format_version` this kiln reads for transformers.
pub const TEXT_FORMAT_VERSION: u32 = 1;

/// The value of `kind` that marks a transformer version (a layer-list model has no `kind`).
pub const TRANSFORMER_KIND: &str = "transformer";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    pub format_version: u32,
    /// Always [`TRANSFORMER_KIND`].
    pub kind: String,
    /// The encoder architecture `config.json` describes.
    pub architecture: Architecture,
    /// What the version answers: embeddings, or class scores from a classification head.
    #[serde(default)]
    pub task: TextTask,
    /// How token vectors become one vector per text.
    pub pooling: Pooling,
    /// Whether embeddings are L2-normalised when a request does not say.
    pub normalize: bool,
    /// Most tokens of one input, special tokens included. It wins over any truncation or
    /// padding in `tokenizer.json` (all-MiniLM-L6-v2's says 128, the model is used at 256).
    pub max_length: usize,
    /// Which end a too-long input loses when a request allows truncation.
    #[serde(default)]
    pub truncation: Truncation,
    /// Class names of a classification head, in output order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What turns the encoder's output into class scores (task `classification`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
    /// Inputs are pairs of texts (`[first, second]`, encoded together with `[SEP]` between
    /// them and token types 0 and 1): a cross-encoder, or a classifier trained on two text
    /// columns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pairs: bool,
    /// Where the version came from and where its settings were read (`kiln import`); kept
    /// as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// BERT and the checkpoints that share its layout (MiniLM, BGE, GTE, E5, …).
    Bert,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextTask {
    #[default]
    Embedding,
    Classification,
}

/// A classification head on the encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Head {
    /// Hugging Face's `BertForSequenceClassification`: the `[CLS]` vector through BERT's
    /// pooler (`pooler.dense`, tanh), then the `classifier` linear layer (`pooling` is not
    /// used). Its outputs are logits.
    BertPooler,
    /// A network kiln trained on the pooled embeddings (a training job with `base_model`):
    /// a layer-list `model.json` (its numeric preprocessing, one feature per embedding
    /// value, applied first) whose tensors are under `head.` in model.safetensors.
    Kiln { model: serde_json::Value },
}

/// The tensor prefix of a [`Head::Kiln`] network in a transformer's weights.
pub const HEAD_PREFIX: &str = "head.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first token's (`[CLS]`) vector.
    Cls,
    /// The mean of the real tokens' vectors (padding excluded).
    Mean,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the start of the text (as sentence-transformers and TEI do).
    #[default]
    Right,
}

impl TextSpec {
    /// Parses a transformer's model.json; the error says what is wrong and where.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: TextSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if spec.format_version != TEXT_FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported for transformers (this kiln reads {TEXT_FORMAT_VERSION})",
                spec.format_version
            ));
        }
        if spec.kind != TRANSFORMER_KIND {
            return Err(format!(
                "kind '{}': expected '{TRANSFORMER_KIND}'",
                spec.kind
            ));
        }
        match (spec.task, &spec.head) {
            (TextTask::Embedding, Some(_)) => {
                return Err(
                    "a head is for task \"classification\"; this spec's task is \"embedding\""
                        .into(),
                )
            }
            (TextTask::Classification, None) => {
                return Err(
                    "task \"classification\" needs a head (\"bert_pooler\" or \"kiln\")".into(),
                )
            }
            _ => {}
        }
        if spec.task == TextTask::Embedding && spec.pairs {
            return Err("pairs: an embedding model takes one text per input".into());
        }
        if spec.max_length < 3 {
            return Err(format!(
                "max_length {} leaves no room for a token between the special ones",
                spec.max_length
            ));
        }
        Ok(spec)
    }
}

/// The `kind` a model.json declares, read without parsing the rest: `None` for kiln's own
/// layer-list models, which have no `kind`.
pub fn kind_of(spec_json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        kind: Option<String>,
    }
    serde_json::from_slice::<Peek>(spec_json)
        .ok()
        .and_then(|p| p.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_a_spec() {
        let json = r#"{"format_version": 1, "kind": "transformer", "architecture": "bert",
            "pooling": "mean", "normalize": true, "max_length": 256}"#;
        let spec = TextSpec::from_json(json).unwrap();
        assert_eq!(spec.pooling, Pooling::Mean);
        assert_eq!(spec.task, TextTask::Embedding);
        assert_eq!(spec.truncation, Truncation::Right);
        assert_eq!(kind_of(json.as_bytes()).as_deref(), Some("transformer"));
        assert_eq!(kind_of(br#"{"format_version": 1, "layers": []}"#), None);
        let err = TextSpec::from_json(&json.replace("\"bert\"", "\"gpt\"")).unwrap_err();
        assert!(err.contains("unknown variant `gpt`"), "{err}");
        let err = TextSpec::from_json(&json.replace("256", "2")).unwrap_err();
        assert!(err.contains("max_length 2"), "{err}");
        let err = TextSpec::from_json(&json.replace("\"pooling\"", "\"poling\"")).unwrap_err();
        assert!(err.contains("unknown field `poling`"), "{err}");
    }

    #[test]
    fn a_classifier_has_a_head_and_an_embedding_model_none() {
        let json = r#"{"format_version": 1, "kind": "transformer", "architecture": "bert",
            "pooling": "cls", "normalize": false, "max_length": 128, "task": "classification",
            "labels": ["no", "yes"], "head": {"type": "bert_pooler"}}"#;
        let spec = TextSpec::from_json(json).unwrap();
        assert_eq!(spec.head, Some(Head::BertPooler));
        assert!(!spec.pairs);
        let err = TextSpec::from_json(&json.replace(r#", "head": {"type": "bert_pooler"}"#, ""))
            .unwrap_err();
        assert!(err.contains("needs a head"), "{err}");
        let err =
            TextSpec::from_json(&json.replace("\"classification\"", "\"embedding\"")).unwrap_err();
        assert!(err.contains("a head is for task"), "{err}");
        let err = TextSpec::from_json(&json.replace("bert_pooler", "linear")).unwrap_err();
        assert!(err.contains("unknown variant `linear`"), "{err}");
    }
}
