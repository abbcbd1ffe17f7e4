//! Encoding a [`Prediction`] as the protocol's answer: the outputs a model answers (a
//! classifier's `probabilities` and `label`, anything else's `output`), the ones the request
//! asked for, each inline in the JSON or as binary data after it.

use std::borrow::Cow;

use axum::http::HeaderValue;
use axum::response::Response;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::decode::RequestedOutput;
use super::HEADER_LENGTH;
use crate::api::respond;
use crate::error::Error;
use crate::model::format::Task;
use crate::model::Model;
use crate::serving::Prediction;

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
    #[schema(value_type = Vec<String>)]
    Strings(&'a [&'a str]),
}

#[derive(Serialize, ToSchema)]
pub struct BinaryDataView {
    /// Bytes of this tensor in the binary data, in output order.
    pub binary_data_size: usize,
}

/// An output tensor a model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModelOutput {
    /// A classifier's per-class scores, FP32 `[N, classes]`.
    Probabilities,
    /// A classifier's best class, BYTES `[N]`.
    Label,
    /// Any other model's output in the target's units, FP32 `[N, …output shape]`.
    Values,
}

const CLASSIFIER: &[ModelOutput] = &[ModelOutput::Probabilities, ModelOutput::Label];
const OTHER: &[ModelOutput] = &[ModelOutput::Values];

impl ModelOutput {
    /// Every output a model of `task` answers, in the default order.
    pub(crate) fn all(task: Task) -> &'static [ModelOutput] {
        match task {
            Task::Classification => CLASSIFIER,
            Task::Regression => OTHER,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ModelOutput::Probabilities => "probabilities",
            ModelOutput::Label => "label",
            ModelOutput::Values => "output",
        }
    }

    pub(crate) fn datatype(self) -> &'static str {
        match self {
            ModelOutput::Probabilities | ModelOutput::Values => "FP32",
            ModelOutput::Label => "BYTES",
        }
    }

    /// The per-instance shape (after the batch dimension).
    pub(crate) fn shape(self, model: &Model) -> Vec<usize> {
        match self {
            ModelOutput::Probabilities => vec![model.labels().len()],
            ModelOutput::Label => Vec::new(),
            ModelOutput::Values => model.output_shape().to_vec(),
        }
    }
}

/// The outputs to answer, in order, each with whether it goes as binary data: the ones the
/// request names (each once), or all of them.
pub(super) fn select(
    task: Task,
    requested: Option<&[RequestedOutput]>,
    parameters: Option<&Map<String, Value>>,
) -> Result<Vec<(ModelOutput, bool)>, Error> {
    let binary_all = parameters
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let requested = requested.map(|r| {
        r.iter().map(|r| {
            let binary = r
                .parameters
                .as_ref()
                .and_then(|p| p.get("binary_data"))
                .and_then(Value::as_bool);
            (r.name.as_str(), binary)
        })
    });
    select_named(task, requested, binary_all)
}

/// [`select`] for any protocol: the names requested (each with its own binary choice, if
/// any), or all outputs when `None`.
pub(crate) fn select_named<'r>(
    task: Task,
    requested: Option<impl ExactSizeIterator<Item = (&'r str, Option<bool>)>>,
    binary_all: bool,
) -> Result<Vec<(ModelOutput, bool)>, Error> {
    let all = ModelOutput::all(task);
    let Some(requested) = requested else {
        return Ok(all.iter().map(|&o| (o, binary_all)).collect());
    };
    let mut selected: Vec<(ModelOutput, bool)> = Vec::with_capacity(requested.len());
    for (name, binary) in requested {
        let Some(&o) = all.iter().find(|o| o.name() == name) else {
            let names: Vec<&str> = all.iter().map(|o| o.name()).collect();
            return Err(Error::InvalidInput(format!(
                "unknown output '{name}': this model answers {names:?}"
            )));
        };
        if selected.iter().any(|(s, _)| *s == o) {
            return Err(Error::InvalidInput(format!(
                "output '{name}' is requested twice"
            )));
        }
        selected.push((o, binary.unwrap_or(binary_all)));
    }
    Ok(selected)
}

