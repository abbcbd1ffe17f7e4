//! The Open Inference Protocol (KServe "V2") over REST, with the binary tensor data
//! extension. V2 and v1 requests to one model version share its batcher queue.
//!
//! Inputs: a model without feature names takes one tensor `[N, …signature shape]`. A model
//! with feature names takes either one FP32/FP64 tensor `[N, F]` of raw feature values in the
//! signature's order, or one input per feature named as the feature (shape `[N]` or
//! `[N, 1]`, numeric, BOOL, or BYTES for categorical values — MLServer's pandas-codec
//! convention). Outputs: classifiers answer `probabilities` (FP32 `[N, C]`) and `label`
//! (BYTES `[N]`); other models answer `output` (FP32, in the target's original units).

use std::fmt;

use axum::body::Bytes;
use axum::extract::State;

use super::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::decode::{rows_from_columns, rows_from_tensor, Decoded, InputSpec};
use super::error::ApiError;
use super::extract::{check_name, parse_version};
use super::openapi::{BinaryHeader, InferErrors, LookupErrors, ModelPath, Timeout, VersionPath};
use super::predict::{class_scores, compute, ms_header, TIMEOUT_HEADER};
use crate::error::Error;
use crate::model::format::{InputDType, Task};
use crate::model::Model;
use crate::preprocess::RawValue;
use crate::registry::LoadedVersion;
use crate::state::AppState;

/// The header that splits a binary-extension body into its JSON part and tensor bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
const PLATFORM: &str = "kiln_candle";

// === metadata, health ===

/// `GET /v2`: the server's name, version and protocol extensions.
#[derive(Serialize, ToSchema)]
pub struct ServerMetadataResponse {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: &'static [&'static str],
}

/// `GET /v2/health/live`
#[derive(Serialize, ToSchema)]
pub struct LiveResponse {
    pub live: bool,
}

/// `GET /v2/health/ready`: with the reasons when not ready.
#[derive(Serialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    pub reasons: Vec<String>,
}

/// `GET /v2`
#[utoipa::path(
    get,
    path = "/v2",
    operation_id = "v2_server_metadata",
    tag = "v2",
    summary = "Server name, version and protocol extensions",
    responses((status = 200, body = ServerMetadataResponse)),
)]
pub async fn server_metadata() -> Json<ServerMetadataResponse> {
    Json(ServerMetadataResponse {
        name: "kiln",
        version: env!("CARGO_PKG_VERSION"),
        extensions: &["binary_tensor_data", "model_repository"],
    })
}

/// `GET /v2/health/live`
#[utoipa::path(
    get,
    path = "/v2/health/live",
    operation_id = "v2_live",
    tag = "v2",
    summary = "The process answers",
    responses((status = 200, body = LiveResponse)),
)]
pub async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { live: true })
}

/// `GET /v2/health/ready`: the same readiness as `/health/ready`.
#[utoipa::path(
    get,
    path = "/v2/health/ready",
    operation_id = "v2_ready",
    tag = "v2",
    summary = "Ready: the startup models are loaded and the server is not draining",
    responses(
        (status = 200, body = ReadyResponse),
        (status = 503, description = "Not ready, with the reasons", body = ReadyResponse),
    ),
)]
pub async fn ready(state: State<AppState>) -> (StatusCode, Json<ReadyResponse>) {
    let (status, body) = super::health::ready(state).await;
    let ready = ReadyResponse {
        ready: status == StatusCode::OK,
        reasons: body.0.reasons,
    };
    (status, Json(ready))
}

