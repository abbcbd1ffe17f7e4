//! `inference.GRPCInferenceService`: the Open Inference Protocol's calls, each a decoder and
//! an encoder around what REST's V2 handlers call (`api::v2`, `api::repository`, the
//! serving core). Runs on the call's task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::proto::inference as pb;
use super::status;
use crate::api::decode::InputSpec;
use crate::api::v2::decode::{decode_binary, to_rows, to_texts, Data, InferInput};
use crate::api::v2::encode::{self, ModelOutput, Values};
use crate::api::v2::{self as v2, ModelMetadataResponse};
use crate::error::Error;
use crate::metrics::Protocol;
use crate::registry::LoadedVersion;
use crate::serving::{Rows, Timing};
use crate::state::AppState;

use pb::grpc_inference_service_server::GrpcInferenceService;
use pb::infer_parameter::ParameterChoice;

pub(super) struct Inference {
    state: AppState,
}

impl Inference {
    pub(super) fn new(state: AppState) -> Self {
        Inference { state }
    }
}

/// An empty version field means the default version, as a missing one does in REST.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

/// The call's `grpc-timeout` (the client's deadline) as the request's deadline: digits
/// then a unit, H M S m u n. A malformed one is refused, as REST refuses a malformed
/// `X-Request-Timeout-Ms`.
pub(super) fn deadline<T>(req: &Request<T>) -> Result<Option<Duration>, Status> {
    let Some(v) = req.metadata().get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || {
        Status::invalid_argument(format!(
            "grpc-timeout {v:?} is not 1-8 digits and a unit (H, M, S, m, u, n)"
        ))
    };
    let s = v.to_str().map_err(|_| bad())?;
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    if digits.is_empty() || digits.len() > 8 {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    }))
}

fn bool_param(params: &HashMap<String, pb::InferParameter>, key: &str) -> Option<bool> {
    match params.get(key)?.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Some(b),
        _ => None,
    }
}

// === decode ===

/// How many values each field of a tensor's contents holds, with the field's name.
fn filled(c: &pb::InferTensorContents) -> [(usize, &'static str); 8] {
    [
        (c.bool_contents.len(), "bool_contents"),
        (c.int_contents.len(), "int_contents"),
        (c.int64_contents.len(), "int64_contents"),
        (c.uint_contents.len(), "uint_contents"),
        (c.uint64_contents.len(), "uint64_contents"),
        (c.fp32_contents.len(), "fp32_contents"),
        (c.fp64_contents.len(), "fp64_contents"),
        (c.bytes_contents.len(), "bytes_contents"),
    ]
}

/// A tensor's values from the typed field of its datatype. Values in any other field are
/// refused (they would be silently ignored otherwise).
fn typed(name: &str, datatype: &str, c: pb::InferTensorContents) -> Result<Data, Error> {
    let bad = |m: String| Error::InvalidInput(format!("input '{name}': {m}"));
    let field = match datatype {
        "BOOL" => "bool_contents",
        "INT8" | "INT16" | "INT32" => "int_contents",
        "INT64" => "int64_contents",
        "UINT8" | "UINT16" | "UINT32" => "uint_contents",
        "UINT64" => "uint64_contents",
        "FP32" => "fp32_contents",
        "FP64" => "fp64_contents",
        "BYTES" => "bytes_contents",
        "FP16" | "BF16" => {
            return Err(bad(format!(
                "{datatype} has no typed contents field: send it in raw_input_contents"
            )))
        }
        other => {
            return Err(bad(format!(
                "unknown datatype '{other}': expected BOOL, UINT8-64, INT8-64, FP16, BF16, FP32, FP64 or BYTES"
            )))
        }
    };
    if let Some((_, other)) = filled(&c).into_iter().find(|&(n, f)| n > 0 && f != field) {
        return Err(bad(format!(
            "datatype {datatype} takes its values in contents.{field}, not contents.{other}"
        )));
    }
    let nums = |v: Vec<f64>| Ok(Data::Numbers(v));
    match field {
        "bool_contents" => Ok(Data::Bools(c.bool_contents)),
        "int_contents" => nums(c.int_contents.into_iter().map(f64::from).collect()),
        "int64_contents" => nums(c.int64_contents.into_iter().map(|x| x as f64).collect()),
        "uint_contents" => nums(c.uint_contents.into_iter().map(f64::from).collect()),
        "uint64_contents" => nums(c.uint64_contents.into_iter().map(|x| x as f64).collect()),
        "fp32_contents" => nums(c.fp32_contents.into_iter().map(f64::from).collect()),
        "fp64_contents" => nums(c.fp64_contents),
        _ => {
            let strings = c
                .bytes_contents
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.to_vec())
                        .map_err(|_| bad(format!("bytes_contents[{i}] is not UTF-8")))
                })
                .collect::<Result<_, _>>()?;
            Ok(Data::Strings(strings))
        }
    }
}

