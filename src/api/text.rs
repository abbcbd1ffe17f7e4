//! The text API: Hugging Face text-embeddings-inference's routes and shapes (`/embed`,
//! `/tokenize`, `/info`) and OpenAI's `/v1/embeddings`, over kiln's text versions
//! (docs/text-models.md). Handlers decode into the serving core's `TextRequest` and encode
//! what it returns; tokenizing and the encoder run off the runtime.
//!
//! Which model answers: `/models/{name}/…` names it; the unscoped routes answer with the
//! only text model loaded (400 naming the scoped routes when there are several); OpenAI's
//! route takes the request's `model`.

use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{check_name, Deadline, JsonBody, Path};
use super::openapi::{ModelPath, TextErrors, Timeout};
use super::respond;
use crate::error::Error;
use crate::metrics::Protocol;
use crate::registry::LoadedVersion;
use crate::serving::text::{
    Embeddings, PredictRequest, Predictions, RerankRequest, Sequence, TextRequest,
};
use crate::state::AppState;
use std::sync::Arc;
use std::time::Instant;

/// One text or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Input {
    Single(String),
    Batch(Vec<String>),
}

impl Input {
    fn into_texts(self) -> Vec<String> {
        match self {
            Input::Single(s) => vec![s],
            Input::Batch(v) => v,
        }
    }
}

/// One input of `/predict`: a text, or a pair `[first, second]`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictSequence {
    Single(String),
    Pair(String, String),
}

impl From<PredictSequence> for Sequence {
    fn from(s: PredictSequence) -> Self {
        match s {
            PredictSequence::Single(t) => Sequence::Single(t),
            PredictSequence::Pair(a, b) => Sequence::Pair(a, b),
        }
    }
}

/// `/predict`'s `inputs`: one input (a text or a pair), or a batch of them. As in TEI,
/// a list of exactly two strings is one pair; a list of any other number of strings is a
/// batch of single texts, and a list of pairs a batch of pairs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictInput {
    Single(PredictSequence),
    Batch(Vec<PredictSequence>),
}

/// `POST /predict` (TEI): a sequence classifier's scores.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictBody {
    pub inputs: PredictInput,
    /// Cut inputs longer than the model's maximum instead of answering 413.
    #[serde(default)]
    pub truncate: bool,
    /// Only `right` (what the model's spec says); accepted as TEI clients send it.
    #[serde(default)]
    #[schema(pattern = "^(right|Right)$", nullable = false)]
    pub truncation_direction: Option<String>,
    /// The head's outputs as they are (logits), not probabilities.
    #[serde(default)]
    pub raw_scores: bool,
}

/// One class and its score.
#[derive(Serialize, ToSchema)]
pub struct ClassScore {
    pub score: f32,
    pub label: String,
}

/// `POST /predict`'s answer: for one input, its classes by score (highest first); for a
/// batch, one such list per input.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictAnswer {
    Single(Vec<ClassScore>),
    Batch(Vec<Vec<ClassScore>>),
}

/// `POST /rerank` (TEI): texts scored against a query by a cross-encoder.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankBody {
    pub query: String,
    pub texts: Vec<String>,
    #[serde(default)]
    pub truncate: bool,
    /// Only `right`, as in `/predict`.
    #[serde(default)]
    #[schema(pattern = "^(right|Right)$", nullable = false)]
    pub truncation_direction: Option<String>,
    /// The cross-encoder's output as it is (a logit), not its sigmoid.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in the answer.
    #[serde(default)]
    pub return_text: bool,
}

/// One text's rank: its index in `texts`, its score (and the text with `return_text`).
#[derive(Serialize, ToSchema)]
pub struct Rank {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub score: f32,
}

/// `POST /rerank`'s answer: every text, highest score first.
#[derive(Serialize, ToSchema)]
pub struct RerankResponse(pub Vec<Rank>);

fn check_direction(direction: Option<&str>) -> Result<(), Error> {
    match direction {
        None | Some("right" | "Right") => Ok(()),
        Some(other) => Err(Error::InvalidInput(format!(
            "truncation_direction {other:?}: this kiln truncates on the right only"
        ))),
    }
}

/// `POST /embed`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub inputs: Input,
    /// Cut inputs longer than the model's maximum instead of answering 413.
    #[serde(default)]
    pub truncate: bool,
    /// L2-normalise (default: the model's `normalize`, true for sentence-transformers
    /// models that end in a Normalize module).
    #[serde(default)]
    pub normalize: Option<bool>,
}