fn lookup(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<std::sync::Arc<LoadedVersion>, Error> {
    check_name(name)?;
    let v = version.map(|v| parse_version(name, v)).transpose()?;
    state.registry.get(name, v)
}

/// `GET /v2/models/{name}[/versions/{version}]`: the protocol's model metadata.
#[derive(Serialize, ToSchema)]
pub struct ModelMetadataResponse {
    pub name: String,
    /// The versions that can answer now.
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadataView>,
    pub outputs: Vec<TensorMetadataView>,
}

/// One input or output tensor of a model.
#[derive(Serialize, ToSchema)]
pub struct TensorMetadataView {
    pub name: String,
    pub datatype: &'static str,
    /// With `-1` for the batch dimension.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`
#[derive(Serialize, ToSchema)]
pub struct ModelReadyResponse {
    pub name: String,
    pub ready: bool,
    /// Why the model cannot answer (only when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn batched(shape: &[usize]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(shape.iter().map(|&d| d as i64))
        .collect()
}

fn model_metadata(state: &AppState, lv: &LoadedVersion) -> ModelMetadataResponse {
    let spec = lv.model.spec();
    let input = InputSpec::of(&lv.model);
    let dtype = match spec.input.dtype {
        InputDType::Float32 => "FP32",
        InputDType::Int64 => "INT64",
    };
    let mut inputs = vec![TensorMetadataView {
        name: "input".into(),
        datatype: dtype,
        shape: batched(&input.raw_shape()),
    }];
    if let (Some(features), Some(p)) = (input.features(), &spec.preprocessing) {
        for f in &p.features {
            let datatype = match f {
                crate::preprocess::FeatureTransform::Numeric { .. } => "FP64",
                crate::preprocess::FeatureTransform::Categorical { .. } => "BYTES",
            };
            inputs.push(TensorMetadataView {
                name: f.name().to_owned(),
                datatype,
                shape: vec![-1],
            });
        }
        debug_assert_eq!(features.len(), p.features.len());
    }
    let outputs = match spec.task {
        Task::Classification => vec![
            TensorMetadataView {
                name: "probabilities".into(),
                datatype: "FP32",
                shape: vec![-1, class_count(lv) as i64],
            },
            TensorMetadataView {
                name: "label".into(),
                datatype: "BYTES",
                shape: vec![-1],
            },
        ],
        Task::Regression => vec![TensorMetadataView {
            name: "output".into(),
            datatype: "FP32",
            shape: batched(lv.model.output_shape()),
        }],
    };
    let versions: Vec<String> = state
        .registry
        .view(&lv.name)
        .map(|v| {
            v.versions
                .iter()
                .filter(|(_, s)| s.loaded().is_some())
                .map(|(n, _)| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    ModelMetadataResponse {
        name: lv.name.clone(),
        versions,
        platform: PLATFORM,
        inputs,
        outputs,
    }
}

fn class_count(lv: &LoadedVersion) -> usize {
    let n = lv.model.spec().labels.len();
    if n > 0 {
        n
    } else {
        lv.model.output_len().max(2)
    }
}

/// `GET /v2/models/{name}`
#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    operation_id = "v2_model_metadata",
    tag = "v2",
    summary = "The default version's inputs and outputs as tensor metadata",
    params(ModelPath),
    responses((status = 200, body = ModelMetadataResponse), LookupErrors),
)]
pub async fn metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    let lv = lookup(&state, &name, None)?;
    Ok(Json(model_metadata(&state, &lv)))
}

/// `GET /v2/models/{name}/versions/{version}`
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}",
    operation_id = "v2_version_metadata",
    tag = "v2",
    summary = "One version's inputs and outputs as tensor metadata",
    params(VersionPath),
    responses((status = 200, body = ModelMetadataResponse), LookupErrors),
)]
pub async fn version_metadata(
    State(state): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<Json<ModelMetadataResponse>, ApiError> {
    let lv = lookup(&state, &name, Some(&v))?;
    Ok(Json(model_metadata(&state, &lv)))
}

fn readiness(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<(StatusCode, Json<ModelReadyResponse>), ApiError> {
    check_name(name)?;
    let (status, error) = match lookup(state, name, version) {
        Ok(_) => (StatusCode::OK, None),
        Err(e @ (Error::ModelNotFound(_) | Error::VersionNotFound { .. })) => return Err(e.into()),
        Err(other) => (StatusCode::SERVICE_UNAVAILABLE, Some(other.to_string())),
    };
    let ready = ModelReadyResponse {
        name: name.to_owned(),
        ready: error.is_none(),
        error,
    };
    Ok((status, Json(ready)))
}

/// `GET /v2/models/{name}/ready`
#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    operation_id = "v2_model_ready",
    tag = "v2",
    summary = "Whether the default version can answer",
    params(ModelPath),
    responses(
        (status = 200, body = ModelReadyResponse),
        (status = 503, description = "Known but not ready, with the reason", body = ModelReadyResponse),
        LookupErrors,
    ),
)]
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ModelReadyResponse>), ApiError> {
    readiness(&state, &name, None)
}