/// One output tensor's values: borrowed from the prediction where they are its values as
/// they are (a regression output), computed only for the outputs asked for.
pub(crate) enum Values<'p> {
    Numbers(Cow<'p, [f32]>),
    Strings(Vec<&'p str>),
}

pub(crate) struct OutTensor<'p> {
    pub(crate) output: ModelOutput,
    pub(crate) shape: Vec<usize>,
    pub(crate) values: Values<'p>,
}

/// Output `output` of a prediction, with its shape (batch first).
pub(crate) fn tensor<'p>(p: &'p Prediction, output: ModelOutput) -> OutTensor<'p> {
    let n = p.n_rows();
    let values = match output {
        ModelOutput::Probabilities => {
            let mut probs = Vec::with_capacity(n * p.labels().len());
            for row in 0..n {
                probs.extend(p.scores(row));
            }
            Values::Numbers(Cow::Owned(probs))
        }
        ModelOutput::Label => Values::Strings((0..n).map(|row| p.best_label(row)).collect()),
        ModelOutput::Values => Values::Numbers(Cow::Borrowed(p.values())),
    };
    let mut shape = output.shape(p.model());
    shape.insert(0, n);
    OutTensor {
        output,
        shape,
        values,
    }
}

/// Appends a tensor's values to the binary data, as the extension lays them out (numbers
/// little-endian; each string as a 4-byte little-endian length and its bytes).
pub(crate) fn write_binary(values: &Values, blob: &mut Vec<u8>) {
    match values {
        Values::Numbers(v) => {
            blob.reserve(v.len() * 4);
            for x in v.iter() {
                blob.extend_from_slice(&x.to_le_bytes());
            }
        }
        Values::Strings(v) => {
            for s in v {
                blob.extend_from_slice(&(s.len() as u32).to_le_bytes());
                blob.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// What the answer says besides its outputs.
pub(super) struct Envelope<'a> {
    pub model_name: &'a str,
    pub model_version: u64,
    pub id: Option<String>,
    pub warnings: &'a [String],
}

/// The answer: JSON, or JSON followed by the tensors sent as binary data (the extension's
/// `application/octet-stream` body, its JSON length in `Inference-Header-Content-Length`),
/// with the timing headers.
pub(super) fn answer(p: &Prediction, env: Envelope, selected: &[(ModelOutput, bool)]) -> Response {
    let tensors: Vec<OutTensor> = selected.iter().map(|&(o, _)| tensor(p, o)).collect();
    let mut blob = Vec::new();
    let views = tensors
        .iter()
        .zip(selected)
        .map(|(t, &(_, binary))| {
            let (data, parameters) = if binary {
                let before = blob.len();
                write_binary(&t.values, &mut blob);
                let binary_data_size = blob.len() - before;
                (None, Some(BinaryDataView { binary_data_size }))
            } else {
                let data = match &t.values {
                    Values::Numbers(v) => TensorDataView::Numbers(v),
                    Values::Strings(v) => TensorDataView::Strings(v),
                };
                (Some(data), None)
            };
            OutputTensorView {
                name: t.output.name(),
                datatype: t.output.datatype(),
                shape: &t.shape,
                data,
                parameters,
            }
        })
        .collect();
    let warnings = env.warnings;
    let head = InferResponse {
        model_name: env.model_name,
        model_version: env.model_version.to_string(),
        id: env.id,
        parameters: (!warnings.is_empty()).then_some(InferParametersView { warnings }),
        outputs: views,
    };
    let mut body = serde_json::to_vec(&head).expect("answers serialize");
    let mut res = if !blob.is_empty() {
        let json_len = body.len();
        body.extend_from_slice(&blob);
        let mut res =
            respond::with_content_type(body, HeaderValue::from_static("application/octet-stream"));
        res.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(json_len));
        res
    } else {
        respond::json(body)
    };
    respond::timing_headers(&mut res, &p.timing);
    res
}