/// `POST /embed`'s answer: one embedding per input, in order (a list also for one input).
#[derive(Serialize, ToSchema)]
#[schema(example = json!([[0.0, 1.0, 2.0]]))]
pub struct EmbedResponse(pub Vec<Vec<f32>>);

/// `POST /tokenize`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub inputs: Input,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// One token: byte offsets into the input (none for special tokens).
#[derive(Serialize, ToSchema)]
pub struct SimpleToken {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

/// `POST /tokenize`'s answer: the tokens of each input.
#[derive(Serialize, ToSchema)]
pub struct TokenizeResponse(pub Vec<Vec<SimpleToken>>);

/// `GET /info`: the model and the router's limits, as TEI names them.
#[derive(Serialize, ToSchema)]
pub struct Info {
    pub model_id: String,
    /// kiln's version number of the model.
    pub model_sha: Option<String>,
    pub model_dtype: &'static str,
    pub model_type: ModelType,
    pub max_concurrent_requests: usize,
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_batch_requests: Option<usize>,
    pub max_client_batch_size: usize,
    pub tokenization_workers: usize,
    pub version: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Embedding(EmbeddingModel),
    Classifier(ClassifierModel),
    Reranker(ClassifierModel),
}

/// A classifier's classes, as Hugging Face's config.json names them.
#[derive(Serialize, ToSchema)]
pub struct ClassifierModel {
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingModel {
    pub pooling: &'static str,
}

/// `POST /v1/embeddings` (OpenAI).
#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAiRequest {
    pub input: Input,
    /// The kiln model that answers (any when only one text model is loaded).
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian float32 bytes).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted and ignored, as OpenAI's clients may send it.
    #[serde(default)]
    pub user: Option<String>,
    /// Only the model's own size is served.
    #[serde(default)]
    pub dimensions: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    pub object: &'static str,
    /// A list of floats, or a base64 string with `encoding_format: base64`.
    #[schema(value_type = Object)]
    pub embedding: serde_json::Value,
    pub index: usize,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiResponse {
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

/// Parses a JSON body: a syntax error is malformed JSON, a wrong shape invalid input.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::InvalidInput(e.to_string()).into(),
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => ApiError::MalformedJson(e.to_string()),
    })
}