/// `GET /v2/models/{name}/versions/{version}/ready`
#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}/ready",
    operation_id = "v2_version_ready",
    tag = "v2",
    summary = "Whether one version can answer",
    params(VersionPath),
    responses(
        (status = 200, body = ModelReadyResponse),
        (status = 503, description = "Known but not ready, with the reason", body = ModelReadyResponse),
        LookupErrors,
    ),
)]
pub async fn version_ready(
    State(state): State<AppState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ModelReadyResponse>), ApiError> {
    readiness(&state, &name, Some(&v))
}

// === inference ===

/// Tensor data as sent: a flat or nested list, flattened while parsing.
#[derive(Debug, Default)]
enum Data {
    #[default]
    Absent,
    Numbers(Vec<f64>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Absent => 0,
            Data::Numbers(v) => v.len(),
            Data::Bools(v) => v.len(),
            Data::Strings(v) => v.len(),
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Flat<'a>(&'a mut Data);
        impl<'de> Visitor<'de> for Flat<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list (flat or nested) of numbers, booleans or strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while seq.next_element_seed(Elem(&mut *self.0))?.is_some() {}
                Ok(())
            }
        }
        struct Elem<'a>(&'a mut Data);
        impl<'de> de::DeserializeSeed<'de> for Elem<'_> {
            type Value = ();
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.deserialize_any(self)
            }
        }
        fn mixed<E: de::Error>() -> E {
            E::custom("tensor data mixes numbers, booleans and strings")
        }
        impl<'de> Visitor<'de> for Elem<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, boolean, string or list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
                Flat(self.0).visit_seq(seq)
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
                match self.0 {
                    Data::Absent => *self.0 = Data::Numbers(vec![x]),
                    Data::Numbers(v) => v.push(x),
                    Data::Bools(_) | Data::Strings(_) => return Err(mixed()),
                }
                Ok(())
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
                self.visit_f64(x as f64)
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
                self.visit_f64(x as f64)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
                match self.0 {
                    Data::Absent => *self.0 = Data::Bools(vec![b]),
                    Data::Bools(v) => v.push(b),
                    Data::Numbers(_) | Data::Strings(_) => return Err(mixed()),
                }
                Ok(())
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
                match self.0 {
                    Data::Absent => *self.0 = Data::Strings(vec![s.to_owned()]),
                    Data::Strings(v) => v.push(s.to_owned()),
                    Data::Numbers(_) | Data::Bools(_) => return Err(mixed()),
                }
                Ok(())
            }
            fn visit_unit<E: de::Error>(self) -> Result<(), E> {
                Err(E::custom("null is not a tensor value"))
            }
        }
        let mut data = Data::Absent;
        d.deserialize_seq(Flat(&mut data))?;
        Ok(data)
    }
}

/// An inference request (its JSON part, with the binary extension).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    /// Echoed in the answer.
    #[serde(default)]
    id: Option<String>,
    /// `binary_data_output: true` sends every output as binary data.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// One tensor `[N, …]` named `input`, or one `[N]` input per feature (models with
    /// feature names; BYTES for categorical features).
    inputs: Vec<InferInput>,
    /// The outputs to answer, in this order (default: all).
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    /// BOOL, UINT8-64, INT8-64, FP16, FP32, FP64 or BYTES.
    datatype: String,
    /// `binary_data_size`: this tensor's bytes in the binary data after the JSON.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Flat row-major or nested lists of numbers, booleans or strings; absent when the
    /// tensor is sent as binary data.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    data: Data,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    /// `binary_data: true|false` overrides `binary_data_output` for this output.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Element count of a shape, refusing negative dims and overflow (a shape of [1e12] is
/// refused before anything is allocated, since it never matches the data sent).
fn elements(name: &str, shape: &[i64]) -> Result<usize, Error> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| {
            Error::InvalidInput(format!(
                "input '{name}': shape {shape:?} has a negative dimension"
            ))
        })?;
        acc.checked_mul(d).ok_or_else(|| {
            Error::InvalidInput(format!("input '{name}': shape {shape:?} is too large"))
        })
    })
}

fn binary_size(params: &Option<Map<String, Value>>) -> Option<usize> {
    params
        .as_ref()?
        .get("binary_data_size")?
        .as_u64()
        .map(|n| n as usize)
}

