//! TF Serving's gRPC API: `tensorflow.serving.PredictionService` (Predict, Classify,
//! Regress, GetModelMetadata) and `tensorflow.serving.ModelService` (GetModelStatus), each a
//! decoder and an encoder around what REST's `/v1/models/…` handlers call: the same lookup,
//! the same row decoders (tensors through V2's `to_rows`, examples through the named-feature
//! decoder REST's `:classify` uses), the serving core (the same batcher queue) and the same
//! signatures. Runs on the call's task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::infer::{deadline, timing_metadata};
use super::proto::google::protobuf::{Any, Int64Value};
use super::proto::tensorflow as tf;
use super::status;
use crate::api::decode::{rows_from_named, InputSpec};
use crate::api::extract::{check_name, Verb};
use crate::api::types::{SignatureDefMapView, TensorInfoView};
use crate::api::v2::decode::{decode_binary, to_rows, to_texts, Data, InferInput};
use crate::error::Error;
use crate::metrics::Protocol;
use crate::preprocess::RawValue;
use crate::registry::{LoadedVersion, VersionState};
use crate::serving::{Prediction, Rows, Timing};
use crate::state::AppState;

use tf::serving as pb;
use tf::DataType;

/// What GetModelMetadata's `signature_def` entry holds.
const SIGNATURE_DEF_MAP_URL: &str = "type.googleapis.com/tensorflow.serving.SignatureDefMap";

pub(super) struct TfServing {
    state: AppState,
}

impl TfServing {
    pub(super) fn new(state: AppState) -> Self {
        TfServing { state }
    }
}

fn invalid(message: String) -> Status {
    status::from(Error::InvalidInput(message))
}

/// The request's model spec; every call needs one with a name.
fn spec_of(spec: Option<pb::ModelSpec>) -> Result<pb::ModelSpec, Status> {
    spec.ok_or_else(|| invalid("model_spec is missing: name the model in model_spec.name".into()))
}

/// The version a model spec names (unset: the model's default version).
fn version_of(spec: &pb::ModelSpec) -> Result<Option<u64>, Error> {
    use pb::model_spec::VersionChoice;
    match &spec.version_choice {
        None => Ok(None),
        Some(VersionChoice::Version(Int64Value { value })) if *value > 0 => Ok(Some(*value as u64)),
        Some(VersionChoice::Version(Int64Value { value })) => Err(Error::VersionNotFound {
            name: spec.name.clone(),
            version: value.to_string(),
            detail: ": versions are positive integers".into(),
        }),
        Some(VersionChoice::VersionLabel(label)) => Err(Error::InvalidInput(format!(
            "model_spec.version_label '{label}': kiln has no version labels; name the version in model_spec.version"
        ))),
    }
}

fn lookup(state: &AppState, spec: &pb::ModelSpec) -> Result<Arc<LoadedVersion>, Status> {
    check_name(&spec.name).map_err(status::from)?;
    let version = version_of(spec).map_err(status::from)?;
    state
        .serving()
        .version(&spec.name, version)
        .map_err(status::from)
}

/// The model spec an answer carries: the model and version that computed it.
fn answered(lv: &LoadedVersion, signature: &str) -> Option<pb::ModelSpec> {
    Some(pb::ModelSpec {
        name: lv.name.clone(),
        version_choice: Some(pb::model_spec::VersionChoice::Version(Int64Value {
            value: lv.version as i64,
        })),
        signature_name: signature.to_owned(),
    })
}

/// The signature a call runs: `default` when the request names none; the names it answers to
/// otherwise (as REST, kiln refuses a name it does not have rather than ignore it).
fn signature<'a>(given: &str, call: &str, accepted: &[&'a str]) -> Result<&'a str, Status> {
    if given.is_empty() {
        return Ok(accepted[0]);
    }
    accepted
        .iter()
        .find(|s| **s == given)
        .copied()
        .ok_or_else(|| {
            invalid(format!(
                "model_spec.signature_name '{given}': {call} answers the signatures {accepted:?}"
            ))
        })
}

/// The call's span: REST's fields, which the serving core fills in.
fn span<T>(req: &Request<T>, method: &'static str) -> tracing::Span {
    let peer = req
        .extensions()
        .get::<SocketAddr>()
        .map(|p| tracing::field::display(*p));
    tracing::debug_span!(
        "grpc",
        peer,
        method,
        model = tracing::field::Empty,
        version = tracing::field::Empty,
        batch = tracing::field::Empty,
    )
}