/// The text version a request goes to: `name`'s, or the only text model's.
fn text_version(state: &AppState, name: Option<&str>) -> Result<Arc<LoadedVersion>, Error> {
    if let Some(name) = name {
        check_name(name)?;
        let lv = state.serving().version(name, None)?;
        lv.text()?;
        return Ok(lv);
    }
    let mut text: Vec<Arc<LoadedVersion>> = Vec::new();
    for m in state.registry.list() {
        if let Some(lv) = m.versions.iter().rev().find_map(|(_, s)| {
            s.loaded()
                .filter(|lv| matches!(lv.served, crate::registry::Served::Text(_)))
        }) {
            text.push(lv.clone());
        }
    }
    match text.len() {
        1 => Ok(text.pop().expect("one")),
        0 => Err(Error::ModelUnavailable {
            name: "(text)".into(),
            reason: "no text model is loaded (kiln import --hf DIR --name NAME adds one)".into(),
        }),
        _ => Err(Error::InvalidInput(format!(
            "{} text models are loaded ({}): name one with /models/{{name}}/… (or OpenAI's \"model\")",
            text.len(),
            text.iter().map(|lv| lv.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The answer with its timing headers; the request's duration observed (from `start`, the
/// handler holding the body, as for every model).
fn timed(mut res: Response, e: &Embeddings, lv: &LoadedVersion, start: Instant) -> Response {
    respond::timing_headers(&mut res, &e.timing);
    lv.observe_request(Protocol::Http, start);
    res
}

async fn embed_on(
    state: &AppState,
    name: Option<&str>,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: EmbedRequest = parse(body)?;
    let lv = text_version(state, name)?;
    let embeddings = state
        .serving()
        .embed(
            &lv,
            TextRequest {
                texts: req.inputs.into_texts(),
                truncate: req.truncate,
                normalize: req.normalize,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let body = serde_json::to_vec(&embeddings.vectors).expect("floats serialize");
    Ok(timed(respond::json(body), &embeddings, &lv, start))
}

/// A classifier's answer with its timing headers; the request's duration observed.
fn timed_p(mut res: Response, p: &Predictions, lv: &LoadedVersion, start: Instant) -> Response {
    respond::timing_headers(&mut res, &p.timing);
    lv.observe_request(Protocol::Http, start);
    res
}

/// A row of scores as `{score, label}`, highest first.
fn ranked(scores: &[f32], labels: &[String]) -> Vec<ClassScore> {
    let mut out: Vec<ClassScore> = scores
        .iter()
        .zip(labels)
        .map(|(&score, label)| ClassScore {
            score,
            label: label.clone(),
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

async fn predict_on(
    state: &AppState,
    name: Option<&str>,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: PredictBody = parse(body)?;
    check_direction(req.truncation_direction.as_deref())?;
    let lv = text_version(state, name)?;
    let (inputs, single): (Vec<Sequence>, bool) = match req.inputs {
        PredictInput::Single(s) => (vec![s.into()], true),
        PredictInput::Batch(b) => (b.into_iter().map(Sequence::from).collect(), false),
    };
    let p = state
        .serving()
        .classify_text(
            &lv,
            PredictRequest {
                inputs,
                truncate: req.truncate,
                raw_scores: req.raw_scores,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let mut rows: Vec<Vec<ClassScore>> = p.scores.iter().map(|r| ranked(r, &p.labels)).collect();
    let answer = if single {
        PredictAnswer::Single(rows.pop().unwrap_or_default())
    } else {
        PredictAnswer::Batch(rows)
    };
    let body = serde_json::to_vec(&answer).expect("scores serialize");
    Ok(timed_p(respond::json(body), &p, &lv, start))
}

async fn rerank_on(
    state: &AppState,
    name: Option<&str>,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: RerankBody = parse(body)?;
    check_direction(req.truncation_direction.as_deref())?;
    let lv = text_version(state, name)?;
    let texts = req.return_text.then(|| req.texts.clone());
    let scores = state
        .serving()
        .rerank(
            &lv,
            RerankRequest {
                query: req.query,
                texts: req.texts,
                truncate: req.truncate,
                raw_scores: req.raw_scores,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let mut ranks: Vec<Rank> = scores
        .iter()
        .enumerate()
        .map(|(index, &score)| Rank {
            index,
            text: texts.as_ref().map(|t| t[index].clone()),
            score,
        })
        .collect();
    ranks.sort_by(|a, b| b.score.total_cmp(&a.score));
    let body = serde_json::to_vec(&RerankResponse(ranks)).expect("ranks serialize");
    let res = respond::json(body);
    lv.observe_request(Protocol::Http, start);
    Ok(res)
}

async fn tokenize_on(
    state: &AppState,
    name: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse(body)?;
    let lv = text_version(state, name)?;
    let tokens = state
        .serving()
        .tokenize(&lv, req.inputs.into_texts(), req.add_special_tokens)
        .await?;
    let answer = TokenizeResponse(
        tokens
            .into_iter()
            .map(|ts| {
                ts.into_iter()
                    .map(|t| SimpleToken {
                        id: t.id,
                        text: t.text,
                        special: t.special,
                        start: t.offsets.map(|o| o.0),
                        stop: t.offsets.map(|o| o.1),
                    })
                    .collect()
            })
            .collect(),
    );
    Ok(respond::json(
        serde_json::to_vec(&answer).expect("tokens serialize"),
    ))
}

fn info_of(state: &AppState, name: Option<&str>) -> Result<Response, ApiError> {
    let lv = text_version(state, name)?;
    let text = lv.text()?;
    let spec = text.model.spec();
    let cfg = text.batcher.config();
    let info = Info {
        model_id: lv.name.clone(),
        model_sha: Some(lv.version.to_string()),
        model_dtype: "float32",
        model_type: if text.model.is_classifier() {
            let labels = text.model.labels();
            let classes = ClassifierModel {
                id2label: labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i.to_string(), l.clone()))
                    .collect(),
                label2id: labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i))
                    .collect(),
            };
            if text.model.output_size() == 1 {
                ModelType::Reranker(classes)
            } else {
                ModelType::Classifier(classes)
            }
        } else {
            ModelType::Embedding(EmbeddingModel {
                pooling: spec.pooling.as_str(),
            })
        },
        max_concurrent_requests: cfg.queue_capacity,
        max_input_length: spec.max_length,
        max_batch_tokens: cfg.max_batch_tokens,
        max_batch_requests: Some(cfg.max_batch_requests),
        max_client_batch_size: cfg.max_client_batch_size,
        tokenization_workers: 1,
        version: env!("CARGO_PKG_VERSION"),
    };
    Ok(respond::json(
        serde_json::to_vec(&info).expect("info serializes"),
    ))
}

async fn openai_on(
    state: &AppState,
    name: Option<&str>,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: OpenAiRequest = parse(body)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::InvalidInput(format!(
                "encoding_format {other:?}: expected \"float\" or \"base64\""
            ))
            .into())
        }
    };
    // A scoped path names the model; otherwise the request's `model`, else the only one.
    let lv = text_version(state, name.or(req.model.as_deref()))?;
    if let Some(d) = req.dimensions {
        let size = lv.text()?.model.hidden_size();
        if d != size {
            return Err(Error::InvalidInput(format!(
                "dimensions {d}: model '{}' makes embeddings of {size}",
                lv.name
            ))
            .into());
        }
    }
    let embeddings = state
        .serving()
        .embed(
            &lv,
            TextRequest {
                texts: req.input.into_texts(),
                truncate: false,
                normalize: None,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let total = embeddings.total_tokens();
    let data = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| OpenAiEmbedding {
            object: "embedding",
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::json!(v)
            },
            index,
        })
        .collect();
    let answer = OpenAiResponse {
        object: "list",
        data,
        model: lv.name.clone(),
        usage: OpenAiUsage {
            prompt_tokens: total,
            total_tokens: total,
        },
    };
    let body = serde_json::to_vec(&answer).expect("embeddings serialize");
    Ok(timed(respond::json(body), &embeddings, &lv, start))
}

/// TF Serving's `:predict` on a text model: `{"instances": ["text", …]}` (row format) →
/// `{"predictions": [[f32, …], …]}`, or `{"inputs": "text" | [...]}` (columnar) →
/// `{"outputs": …}`. Inputs longer than the model's maximum are refused (413).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TfTextRequest {
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as TF Serving clients send it; one signature"
    )]
    signature_name: Option<String>,
    #[serde(default)]
    instances: Option<Vec<String>>,
    #[serde(default)]
    inputs: Option<Input>,
}

pub(crate) async fn tf_predict(
    state: &AppState,
    lv: &LoadedVersion,
    verb: super::extract::Verb,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    use super::extract::Verb;
    if lv.text()?.model.is_classifier() {
        return match verb {
            Verb::Predict => tf_classifier_predict(state, lv, timeout, body).await,
            Verb::Classify => tf_classify(state, lv, timeout, body).await,
            Verb::Regress | Verb::Explain | Verb::Evaluate => Err(Error::InvalidInput(format!(
                "model '{}' is a text classifier: it answers :predict and :classify",
                lv.name
            ))
            .into()),
        };
    }
    let start = Instant::now();
    if verb != Verb::Predict {
        return Err(Error::InvalidInput(format!(
            "model '{}' is a text embedding model: it answers :predict, not :classify or :regress",
            lv.name
        ))
        .into());
    }
    let req: TfTextRequest = parse(body)?;
    let (texts, key) = match (req.instances, req.inputs) {
        (Some(texts), None) => (texts, "predictions"),
        (None, Some(inputs)) => (inputs.into_texts(), "outputs"),
        _ => {
            return Err(Error::InvalidInput(
                "send exactly one of \"instances\" (a list of texts) or \"inputs\"".into(),
            )
            .into())
        }
    };
    let embeddings = state
        .serving()
        .embed(
            lv,
            TextRequest {
                texts,
                truncate: false,
                normalize: None,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await?;
    let mut answer = serde_json::Map::new();
    answer.insert(key.into(), serde_json::json!(embeddings.vectors));
    let body = serde_json::to_vec(&answer).expect("floats serialize");
    Ok(timed(respond::json(body), &embeddings, lv, start))
}

/// TF Serving's `:predict` on a text classifier: `{"instances": ["text" | ["a", "b"], …]}`
/// → `{"predictions": [[p, …], …]}` (probabilities in label order).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TfClassifierRequest {
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as TF Serving clients send it; one signature"
    )]
    signature_name: Option<String>,
    #[serde(default)]
    instances: Option<Vec<PredictSequence>>,
    #[serde(default)]
    inputs: Option<PredictInput>,
}

async fn tf_classifier_predict(
    state: &AppState,
    lv: &LoadedVersion,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: TfClassifierRequest = parse(body)?;
    let (inputs, key): (Vec<Sequence>, &str) = match (req.instances, req.inputs) {
        (Some(v), None) => (v.into_iter().map(Sequence::from).collect(), "predictions"),
        (None, Some(PredictInput::Single(s))) => (vec![s.into()], "outputs"),
        (None, Some(PredictInput::Batch(b))) => {
            (b.into_iter().map(Sequence::from).collect(), "outputs")
        }
        _ => {
            return Err(Error::InvalidInput(
                "send exactly one of \"instances\" (a list of texts or pairs) or \"inputs\"".into(),
            )
            .into())
        }
    };
    let p = classify_texts(state, lv, inputs, timeout).await?;
    let mut answer = serde_json::Map::new();
    answer.insert(key.into(), serde_json::json!(p.scores));
    let body = serde_json::to_vec(&answer).expect("scores serialize");
    Ok(timed_p(respond::json(body), &p, lv, start))
}

async fn classify_texts(
    state: &AppState,
    lv: &LoadedVersion,
    inputs: Vec<Sequence>,
    timeout: Option<std::time::Duration>,
) -> Result<Predictions, Error> {
    state
        .serving()
        .classify_text(
            lv,
            PredictRequest {
                inputs,
                truncate: false,
                raw_scores: false,
            },
            timeout,
            &tracing::Span::current(),
        )
        .await
}

/// TF Serving's `:classify` on a text classifier: `{"examples": [{"text": "…"}, …]}` (with
/// `"text_pair"` for a pair; `context` holds fields every example shares) →
/// `{"results": [[[label, score], …], …]}`, each example's classes highest first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TfClassifyRequest {
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "accepted as TF Serving clients send it; one signature"
    )]
    signature_name: Option<String>,
    examples: Vec<TextExample>,
    #[serde(default)]
    context: Option<TextExample>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextExample {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    text_pair: Option<String>,
}

async fn tf_classify(
    state: &AppState,
    lv: &LoadedVersion,
    timeout: Option<std::time::Duration>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let req: TfClassifyRequest = parse(body)?;
    let context = req.context.unwrap_or_default();
    let inputs = req
        .examples
        .into_iter()
        .enumerate()
        .map(|(i, ex)| {
            let text = ex.text.or_else(|| context.text.clone());
            let pair = ex.text_pair.or_else(|| context.text_pair.clone());
            match (text, pair) {
                (Some(t), None) => Ok(Sequence::Single(t)),
                (Some(a), Some(b)) => Ok(Sequence::Pair(a, b)),
                (None, _) => Err(Error::InvalidInput(format!(
                    "examples[{i}] has no \"text\" (a text classifier reads \"text\", and \"text_pair\" for pairs)"
                ))),
            }
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let p = classify_texts(state, lv, inputs, timeout).await?;
    let results = p
        .scores
        .iter()
        .map(|row| {
            let mut pairs: Vec<(&str, f32)> = p
                .labels
                .iter()
                .map(String::as_str)
                .zip(row.iter().copied())
                .collect();
            pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
            pairs
        })
        .collect();
    let body = serde_json::to_vec(&super::types::ClassifyResponse {
        results,
        warnings: &[],
    })
    .expect("scores serialize");
    Ok(timed_p(respond::json(body), &p, lv, start))
}

/// `POST /predict`
#[utoipa::path(post, path = "/predict", operation_id = "text_predict", tag = "text",
    summary = "Classify texts or pairs with the only text model loaded (TEI's /predict)",
    params(Timeout), request_body = PredictBody,
    responses((status = 200, body = PredictAnswer), TextErrors))]
pub async fn predict(
    State(state): State<AppState>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    predict_on(&state, None, timeout, &body).await
}

/// `POST /models/{name}/predict`
#[utoipa::path(post, path = "/models/{name}/predict", operation_id = "model_text_predict",
    tag = "text", summary = "Classify texts or pairs with a named text model (TEI's /predict)",
    params(ModelPath, Timeout), request_body = PredictBody,
    responses((status = 200, body = PredictAnswer), TextErrors))]