/// Decodes little-endian binary tensor data of a datatype.
fn decode_binary(name: &str, datatype: &str, bytes: &[u8]) -> Result<Data, Error> {
    let bad = |m: String| Error::InvalidInput(format!("input '{name}': {m}"));
    macro_rules! nums {
        ($t:ty) => {{
            let w = std::mem::size_of::<$t>();
            if bytes.len() % w != 0 {
                return Err(bad(format!(
                    "{} bytes of binary data is not a whole number of {datatype} values",
                    bytes.len()
                )));
            }
            Data::Numbers(
                bytes
                    .chunks_exact(w)
                    .map(|c| {
                        <$t>::from_le_bytes(c.try_into().expect("chunk of the type's width")) as f64
                    })
                    .collect(),
            )
        }};
    }
    Ok(match datatype {
        "BOOL" => Data::Bools(bytes.iter().map(|b| *b != 0).collect()),
        "UINT8" => nums!(u8),
        "UINT16" => nums!(u16),
        "UINT32" => nums!(u32),
        "UINT64" => nums!(u64),
        "INT8" => nums!(i8),
        "INT16" => nums!(i16),
        "INT32" => nums!(i32),
        "INT64" => nums!(i64),
        "FP32" => nums!(f32),
        "FP64" => nums!(f64),
        "FP16" => {
            if bytes.len() % 2 != 0 {
                return Err(bad("odd number of FP16 bytes".into()));
            }
            Data::Numbers(
                bytes
                    .chunks_exact(2)
                    .map(|c| f64::from(f16_to_f32(u16::from_le_bytes([c[0], c[1]]))))
                    .collect(),
            )
        }
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(bad("truncated BYTES element length".into()));
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(s) = rest.get(4..4 + n) else {
                    return Err(bad("BYTES element longer than the data".into()));
                };
                out.push(
                    String::from_utf8(s.to_vec())
                        .map_err(|_| bad("BYTES element is not UTF-8".into()))?,
                );
                rest = &rest[4 + n..];
            }
            Data::Strings(out)
        }
        other => return Err(bad(format!("unknown datatype '{other}'"))),
    })
}

/// IEEE half → single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalize.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Checks a value fits the declared datatype (integers integral and in range, etc.).
fn check_datatype(name: &str, datatype: &str, data: &Data) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidInput(format!("input '{name}': {m}")));
    let range: Option<(f64, f64)> = match datatype {
        "UINT8" => Some((0.0, 255.0)),
        "UINT16" => Some((0.0, 65535.0)),
        "UINT32" => Some((0.0, 4_294_967_295.0)),
        "UINT64" => Some((0.0, 1.8446744073709552e19)),
        "INT8" => Some((-128.0, 127.0)),
        "INT16" => Some((-32768.0, 32767.0)),
        "INT32" => Some((-2_147_483_648.0, 2_147_483_647.0)),
        "INT64" => Some((-9.223372036854776e18, 9.223372036854776e18)),
        "FP16" | "FP32" | "FP64" | "BOOL" | "BYTES" => None,
        other => return bad(format!("unknown datatype '{other}': expected BOOL, UINT8-64, INT8-64, FP16, FP32, FP64 or BYTES")),
    };
    match (datatype, data) {
        ("BOOL", Data::Bools(_)) | ("BYTES", Data::Strings(_)) | (_, Data::Absent) => Ok(()),
        ("BOOL" | "BYTES", _) => bad(format!("data does not match datatype {datatype}")),
        (_, Data::Numbers(v)) => {
            if let Some((lo, hi)) = range {
                if let Some(x) = v.iter().find(|x| x.fract() != 0.0 || **x < lo || **x > hi) {
                    return bad(format!("{x} is not a valid {datatype} value"));
                }
            }
            Ok(())
        }
        (_, Data::Bools(_) | Data::Strings(_)) => bad(format!(
            "data does not match datatype {datatype}: expected numbers"
        )),
    }
}

fn as_numbers(name: &str, data: Data) -> Result<Vec<f64>, Error> {
    match data {
        Data::Numbers(v) => Ok(v),
        Data::Bools(v) => Ok(v.into_iter().map(|b| f64::from(u8::from(b))).collect()),
        Data::Strings(_) => Err(Error::InvalidInput(format!(
            "input '{name}': BYTES data cannot feed a numeric tensor"
        ))),
        Data::Absent => Err(Error::InvalidInput(format!("input '{name}' has no data"))),
    }
}