// === tensors ===

fn dtype_name(dtype: i32) -> String {
    DataType::try_from(dtype).map_or_else(|_| format!("{dtype}"), |d| d.as_str_name().to_owned())
}

/// A TensorProto's shape as V2's (sizes; a tensor without one is a scalar).
fn shape_of(name: &str, t: &tf::TensorProto) -> Result<Vec<i64>, Error> {
    let Some(shape) = &t.tensor_shape else {
        return Ok(Vec::new());
    };
    if shape.unknown_rank {
        return Err(Error::InvalidInput(format!(
            "input '{name}': tensor_shape.unknown_rank: send the tensor's shape"
        )));
    }
    shape
        .dim
        .iter()
        .map(|d| {
            if d.size < 0 {
                Err(Error::InvalidInput(format!(
                    "input '{name}': dimension size {} in tensor_shape: sizes are known in a request",
                    d.size
                )))
            } else {
                Ok(d.size)
            }
        })
        .collect()
}

/// The typed fields a TensorProto may carry values in, with how many each holds.
fn filled(t: &tf::TensorProto) -> [(usize, &'static str); 11] {
    [
        (t.half_val.len(), "half_val"),
        (t.float_val.len(), "float_val"),
        (t.double_val.len(), "double_val"),
        (t.int_val.len(), "int_val"),
        (t.string_val.len(), "string_val"),
        (t.scomplex_val.len(), "scomplex_val"),
        (t.int64_val.len(), "int64_val"),
        (t.bool_val.len(), "bool_val"),
        (t.dcomplex_val.len(), "dcomplex_val"),
        (t.uint32_val.len(), "uint32_val"),
        (t.uint64_val.len(), "uint64_val"),
    ]
}

/// One input tensor as V2's decoder takes it: its values from `tensor_content` (little-endian,
/// as V2's raw bytes) or from the typed field of its dtype. Values in another field than the
/// dtype's are refused rather than ignored; one value for a larger shape fills it, as
/// TensorFlow reads a TensorProto.
fn input_of(name: String, t: tf::TensorProto) -> Result<InferInput, Error> {
    let bad = |m: String| Error::InvalidInput(format!("input '{name}': {m}"));
    let shape = shape_of(&name, &t)?;
    let (datatype, field) = match DataType::try_from(t.dtype) {
        Ok(DataType::DtFloat) => ("FP32", "float_val"),
        Ok(DataType::DtDouble) => ("FP64", "double_val"),
        Ok(DataType::DtInt32) => ("INT32", "int_val"),
        Ok(DataType::DtInt16) => ("INT16", "int_val"),
        Ok(DataType::DtInt8) => ("INT8", "int_val"),
        Ok(DataType::DtUint8) => ("UINT8", "int_val"),
        Ok(DataType::DtUint16) => ("UINT16", "int_val"),
        Ok(DataType::DtInt64) => ("INT64", "int64_val"),
        Ok(DataType::DtUint32) => ("UINT32", "uint32_val"),
        Ok(DataType::DtUint64) => ("UINT64", "uint64_val"),
        Ok(DataType::DtBool) => ("BOOL", "bool_val"),
        Ok(DataType::DtHalf) => ("FP16", "half_val"),
        Ok(DataType::DtBfloat16) => ("BF16", "half_val"),
        Ok(DataType::DtString) => ("BYTES", "string_val"),
        _ => {
            return Err(bad(format!(
                "dtype {} is not one kiln's models take: DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16, DT_INT8-64, DT_UINT8-64, DT_BOOL or DT_STRING",
                dtype_name(t.dtype)
            )))
        }
    };
    if let Some((_, other)) = filled(&t).into_iter().find(|&(n, f)| n > 0 && f != field) {
        return Err(bad(format!(
            "dtype {} takes its values in {field} (or tensor_content), not {other}",
            dtype_name(t.dtype)
        )));
    }
    let typed_len = filled(&t)
        .into_iter()
        .find(|&(_, f)| f == field)
        .map_or(0, |(n, _)| n);
    let data = if !t.tensor_content.is_empty() {
        if typed_len > 0 {
            return Err(bad(format!(
                "values in both tensor_content and {field}: send one"
            )));
        }
        if datatype == "BYTES" {
            return Err(bad(
                "DT_STRING values go in string_val, not tensor_content".into()
            ));
        }
        decode_binary(&name, datatype, &t.tensor_content)?
    } else {
        match field {
            "float_val" => Data::Numbers(t.float_val.into_iter().map(f64::from).collect()),
            "double_val" => Data::Numbers(t.double_val),
            "int_val" => Data::Numbers(t.int_val.into_iter().map(f64::from).collect()),
            "int64_val" => Data::Numbers(t.int64_val.into_iter().map(|x| x as f64).collect()),
            "uint32_val" => Data::Numbers(t.uint32_val.into_iter().map(f64::from).collect()),
            "uint64_val" => Data::Numbers(t.uint64_val.into_iter().map(|x| x as f64).collect()),
            "bool_val" => Data::Bools(t.bool_val),
            "half_val" => {
                // Each value's 16 bits in an int32: V2's raw layout, little-endian.
                let bytes: Vec<u8> = t
                    .half_val
                    .iter()
                    .flat_map(|&h| (h as u16).to_le_bytes())
                    .collect();
                decode_binary(&name, datatype, &bytes)?
            }
            _ => Data::Strings(
                t.string_val
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        String::from_utf8(b.to_vec())
                            .map_err(|_| bad(format!("string_val[{i}] is not UTF-8")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        }
    };
    let data = broadcast(data, &shape);
    Ok(InferInput::new(name, shape, datatype.to_owned(), data))
}

/// One value for a shape of more elements fills it (TensorFlow's reading of a TensorProto).
fn broadcast(data: Data, shape: &[i64]) -> Data {
    let n: i64 = shape.iter().product();
    let Ok(n) = usize::try_from(n) else {
        return data;
    };
    if n <= 1 {
        return data;
    }
    match data {
        Data::Numbers(v) if v.len() == 1 => Data::Numbers(vec![v[0]; n]),
        Data::Bools(v) if v.len() == 1 => Data::Bools(vec![v[0]; n]),
        Data::Strings(v) if v.len() == 1 => Data::Strings(vec![v[0].clone(); n]),
        other @ (Data::Absent | Data::Numbers(_) | Data::Bools(_) | Data::Strings(_)) => other,
    }
}

/// The request's inputs, in name order (a map has none; errors then name the same one).
fn inputs_of(inputs: HashMap<String, tf::TensorProto>) -> Result<Vec<InferInput>, Error> {
    let mut inputs: Vec<_> = inputs.into_iter().collect();
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    inputs.into_iter().map(|(n, t)| input_of(n, t)).collect()
}

fn shape_proto(shape: impl IntoIterator<Item = i64>) -> tf::TensorShapeProto {
    tf::TensorShapeProto {
        dim: shape
            .into_iter()
            .map(|size| tf::tensor_shape_proto::Dim {
                size,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    }
}

/// A DT_FLOAT tensor of `shape` in `float_val` (TF Serving's default serialization).
fn float_tensor(shape: Vec<i64>, values: Vec<f32>) -> tf::TensorProto {
    tf::TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: Some(shape_proto(shape)),
        float_val: values,
        ..Default::default()
    }
}

/// Refuses an `output_filter` entry that names no output of the signature.
fn check_filter(filter: &[String], outputs: &[&str]) -> Result<(), Status> {
    match filter.iter().find(|f| !outputs.contains(&f.as_str())) {
        Some(f) => Err(invalid(format!(
            "output_filter: unknown output '{f}'; the signature's outputs are {outputs:?}"
        ))),
        None => Ok(()),
    }
}

// === examples ===

/// One feature's value: kiln's features take one value each (an empty list is missing).
fn feature_value(name: &str, f: &tf::Feature) -> Result<RawValue, String> {
    use tf::feature::Kind;
    let one = |n: usize| -> Result<bool, String> {
        match n {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(format!(
                "feature '{name}' holds {n} values; kiln's features take one value each"
            )),
        }
    };
    Ok(match &f.kind {
        None => RawValue::Missing,
        Some(Kind::FloatList(l)) => match one(l.value.len())? {
            true => RawValue::Number(f64::from(l.value[0])),
            false => RawValue::Missing,
        },
        Some(Kind::Int64List(l)) => match one(l.value.len())? {
            true => RawValue::Number(l.value[0] as f64),
            false => RawValue::Missing,
        },
        Some(Kind::BytesList(l)) => match one(l.value.len())? {
            true => RawValue::Text(
                String::from_utf8(l.value[0].to_vec())
                    .map_err(|_| format!("feature '{name}': bytes_list value is not UTF-8"))?,
            ),
            false => RawValue::Missing,
        },
    })
}

/// An example's features by name, in name order.
fn named(example: &tf::Example) -> Result<Vec<(String, RawValue)>, String> {
    let mut values = match &example.features {
        Some(features) => features
            .feature
            .iter()
            .map(|(k, f)| Ok((k.clone(), feature_value(k, f)?)))
            .collect::<Result<Vec<_>, String>>()?,
        None => Vec::new(),
    };
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(values)
}

/// The examples of Classify/Regress as named instances, the context's features merged into
/// each (an example's own value wins), as REST's `examples` and `context`.
fn examples_of(input: Option<pb::Input>) -> Result<Vec<Vec<(String, RawValue)>>, Error> {
    use pb::input::Kind;
    let (examples, context) = match input.and_then(|i| i.kind) {
        Some(Kind::ExampleList(l)) => (l.examples, None),
        Some(Kind::ExampleListWithContext(l)) => (l.examples, l.context),
        None => {
            return Err(Error::InvalidInput(
                "input is missing: send input.example_list or input.example_list_with_context"
                    .into(),
            ))
        }
    };
    let context = match &context {
        Some(c) => named(c).map_err(|m| Error::InvalidInput(format!("context: {m}")))?,
        None => Vec::new(),
    };
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut values =
                named(e).map_err(|m| Error::InvalidInput(format!("examples[{i}]: {m}")))?;
            for (k, v) in &context {
                if !values.iter().any(|(n, _)| n == k) {
                    values.push((k.clone(), v.clone()));
                }
            }
            Ok(values)
        })
        .collect()
}

// === signatures ===

fn tensor_info(t: &TensorInfoView) -> tf::TensorInfo {
    tf::TensorInfo {
        encoding: Some(tf::tensor_info::Encoding::Name(t.name.to_owned())),
        dtype: DataType::from_str_name(t.dtype).map_or(DataType::DtInvalid as i32, |d| d as i32),
        tensor_shape: Some(tf::TensorShapeProto {
            dim: t
                .tensor_shape
                .dim
                .iter()
                .map(|d| tf::tensor_shape_proto::Dim {
                    size: d.size.parse().unwrap_or(-1),
                    name: d.name.to_owned(),
                })
                .collect(),
            unknown_rank: t.tensor_shape.unknown_rank,
        }),
    }
}

/// REST's `signature_def` (the same views) as the protocol's SignatureDefMap.
fn signature_def_map(view: &SignatureDefMapView) -> pb::SignatureDefMap {
    let infos = |m: &std::collections::BTreeMap<&'static str, TensorInfoView>| {
        m.iter()
            .map(|(k, t)| ((*k).to_owned(), tensor_info(t)))
            .collect()
    };
    pb::SignatureDefMap {
        signature_def: view
            .signature_def
            .iter()
            .map(|(name, s)| {
                (
                    (*name).to_owned(),
                    tf::SignatureDef {
                        inputs: infos(&s.inputs),
                        outputs: infos(&s.outputs),
                        method_name: s.method_name.to_owned(),
                    },
                )
            })
            .collect(),
    }
}

fn version_status(version: u64, s: &VersionState) -> pb::ModelVersionStatus {
    use pb::model_version_status::State;
    use tf::error::Code;
    let state = match s {
        VersionState::Loading => State::Loading,
        VersionState::Available(_) => State::Available,
        // TF Serving's manager ends a version whose load failed, with the error.
        VersionState::Failed(_) | VersionState::End => State::End,
    };
    let status = match s.error() {
        Some(m) => pb::StatusProto {
            error_code: Code::InvalidArgument as i32,
            error_message: m.to_owned(),
        },
        None => pb::StatusProto {
            error_code: Code::Ok as i32,
            error_message: String::new(),
        },
    };
    pb::ModelVersionStatus {
        version: version as i64,
        state: state as i32,
        status: Some(status),
    }
}

// === the calls ===

impl TfServing {
    /// Layer models: decoded examples → the serving core; the prediction and when it began.
    async fn run_examples<'v>(
        &self,
        lv: &'v LoadedVersion,
        verb: Verb,
        input: Option<pb::Input>,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Prediction<'v>, Status> {
        crate::api::predict::check_task(lv, verb).map_err(status::from)?;
        let serving = self.state.serving();
        let model = &lv.layers().map_err(status::from)?.model;
        let examples = examples_of(input).map_err(status::from)?;
        let spec = InputSpec::of(model).with_max_rows(serving.max_rows());
        let decoded = rows_from_named(&spec, "examples", &examples).map_err(status::of)?;
        let rows = Rows {
            data: decoded.rows,
            n_rows: decoded.n_rows,
        };
        serving
            .predict(lv, rows, timeout, span)
            .await
            .map_err(status::from)
    }

    /// The request's duration, as REST's and ModelInfer's.
    fn observe(lv: &LoadedVersion, start: Instant) {
        lv.observe_request(Protocol::Grpc, start);
    }

    async fn predict_on(
        &self,
        req: pb::PredictRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let start = Instant::now();
        let spec = spec_of(req.model_spec)?;
        let lv = lookup(&self.state, &spec)?;
        let signature = signature(&spec.signature_name, "Predict", &["serving_default"])?;
        let serving = self.state.serving();
        if let Ok(text) = lv.text() {
            check_filter(&req.output_filter, &["embedding"])?;
            let inputs = inputs_of(req.inputs).map_err(status::from)?;
            let texts = to_texts(inputs).map_err(status::from)?;
            let request = crate::serving::text::TextRequest {
                texts,
                truncate: false,
                normalize: None,
            };
            let embeddings = serving
                .embed(&lv, request, timeout, span)
                .await
                .map_err(status::from)?;
            let size = text.model.hidden_size();
            let n = embeddings.vectors.len();
            let output = float_tensor(vec![n as i64, size as i64], embeddings.vectors.concat());
            let res = answer(
                pb::PredictResponse {
                    model_spec: answered(&lv, signature),
                    outputs: HashMap::from([("embedding".to_owned(), output)]),
                },
                &embeddings.timing,
            );
            lv.observe_request(Protocol::Grpc, start);
            return Ok(res);
        }
        let model = &lv.layers().map_err(status::from)?.model;
        check_filter(&req.output_filter, &["output"])?;
        let inputs = inputs_of(req.inputs).map_err(status::from)?;
        let spec = InputSpec::of(model).with_max_rows(serving.max_rows());
        let decoded = to_rows(&spec, inputs).map_err(status::of)?;
        let rows = Rows {
            data: decoded.rows,
            n_rows: decoded.n_rows,
        };
        let p = serving
            .predict(&lv, rows, timeout, span)
            .await
            .map_err(status::from)?;
        let shape = std::iter::once(p.n_rows())
            .chain(p.output_shape().iter().copied())
            .map(|d| d as i64)
            .collect();
        let output = float_tensor(shape, p.values().to_vec());
        let res = answer(
            pb::PredictResponse {
                model_spec: answered(&lv, signature),
                outputs: HashMap::from([("output".to_owned(), output)]),
            },
            &p.timing,
        );
        Self::observe(&lv, start);
        Ok(res)
    }

    async fn classify_on(
        &self,
        req: pb::ClassificationRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Response<pb::ClassificationResponse>, Status> {
        let start = Instant::now();
        let spec = spec_of(req.model_spec)?;
        let lv = lookup(&self.state, &spec)?;
        let signature = signature(
            &spec.signature_name,
            "Classify",
            &["classify", "serving_default"],
        )?;
        let p = self
            .run_examples(&lv, Verb::Classify, req.input, timeout, span)
            .await?;
        // Every class with its score, best first, as REST's `:classify`.
        let labels = p.labels();
        let classifications = (0..p.n_rows())
            .map(|row| {
                let mut classes: Vec<pb::Class> = labels
                    .iter()
                    .zip(p.scores(row))
                    .map(|(label, score)| pb::Class {
                        label: label.clone(),
                        score,
                    })
                    .collect();
                classes.sort_by(|a, b| b.score.total_cmp(&a.score));
                pb::Classifications { classes }
            })
            .collect();
        let res = answer(
            pb::ClassificationResponse {
                model_spec: answered(&lv, signature),
                result: Some(pb::ClassificationResult { classifications }),
            },
            &p.timing,
        );
        Self::observe(&lv, start);
        Ok(res)
    }

    async fn regress_on(
        &self,
        req: pb::RegressionRequest,
        timeout: Option<Duration>,
        span: &tracing::Span,
    ) -> Result<Response<pb::RegressionResponse>, Status> {
        let start = Instant::now();
        let spec = spec_of(req.model_spec)?;
        let lv = lookup(&self.state, &spec)?;
        let signature = signature(
            &spec.signature_name,
            "Regress",
            &["regress", "serving_default"],
        )?;
        let p = self
            .run_examples(&lv, Verb::Regress, req.input, timeout, span)
            .await?;
        let regressions = p
            .values()
            .iter()
            .map(|&value| pb::Regression { value })
            .collect();
        let res = answer(
            pb::RegressionResponse {
                model_spec: answered(&lv, signature),
                result: Some(pb::RegressionResult { regressions }),
            },
            &p.timing,
        );
        Self::observe(&lv, start);
        Ok(res)
    }
}

fn answer<T>(message: T, timing: &Timing) -> Response<T> {
    let mut res = Response::new(message);
    timing_metadata(&mut res, timing);
    res
}

#[tonic::async_trait]
impl pb::prediction_service_server::PredictionService for TfServing {
    async fn classify(
        &self,
        req: Request<pb::ClassificationRequest>,
    ) -> Result<Response<pb::ClassificationResponse>, Status> {
        let timeout = deadline(&req)?;
        let span = span(&req, "Classify");
        self.classify_on(req.into_inner(), timeout, &span)
            .instrument(span.clone())
            .await
    }

    async fn regress(
        &self,
        req: Request<pb::RegressionRequest>,
    ) -> Result<Response<pb::RegressionResponse>, Status> {
        let timeout = deadline(&req)?;
        let span = span(&req, "Regress");
        self.regress_on(req.into_inner(), timeout, &span)
            .instrument(span.clone())
            .await
    }

    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let timeout = deadline(&req)?;
        let span = span(&req, "Predict");
        self.predict_on(req.into_inner(), timeout, &span)
            .instrument(span.clone())
            .await
    }

    async fn get_model_metadata(
        &self,
        req: Request<pb::GetModelMetadataRequest>,
    ) -> Result<Response<pb::GetModelMetadataResponse>, Status> {
        let req = req.into_inner();
        let spec = spec_of(req.model_spec)?;
        if req.metadata_field.is_empty() {
            return Err(invalid(
                "metadata_field is empty: ask for \"signature_def\"".into(),
            ));
        }
        if let Some(f) = req.metadata_field.iter().find(|f| *f != "signature_def") {
            return Err(invalid(format!(
                "metadata_field '{f}': the metadata there is is \"signature_def\""
            )));
        }
        let lv = lookup(&self.state, &spec)?;
        let view = crate::api::models::signature_defs(&lv).map_err(status::from)?;
        let map = signature_def_map(&view);
        let any = Any {
            type_url: SIGNATURE_DEF_MAP_URL.to_owned(),
            value: prost::Message::encode_to_vec(&map).into(),
        };
        Ok(Response::new(pb::GetModelMetadataResponse {
            model_spec: answered(&lv, ""),
            metadata: HashMap::from([("signature_def".to_owned(), any)]),
        }))
    }
}

#[tonic::async_trait]
impl pb::model_service_server::ModelService for TfServing {
    async fn get_model_status(
        &self,
        req: Request<pb::GetModelStatusRequest>,
    ) -> Result<Response<pb::GetModelStatusResponse>, Status> {
        let spec = spec_of(req.into_inner().model_spec)?;
        check_name(&spec.name).map_err(status::from)?;
        let version = version_of(&spec).map_err(status::from)?;
        let view = self.state.registry.view(&spec.name).map_err(status::from)?;
        let model_version_status: Vec<_> = view
            .versions
            .iter()
            .filter(|(v, _)| version.is_none_or(|want| *v == want))
            .map(|(v, s)| version_status(*v, s))
            .collect();
        if let (Some(v), true) = (version, model_version_status.is_empty()) {
            return Err(status::from(Error::VersionNotFound {
                name: spec.name.clone(),
                version: v.to_string(),
                detail: String::new(),
            }));
        }
        Ok(Response::new(pb::GetModelStatusResponse {
            model_version_status,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: DataType, dims: &[i64]) -> tf::TensorProto {
        tf::TensorProto {
            dtype: dtype as i32,
            tensor_shape: Some(shape_proto(dims.iter().copied())),
            ..Default::default()
        }
    }

    #[test]
    fn tensors_from_typed_fields_and_tensor_content() {
        let mut t = tensor(DataType::DtFloat, &[1, 2]);
        t.float_val = vec![1.5, 2.0];
        let i = input_of("x".into(), t).unwrap();
        assert_eq!(
            (i.shape.as_slice(), i.datatype.as_str()),
            (&[1, 2][..], "FP32")
        );
        assert!(matches!(i.data, Data::Numbers(v) if v == [1.5, 2.0]));
        let mut t = tensor(DataType::DtFloat, &[1, 2]);
        t.tensor_content = [1.5f32, 2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        let i = input_of("x".into(), t).unwrap();
        assert!(matches!(i.data, Data::Numbers(v) if v == [1.5, 2.0]));
        // One value fills the shape.
        let mut t = tensor(DataType::DtInt64, &[2, 2]);
        t.int64_val = vec![3];
        let i = input_of("x".into(), t).unwrap();
        assert!(matches!(i.data, Data::Numbers(v) if v == [3.0; 4]));
        // Half floats: each value's bits in an int32.
        let mut t = tensor(DataType::DtHalf, &[1]);
        t.half_val = vec![0x3C00];
        let i = input_of("x".into(), t).unwrap();
        assert!(matches!(i.data, Data::Numbers(v) if v == [1.0]));
    }

    #[test]
    fn misplaced_values_and_unknown_dtypes_are_refused() {
        let mut t = tensor(DataType::DtDouble, &[1]);
        t.float_val = vec![1.0];
        let err = input_of("x".into(), t).err().unwrap().to_string();
        assert!(
            err.contains("input 'x'") && err.contains("double_val"),
            "{err}"
        );
        let err = input_of("x".into(), tensor(DataType::DtComplex64, &[1]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("DT_COMPLEX64"), "{err}");
        let mut t = tensor(DataType::DtFloat, &[1]);
        t.tensor_shape = Some(tf::TensorShapeProto {
            dim: vec![],
            unknown_rank: true,
        });
        assert!(input_of("x".into(), t).is_err());
    }

    #[test]
    fn examples_take_one_value_per_feature_and_merge_the_context() {
        use tf::feature::Kind;
        let feature = |kind| tf::Feature { kind: Some(kind) };
        let example = |pairs: Vec<(&str, tf::Feature)>| tf::Example {
            features: Some(tf::Features {
                feature: pairs.into_iter().map(|(k, f)| (k.to_owned(), f)).collect(),
            }),
        };
        let floats = |v: Vec<f32>| feature(Kind::FloatList(tf::FloatList { value: v }));
        let text = |s: &'static str| {
            feature(Kind::BytesList(tf::BytesList {
                value: vec![bytes::Bytes::from_static(s.as_bytes())],
            }))
        };
        let input = pb::Input {
            kind: Some(pb::input::Kind::ExampleListWithContext(
                pb::ExampleListWithContext {
                    examples: vec![
                        example(vec![("a", floats(vec![1.0]))]),
                        example(vec![("a", floats(vec![2.0])), ("c", text("y"))]),
                    ],
                    context: Some(example(vec![("c", text("x"))])),
                },
            )),
        };
        let rows = examples_of(Some(input)).unwrap();
        assert_eq!(
            rows[0],
            [
                ("a".to_owned(), RawValue::Number(1.0)),
                ("c".to_owned(), RawValue::Text("x".into()))
            ]
        );
        assert_eq!(rows[1][1], ("c".to_owned(), RawValue::Text("y".into())));
        let input = pb::Input {
            kind: Some(pb::input::Kind::ExampleList(pb::ExampleList {
                examples: vec![example(vec![("a", floats(vec![1.0, 2.0]))])],
            })),
        };
        let err = examples_of(Some(input)).unwrap_err().to_string();
        assert!(
            err.contains("examples[0]") && err.contains("2 values"),
            "{err}"
        );
        assert!(examples_of(None).is_err());
    }
}