pub async fn model_predict(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    predict_on(&state, Some(&name), timeout, &body).await
}

/// `POST /rerank`
#[utoipa::path(post, path = "/rerank", operation_id = "rerank", tag = "text",
    summary = "Rank texts against a query with the only text model loaded, a cross-encoder (TEI's /rerank)",
    params(Timeout), request_body = RerankBody,
    responses((status = 200, body = RerankResponse), TextErrors))]
pub async fn rerank(
    State(state): State<AppState>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    rerank_on(&state, None, timeout, &body).await
}

/// `POST /models/{name}/rerank`
#[utoipa::path(post, path = "/models/{name}/rerank", operation_id = "model_rerank", tag = "text",
    summary = "Rank texts against a query with a named cross-encoder (TEI's /rerank)",
    params(ModelPath, Timeout), request_body = RerankBody,
    responses((status = 200, body = RerankResponse), TextErrors))]
pub async fn model_rerank(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    rerank_on(&state, Some(&name), timeout, &body).await
}

/// `POST /embed`
#[utoipa::path(post, path = "/embed", operation_id = "embed", tag = "text",
    summary = "Embed texts with the only text model loaded (TEI's /embed)",
    params(Timeout), request_body = EmbedRequest,
    responses((status = 200, body = EmbedResponse), TextErrors))]