fn as_raw(data: Data) -> Vec<RawValue> {
    match data {
        Data::Numbers(v) => v.into_iter().map(RawValue::Number).collect(),
        Data::Bools(v) => v.into_iter().map(RawValue::Bool).collect(),
        Data::Strings(v) => v.into_iter().map(RawValue::Text).collect(),
        Data::Absent => Vec::new(),
    }
}

/// Parses the body (JSON, or JSON + binary tensors) into the request and its input data.
fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<InferRequest, ApiError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "header {HEADER_LENGTH} must be a length within the body ({} bytes)",
                    body.len()
                ))
            })?,
    };
    let mut req: InferRequest =
        serde_json::from_slice(&body[..json_len]).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => Error::InvalidInput(e.to_string()).into(),
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => ApiError::MalformedJson(e.to_string()),
        })?;
    let mut rest = &body[json_len..];
    for input in &mut req.inputs {
        if let Some(n) = binary_size(&input.parameters) {
            if !matches!(input.data, Data::Absent) {
                return Err(Error::InvalidInput(format!(
                    "input '{}' has both data and binary_data_size",
                    input.name
                ))
                .into());
            }
            let Some(bytes) = rest.get(..n) else {
                return Err(Error::InvalidInput(format!(
                    "input '{}': binary_data_size {n} runs past the body",
                    input.name
                ))
                .into());
            };
            input.data = decode_binary(&input.name, &input.datatype, bytes)?;
            rest = &rest[n..];
        }
    }
    if !rest.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} bytes of binary data follow the inputs that claim them",
            rest.len()
        ))
        .into());
    }
    Ok(req)
}

/// Decodes an infer body into model rows, as `POST /v2/models/{name}/infer` does before its
/// rows go to the batcher: the JSON part (all of `body`, or the length the
/// `inference-header-content-length` header gives, binary tensors after it), then its inputs
/// checked against `model`'s signature. Every error is a 4xx kind. The handler reads the
/// request's `parameters` and `outputs` too; this is the door for fuzz targets.
pub fn decode_infer(
    model: &Model,
    headers: &HeaderMap,
    body: &[u8],
    max_rows: usize,
) -> Result<Decoded, ApiError> {
    let req = parse_request(headers, body)?;
    to_rows(model, req.inputs, max_rows)
}

/// The model rows of a request: one raw tensor, or one input per feature; more than
/// `max_rows` instances are refused before their rows are built.
fn to_rows(model: &Model, inputs: Vec<InferInput>, max_rows: usize) -> Result<Decoded, ApiError> {
    let spec = InputSpec::of(model).with_max_rows(max_rows);
    if inputs.is_empty() {
        return Err(Error::InvalidInput("inputs is empty".into()).into());
    }
    for i in &inputs {
        let n = elements(&i.name, &i.shape)?;
        if n != i.data.len() {
            return Err(Error::InvalidInput(format!(
                "input '{}': shape {:?} holds {n} values but {} were sent",
                i.name,
                i.shape,
                i.data.len()
            ))
            .into());
        }
        check_datatype(&i.name, &i.datatype, &i.data)?;
    }
    let features = spec.features();
    let per_feature = features.is_some_and(|f| inputs.iter().all(|i| f.contains(&i.name)));
    if per_feature && !(inputs.len() == 1 && spec.raw_width() == 1 && inputs[0].name == "input") {
        let features = features.expect("checked");
        let n = inputs[0].shape.first().copied().unwrap_or(0) as usize;
        let mut columns = Vec::with_capacity(inputs.len());
        for i in inputs {
            let ok_shape = i.shape.len() == 1 || (i.shape.len() == 2 && i.shape[1] == 1);
            if !ok_shape || i.shape[0] as usize != n {
                return Err(Error::InvalidInput(format!(
                    "input '{}': a feature input has shape [{n}] or [{n}, 1], got {:?}",
                    i.name, i.shape
                ))
                .into());
            }
            columns.push((i.name, as_raw(i.data)));
        }
        if let Some(missing) = features
            .iter()
            .find(|f| !columns.iter().any(|(c, _)| c == *f))
        {
            if spec_has_no_fill(model, missing) {
                return Err(
                    Error::InvalidInput(format!("feature input '{missing}' is missing")).into(),
                );
            }
        }
        if n == 0 {
            return Err(Error::InvalidInput("inputs hold no instances".into()).into());
        }
        return rows_from_columns(&spec, &columns, n);
    }
    if inputs.len() != 1 {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(Error::InvalidInput(format!(
            "expected one input tensor{}, got {names:?}",
            match features {
                Some(f) => format!(" or one input per feature {f:?}"),
                None => String::new(),
            }
        ))
        .into());
    }
    let input = inputs.into_iter().next().expect("one input");
    let raw_shape = spec.raw_shape();
    let want: Vec<i64> = raw_shape.iter().map(|&d| d as i64).collect();
    if input.shape.len() != want.len() + 1 || input.shape[1..] != want[..] {
        return Err(Error::InvalidInput(format!(
            "input '{}': expected shape [N, {}], got {:?}",
            input.name,
            want.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            input.shape
        ))
        .into());
    }
    let n = input.shape[0] as usize;
    if n == 0 {
        return Err(
            Error::InvalidInput(format!("input '{}' holds no instances", input.name)).into(),
        );
    }
    if matches!(input.datatype.as_str(), "BYTES") {
        return Err(Error::InvalidInput(format!(
            "input '{}': BYTES needs one input per feature (named as the feature)",
            input.name
        ))
        .into());
    }
    let name = input.name;
    let data = as_numbers(&name, input.data)?;
    rows_from_tensor(&spec, "input", &data, n)
}