/// The request's inputs as the V2 decoder takes them: every input's values in its typed
/// contents, or every input's bytes in `raw_input_contents` (one entry per input, in order).
fn inputs(
    tensors: Vec<pb::model_infer_request::InferInputTensor>,
    raw: Vec<Bytes>,
) -> Result<Vec<InferInput>, Error> {
    if !raw.is_empty() && raw.len() != tensors.len() {
        return Err(Error::InvalidInput(format!(
            "raw_input_contents holds {} entries for {} inputs: send one per input, in input order",
            raw.len(),
            tensors.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let data = match raw.next() {
            Some(bytes) => {
                if t.contents
                    .as_ref()
                    .is_some_and(|c| filled(c).iter().any(|f| f.0 > 0))
                {
                    return Err(Error::InvalidInput(format!(
                        "input '{}' has both contents and raw_input_contents: send one",
                        t.name
                    )));
                }
                decode_binary(&t.name, &t.datatype, &bytes)?
            }
            None => typed(&t.name, &t.datatype, t.contents.unwrap_or_default())?,
        };
        out.push(InferInput::new(t.name, t.shape, t.datatype, data));
    }
    Ok(out)
}

// === encode ===

/// One output as the protocol carries it: typed contents, or (when `raw`) its bytes laid out
/// as REST's binary extension lays them out.
fn output(
    p: &crate::serving::Prediction,
    o: ModelOutput,
    raw: Option<&mut Vec<Bytes>>,
) -> pb::model_infer_response::InferOutputTensor {
    let t = encode::tensor(p, o);
    let contents = match raw {
        Some(raw) => {
            let mut buf = Vec::new();
            encode::write_binary(&t.values, &mut buf);
            raw.push(buf.into());
            None
        }
        None => Some(match &t.values {
            Values::Numbers(v) => pb::InferTensorContents {
                fp32_contents: v.to_vec(),
                ..Default::default()
            },
            Values::Strings(v) => pb::InferTensorContents {
                bytes_contents: v
                    .iter()
                    .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                    .collect(),
                ..Default::default()
            },
        }),
    };
    pb::model_infer_response::InferOutputTensor {
        name: t.output.name().to_owned(),
        datatype: t.output.datatype().to_owned(),
        shape: t.shape.iter().map(|&d| d as i64).collect(),
        parameters: HashMap::new(),
        contents,
    }
}

/// The answer's `x-queue-time`, `x-inference-time` (ms) and `x-batch-size`, as REST's headers.
pub(super) fn timing_metadata<T>(res: &mut Response<T>, t: &Timing) {
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
    let m = res.metadata_mut();
    for (key, value) in [
        ("x-queue-time", ms(t.queue)),
        ("x-inference-time", ms(t.compute)),
        ("x-batch-size", t.batch_rows.to_string()),
    ] {
        if let Ok(v) = value.parse() {
            m.insert(key, v);
        }
    }
}

fn metadata(m: ModelMetadataResponse) -> pb::ModelMetadataResponse {
    let tensors = |v: Vec<v2::TensorMetadataView>| {
        v.into_iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name,
                datatype: t.datatype.to_owned(),
                shape: t.shape,
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform.to_owned(),
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

impl Inference {
    /// Decode → the serving core → encode, as REST's `v2::infer_on`.
    async fn infer(
        &self,
        req: pb::ModelInferRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let start = Instant::now();
        let state = &self.state;
        let lv = v2::lookup(state, &req.model_name, version(&req.model_version))
            .map_err(status::from)?;
        let serving = state.serving();
        let raw_out = !req.raw_input_contents.is_empty()
            || bool_param(&req.parameters, "binary_data_output") == Some(true);
        if lv.is_text() {
            return self.embed(&lv, req, raw_out, timeout, span).await;
        }
        let layers = lv.layers().map_err(status::from)?;
        let model = &layers.model;
        // Refused before anything is computed, as REST does.
        let requested =
            (!req.outputs.is_empty()).then(|| req.outputs.iter().map(|o| (o.name.as_str(), None)));
        let selected =
            encode::select_named(model.task(), requested, raw_out).map_err(status::from)?;
        let inputs = inputs(req.inputs, req.raw_input_contents).map_err(status::from)?;
        let spec = InputSpec::of(model).with_max_rows(serving.max_rows());
        let decoded = to_rows(&spec, inputs).map_err(status::from)?;
        let rows = Rows {
            data: decoded.rows,
            n_rows: decoded.n_rows,
        };
        let prediction = serving
            .predict(&lv, rows, timeout, span)
            .await
            .map_err(status::from)?;
        let mut raw = Vec::new();
        let outputs = selected
            .iter()
            .map(|&(o, _)| output(&prediction, o, raw_out.then_some(&mut raw)))
            .collect();
        let mut parameters = HashMap::new();
        if !decoded.warnings.is_empty() {
            parameters.insert(
                "warnings".to_owned(),
                pb::InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(
                        decoded.warnings.join("\n"),
                    )),
                },
            );
        }
        let mut res = Response::new(pb::ModelInferResponse {
            model_name: lv.name.clone(),
            model_version: lv.version.to_string(),
            id: req.id,
            parameters,
            outputs,
            raw_output_contents: raw,
        });
        timing_metadata(&mut res, &prediction.timing);
        // From the decoded request to the encoded answer, as REST's infer observes it.
        lv.observe_request(Protocol::Grpc, start);
        Ok(res)
    }
}

impl Inference {
    /// A text model, as REST's V2 `text_infer`: one BYTES input of texts → `embedding`, FP32
    /// `[N, size]` (inputs longer than the model's maximum are refused, not truncated).
    async fn embed(
        &self,
        lv: &LoadedVersion,
        req: pb::ModelInferRequest,
        raw_out: bool,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let start = Instant::now();
        if let Some(out) = req.outputs.iter().find(|o| o.name != "embedding") {
            return Err(status::from(Error::InvalidInput(format!(
                "output '{}': a text model answers 'embedding'",
                out.name
            ))));
        }
        let inputs = inputs(req.inputs, req.raw_input_contents).map_err(status::from)?;
        let texts = to_texts(inputs).map_err(status::from)?;
        let request = crate::serving::text::TextRequest {
            texts,
            truncate: false,
            normalize: None,
        };
        let embeddings = self
            .state
            .serving()
            .embed(lv, request, timeout, span)
            .await
            .map_err(status::from)?;
        let size = lv.text().map_err(status::from)?.model.hidden_size();
        let n = embeddings.vectors.len();
        let values: Vec<f32> = embeddings.vectors.concat();
        let mut raw = Vec::new();
        let contents = if raw_out {
            let mut buf = Vec::with_capacity(values.len() * 4);
            encode::write_binary(&Values::Numbers(values.into()), &mut buf);
            raw.push(buf.into());
            None
        } else {
            Some(pb::InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            })
        };
        let output = pb::model_infer_response::InferOutputTensor {
            name: "embedding".into(),
            datatype: "FP32".into(),
            shape: vec![n as i64, size as i64],
            parameters: HashMap::new(),
            contents,
        };
        let mut res = Response::new(pb::ModelInferResponse {
            model_name: lv.name.clone(),
            model_version: lv.version.to_string(),
            id: req.id,
            parameters: HashMap::new(),
            outputs: vec![output],
            raw_output_contents: raw,
        });
        timing_metadata(&mut res, &embeddings.timing);
        lv.observe_request(Protocol::Grpc, start);
        Ok(res)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = super::health::ready(&self.state);
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let req = req.into_inner();
        let ready = match v2::lookup(&self.state, &req.name, version(&req.version)) {
            Ok(_) => true,
            Err(
                e @ (Error::ModelNotFound(_)
                | Error::VersionNotFound { .. }
                | Error::InvalidModelName(_)
                | Error::InvalidInput(_)),
            ) => return Err(status::from(e)),
            Err(_) => false,
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        let lv = v2::lookup(&self.state, &req.name, version(&req.version)).map_err(status::from)?;
        let m = v2::model_metadata(&self.state, &lv).map_err(status::from)?;
        Ok(Response::new(metadata(m)))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let timeout = deadline(&req)?;
        let peer = req
            .extensions()
            .get::<SocketAddr>()
            .map(|p| tracing::field::display(*p));
        // The REST edge's span, with the same fields the serving core records.
        let span = tracing::debug_span!(
            "grpc",
            peer,
            method = "ModelInfer",
            model = tracing::field::Empty,
            version = tracing::field::Empty,
            batch = tracing::field::Empty,
        );
        let req = req.into_inner();
        self.infer(req, timeout, &span)
            .instrument(span.clone())
            .await
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready_only = req.get_ref().ready;
        let models = crate::api::repository::index_of(&self.state)
            .into_iter()
            .filter(|m| !ready_only || m.state == "READY")
            .map(|m| pb::repository_index_response::ModelIndex {
                name: m.name,
                version: m.version,
                state: m.state.to_owned(),
                reason: m.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let name = req.into_inner().model_name;
        crate::api::repository::load_named(&self.state, name)
            .await
            .map_err(status::of)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let name = req.into_inner().model_name;
        crate::api::repository::unload_named(&self.state, name)
            .await
            .map_err(status::of)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
        r
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(
            deadline(&with_timeout("250m")).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            deadline(&with_timeout("2S")).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            deadline(&with_timeout("7u")).unwrap(),
            Some(Duration::from_micros(7))
        );
        assert_eq!(deadline(&Request::new(())).unwrap(), None);
        for bad in ["", "m", "123456789m", "10x", "-1S"] {
            assert!(deadline(&with_timeout(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn typed_contents_must_be_in_the_datatypes_field() {
        let c = pb::InferTensorContents {
            fp32_contents: vec![1.0, 2.5],
            ..Default::default()
        };
        assert!(matches!(typed("x", "FP32", c.clone()), Ok(Data::Numbers(v)) if v == [1.0, 2.5]));
        let err = typed("x", "FP64", c).unwrap_err().to_string();
        assert!(
            err.contains("input 'x'") && err.contains("fp64_contents"),
            "{err}"
        );
        let err = typed("x", "FP16", Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("raw_input_contents"), "{err}");
        let c = pb::InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"red")],
            ..Default::default()
        };
        assert!(matches!(typed("c", "BYTES", c), Ok(Data::Strings(v)) if v == ["red"]));
    }
}