pub async fn embed(
    State(state): State<AppState>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    embed_on(&state, None, timeout, &body).await
}

/// `POST /models/{name}/embed`
#[utoipa::path(post, path = "/models/{name}/embed", operation_id = "model_embed", tag = "text",
    summary = "Embed texts with a named text model (TEI's /embed)",
    params(ModelPath, Timeout), request_body = EmbedRequest,
    responses((status = 200, body = EmbedResponse), TextErrors))]
pub async fn model_embed(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    embed_on(&state, Some(&name), timeout, &body).await
}

/// `POST /tokenize`
#[utoipa::path(post, path = "/tokenize", operation_id = "tokenize", tag = "text",
    summary = "Tokenize texts with the only text model loaded (TEI's /tokenize)",
    request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), TextErrors))]
pub async fn tokenize(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    tokenize_on(&state, None, &body).await
}

/// `POST /models/{name}/tokenize`
#[utoipa::path(post, path = "/models/{name}/tokenize", operation_id = "model_tokenize",
    tag = "text", summary = "Tokenize texts with a named text model (TEI's /tokenize)",
    params(ModelPath), request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), TextErrors))]
pub async fn model_tokenize(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    tokenize_on(&state, Some(&name), &body).await
}

/// `GET /info`
#[utoipa::path(get, path = "/info", operation_id = "info", tag = "text",
    summary = "The only text model loaded and its limits (TEI's /info)",
    responses((status = 200, body = Info), TextErrors))]