fn spec_has_no_fill(model: &Model, feature: &str) -> bool {
    let Some(p) = &model.spec().preprocessing else {
        return true;
    };
    p.features.iter().any(|f| {
        f.name() == feature
            && match f {
                crate::preprocess::FeatureTransform::Numeric { fill, .. } => fill.is_none(),
                crate::preprocess::FeatureTransform::Categorical { fill, .. } => fill.is_none(),
            }
    })
}

/// The answer to an inference request (its JSON part, with the binary extension).
#[derive(Serialize, ToSchema)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: String,
    /// The request's `id`, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Present when the request raised warnings (unknown categories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<InferParametersView<'a>>,
    pub outputs: Vec<OutputTensorView<'a>>,
}

#[derive(Serialize, ToSchema)]
pub struct InferParametersView<'a> {
    /// One per instance and feature, naming both.
    pub warnings: &'a [String],
}

/// One output tensor: its data inline, or its size in the binary data after the JSON.
#[derive(Serialize, ToSchema)]
pub struct OutputTensorView<'a> {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: &'a [usize],
    /// Flat, row-major; absent when the tensor is sent as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<TensorDataView<'a>>,
    /// Present when the tensor is sent as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryDataView>,
}

/// Numbers (FP32 outputs) or strings (BYTES outputs).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TensorDataView<'a> {
    Numbers(&'a [f32]),
    Strings(&'a [String]),
}

#[derive(Serialize, ToSchema)]
pub struct BinaryDataView {
    /// Bytes of this tensor in the binary data, in output order.
    pub binary_data_size: usize,
}

/// One output tensor of the answer.
struct OutTensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    numbers: Vec<f32>,
    strings: Vec<String>,
}

impl OutTensor {
    fn bytes(&self) -> Vec<u8> {
        if self.datatype == "BYTES" {
            let mut out = Vec::new();
            for s in &self.strings {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out
        } else {
            self.numbers.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
    }
}

fn outputs_of(lv: &LoadedVersion, n: usize, mut values: Vec<f32>) -> Vec<OutTensor> {
    let spec = lv.model.spec();
    match spec.task {
        Task::Classification => {
            let per_row = lv.model.output_len();
            let probabilities = lv.model.outputs_probabilities();
            let classes = class_count(lv);
            let labels: Vec<String> = if spec.labels.is_empty() {
                (0..classes).map(|i| i.to_string()).collect()
            } else {
                spec.labels.clone()
            };
            let mut probs = Vec::with_capacity(n * classes);
            let mut best = Vec::with_capacity(n);
            for row in values.chunks(per_row) {
                let scores = class_scores(row, probabilities);
                let top = scores
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(i, _)| i);
                best.push(labels.get(top).cloned().unwrap_or_default());
                probs.extend(scores);
            }
            vec![
                OutTensor {
                    name: "probabilities",
                    datatype: "FP32",
                    shape: vec![n, classes],
                    numbers: probs,
                    strings: Vec::new(),
                },
                OutTensor {
                    name: "label",
                    datatype: "BYTES",
                    shape: vec![n],
                    numbers: Vec::new(),
                    strings: best,
                },
            ]
        }
        Task::Regression => {
            if let Some(p) = &spec.preprocessing {
                for y in &mut values {
                    *y = p.untransform_target(*y);
                }
            }
            let mut shape = vec![n];
            shape.extend_from_slice(lv.model.output_shape());
            vec![OutTensor {
                name: "output",
                datatype: "FP32",
                shape,
                numbers: values,
                strings: Vec::new(),
            }]
        }
    }
}

fn wants_binary(global: bool, params: Option<&Map<String, Value>>) -> bool {
    params
        .and_then(|p| p.get("binary_data"))
        .and_then(Value::as_bool)
        .unwrap_or(global)
}

async fn infer_on(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let lv = lookup(state, name, version)?;
    let req = parse_request(headers, &body)?;
    let timeout = match headers
        .get(TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::parse::<u64>)
    {
        None => lv.batcher.config().request_timeout,
        Some(Ok(ms)) if ms > 0 => std::time::Duration::from_millis(ms),
        Some(_) => {
            return Err(Error::InvalidInput(format!(
                "header {TIMEOUT_HEADER}: expected a positive number of milliseconds"
            ))
            .into())
        }
    };
    let binary_all = req
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let decoded = to_rows(&lv.model, req.inputs, state.config.api.max_rows_per_request)?;
    let computed = compute(state, &lv, decoded.rows, decoded.n_rows, timeout).await?;
    let mut outputs = outputs_of(&lv, decoded.n_rows, computed.outputs);
    // Requested outputs: select (in the requested order) and read per-output binary flags.
    let mut binary: Vec<bool> = vec![binary_all; outputs.len()];
    if let Some(wanted) = &req.outputs {
        let mut selected = Vec::with_capacity(wanted.len());
        let mut flags = Vec::with_capacity(wanted.len());
        for w in wanted {
            let Some(pos) = outputs.iter().position(|o| o.name == w.name) else {
                let names: Vec<&str> = outputs.iter().map(|o| o.name).collect();
                return Err(Error::InvalidInput(format!(
                    "unknown output '{}': this model answers {names:?}",
                    w.name
                ))
                .into());
            };
            flags.push(wants_binary(binary_all, w.parameters.as_ref()));
            selected.push(outputs.remove(pos));
        }
        outputs = selected;
        binary = flags;
    }
    let mut res = encode(&lv, req.id, &decoded.warnings, &outputs, &binary);
    let h = res.headers_mut();
    h.insert(super::X_QUEUE_TIME, ms_header(computed.queue_time));
    h.insert(super::X_INFERENCE_TIME, ms_header(computed.compute_time));
    h.insert(super::X_BATCH_SIZE, HeaderValue::from(computed.batch_rows));
    Ok(res)
}

/// The answer: JSON, or JSON followed by the tensors sent as binary data (the extension's
/// `application/octet-stream` body, its JSON length in `Inference-Header-Content-Length`).
fn encode(
    lv: &LoadedVersion,
    id: Option<String>,
    warnings: &[String],
    outputs: &[OutTensor],
    binary: &[bool],
) -> Response {
    let mut blob = Vec::new();
    let views = outputs
        .iter()
        .zip(binary)
        .map(|(o, &bin)| {
            let (data, parameters) = if bin {
                let bytes = o.bytes();
                let size = bytes.len();
                blob.extend_from_slice(&bytes);
                (
                    None,
                    Some(BinaryDataView {
                        binary_data_size: size,
                    }),
                )
            } else if o.datatype == "BYTES" {
                (Some(TensorDataView::Strings(&o.strings)), None)
            } else {
                (Some(TensorDataView::Numbers(&o.numbers)), None)
            };
            OutputTensorView {
                name: o.name,
                datatype: o.datatype,
                shape: &o.shape,
                data,
                parameters,
            }
        })
        .collect();
    let answer = InferResponse {
        model_name: &lv.name,
        model_version: lv.version.to_string(),
        id,
        parameters: (!warnings.is_empty()).then_some(InferParametersView { warnings }),
        outputs: views,
    };
    let json_bytes = serde_json::to_vec(&answer).expect("answers serialize");
    if blob.is_empty() {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json_bytes,
        )
            .into_response()
    } else {
        let json_len = json_bytes.len();
        let mut body = json_bytes;
        body.extend_from_slice(&blob);
        let mut r = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            body,
        )
            .into_response();
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(json_len));
        r
    }
}