pub async fn info(State(state): State<AppState>) -> Result<Response, ApiError> {
    info_of(&state, None)
}

/// `GET /models/{name}/info`
#[utoipa::path(get, path = "/models/{name}/info", operation_id = "model_info", tag = "text",
    summary = "A named text model and its limits (TEI's /info)", params(ModelPath),
    responses((status = 200, body = Info), TextErrors))]
pub async fn model_info(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    info_of(&state, Some(&name))
}

/// `POST /v1/embeddings`
#[utoipa::path(post, path = "/v1/embeddings", operation_id = "openai_embeddings", tag = "text",
    summary = "Embed texts with the text model named by `model` (OpenAI's embeddings API)",
    params(Timeout), request_body = OpenAiRequest,
    responses((status = 200, body = OpenAiResponse), TextErrors))]
pub async fn openai_embeddings(
    State(state): State<AppState>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    openai_on(&state, None, timeout, &body).await
}

/// `POST /models/{name}/v1/embeddings`: for OpenAI clients given
/// `base_url = http://host/models/{name}/v1`, whatever `model` they send.
#[utoipa::path(post, path = "/models/{name}/v1/embeddings", operation_id = "model_openai_embeddings",
    tag = "text", summary = "Embed texts with a named text model (OpenAI's embeddings API)",
    params(ModelPath, Timeout), request_body = OpenAiRequest,
    responses((status = 200, body = OpenAiResponse), TextErrors))]
pub async fn model_openai_embeddings(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Deadline(timeout): Deadline,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    openai_on(&state, Some(&name), timeout, &body).await
}