/// Reads the body up to the limit (any content type: the binary extension is not JSON).
async fn read_body(state: &AppState, body: axum::body::Body) -> Result<Bytes, ApiError> {
    let limit = state.config.api.body_limit;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| super::extract::body_error(&e, limit))
}

/// `POST /v2/models/{name}/infer`
#[utoipa::path(
    post,
    path = "/v2/models/{name}/infer",
    operation_id = "v2_infer",
    tag = "v2",
    summary = "Run the default version (shares its batcher queue with v1 requests)",
    params(ModelPath, Timeout, BinaryHeader),
    request_body(
        description = "JSON, or with the binary extension: `application/octet-stream`, the \
            JSON part (its length in `Inference-Header-Content-Length`) followed by the tensors \
            whose `binary_data_size` it gives, in input order",
        content((InferRequest = "application/json"), ("application/octet-stream")),
    ),
    responses(
        (
            status = 200,
            description = "JSON, or `application/octet-stream` when outputs are sent as binary \
                data: the JSON part, then the tensors in output order",
            content((InferResponse = "application/json"), ("application/octet-stream")),
            headers(("inference-header-content-length" = usize, description = "Length of the JSON part (binary answers)")),
        ),
        InferErrors,
    ),
)]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body).await?;
    infer_on(&state, &name, None, &headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`
#[utoipa::path(
    post,
    path = "/v2/models/{name}/versions/{version}/infer",
    operation_id = "v2_version_infer",
    tag = "v2",
    summary = "Run one version",
    params(VersionPath, Timeout, BinaryHeader),
    request_body(
        description = "JSON, or with the binary extension: `application/octet-stream`, the \
            JSON part (its length in `Inference-Header-Content-Length`) followed by the tensors \
            whose `binary_data_size` it gives, in input order",
        content((InferRequest = "application/json"), ("application/octet-stream")),
    ),
    responses(
        (
            status = 200,
            description = "JSON, or `application/octet-stream` when outputs are sent as binary \
                data: the JSON part, then the tensors in output order",
            content((InferResponse = "application/json"), ("application/octet-stream")),
            headers(("inference-header-content-length" = usize, description = "Length of the JSON part (binary answers)")),
        ),
        InferErrors,
    ),
)]
pub async fn version_infer(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body).await?;
    infer_on(&state, &name, Some(&version), &headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_nested_data_and_refuses_mixtures() {
        let d: Data = serde_json::from_str("[[1, 2], [3.5, 4]]").unwrap();
        assert!(matches!(d, Data::Numbers(ref v) if v == &[1.0, 2.0, 3.5, 4.0]));
        let d: Data = serde_json::from_str(r#"["a", ["b"]]"#).unwrap();
        assert_eq!(d.len(), 2);
        assert!(serde_json::from_str::<Data>(r#"[1, "a"]"#).is_err());
        assert!(serde_json::from_str::<Data>("[null]").is_err());
    }

    #[test]
    fn binary_decoding_and_datatype_checks() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert!(
            matches!(decode_binary("x", "FP32", &bytes).unwrap(), Data::Numbers(v) if v == vec![1.5, -2.0])
        );
        let mut b = Vec::new();
        for s in ["ab", "c"] {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        assert!(
            matches!(decode_binary("x", "BYTES", &b).unwrap(), Data::Strings(v) if v == vec!["ab", "c"])
        );
        assert!(decode_binary("x", "FP32", &[0, 0, 0]).is_err());
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert!(check_datatype("x", "UINT8", &Data::Numbers(vec![256.0])).is_err());
        assert!(check_datatype("x", "INT32", &Data::Numbers(vec![1.5])).is_err());
        assert!(check_datatype("x", "FP128", &Data::Numbers(vec![1.0])).is_err());
        assert!(elements("x", &[1_000_000_000_000, 1_000_000_000_000]).is_err());
        assert!(elements("x", &[-1, 4]).is_err());
    }
}
