//! Decoding an inference request: the JSON part (with the binary tensor data extension's
//! tensors after it) parsed once, its inputs checked against the model's signature and turned
//! into model rows. Every error is a 4xx kind and names the input.

use std::fmt;

use axum::http::{HeaderMap, HeaderValue};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::decode::{rows_from_columns, rows_from_tensor, Decoded, InputSpec};
use crate::api::error::ApiError;
use crate::error::Error;
use crate::model::Model;
use crate::preprocess::RawValue;

use super::HEADER_LENGTH;

/// Tensor data as sent: a flat or nested list, flattened while parsing (REST), or a typed
/// field or raw bytes (gRPC, `grpc::infer`).
#[derive(Debug, Default)]
pub(crate) enum Data {
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
pub(super) struct InferRequest {
    /// Echoed in the answer.
    #[serde(default)]
    pub(super) id: Option<String>,
    /// `binary_data_output: true` sends every output as binary data.
    #[serde(default)]
    pub(super) parameters: Option<Map<String, Value>>,
    /// One tensor `[N, …]` named `input`, or one `[N]` input per feature (models with
    /// feature names; BYTES for categorical features).
    pub(super) inputs: Vec<InferInput>,
    /// The outputs to answer, in this order (default: all).
    #[serde(default)]
    pub(super) outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InferInput {
    pub(crate) name: String,
    pub(crate) shape: Vec<i64>,
    /// BOOL, UINT8-64, INT8-64, FP16, BF16, FP32, FP64 or BYTES.
    pub(crate) datatype: String,
    /// `binary_data_size`: this tensor's bytes in the binary data after the JSON.
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Flat row-major or nested lists of numbers, booleans or strings; absent when the
    /// tensor is sent as binary data.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    pub(crate) data: Data,
}

impl InferInput {
    /// An input decoded by another protocol's decoder (gRPC), checked by [`to_rows`] as
    /// REST's are.
    pub(crate) fn new(name: String, shape: Vec<i64>, datatype: String, data: Data) -> Self {
        InferInput {
            name,
            shape,
            datatype,
            parameters: None,
            data,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RequestedOutput {
    pub(super) name: String,
    /// `binary_data: true|false` overrides `binary_data_output` for this output.
    #[serde(default)]
    pub(super) parameters: Option<Map<String, Value>>,
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

/// Decodes little-endian binary tensor data of a datatype (the REST binary extension's
/// layout, which is also gRPC's `raw_input_contents`).
pub(crate) fn decode_binary(name: &str, datatype: &str, bytes: &[u8]) -> Result<Data, Error> {
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
        "FP16" => halves(bytes, datatype, |b| half::f16::from_bits(b).to_f64()).map_err(bad)?,
        "BF16" => halves(bytes, datatype, |b| half::bf16::from_bits(b).to_f64()).map_err(bad)?,
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

/// 16-bit floats (FP16, BF16), little-endian, widened by `widen`.
fn halves(bytes: &[u8], datatype: &str, widen: fn(u16) -> f64) -> Result<Data, String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(format!("odd number of {datatype} bytes"));
    }
    Ok(Data::Numbers(
        bytes
            .chunks_exact(2)
            .map(|c| widen(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
    ))
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
        "FP16" | "BF16" | "FP32" | "FP64" | "BOOL" | "BYTES" => None,
        other => return bad(format!("unknown datatype '{other}': expected BOOL, UINT8-64, INT8-64, FP16, BF16, FP32, FP64 or BYTES")),
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
/// `json_len` is the `inference-header-content-length` header, if the request has one.
pub(super) fn parse_request(
    json_len: Option<&HeaderValue>,
    body: &[u8],
) -> Result<InferRequest, ApiError> {
    let json_len = match json_len {
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
    let req = parse_request(headers.get(HEADER_LENGTH), body)?;
    to_rows(&InputSpec::of(model).with_max_rows(max_rows), req.inputs)
}

/// A text model's input: one BYTES tensor of shape `[N]` (or `[N, 1]`), a text per element,
/// by any name (`text` in the metadata), as JSON strings or binary data.
pub(crate) fn to_texts(inputs: Vec<InferInput>) -> Result<Vec<String>, Error> {
    let [input] = <[InferInput; 1]>::try_from(inputs).map_err(|inputs| {
        Error::InvalidInput(format!(
            "a text model takes one BYTES input of texts, got {} inputs",
            inputs.len()
        ))
    })?;
    let n = elements(&input.name, &input.shape)?;
    let ok_shape = input.shape.len() == 1 || (input.shape.len() == 2 && input.shape[1] == 1);
    if input.datatype != "BYTES" || !ok_shape {
        return Err(Error::InvalidInput(format!(
            "input '{}': a text model takes BYTES of shape [N] or [N, 1], got {} {:?}",
            input.name, input.datatype, input.shape
        )));
    }
    match input.data {
        Data::Strings(texts) if texts.len() == n => Ok(texts),
        Data::Absent if n == 0 => Ok(Vec::new()),
        other @ (Data::Strings(_) | Data::Absent) => Err(Error::InvalidInput(format!(
            "input '{}': shape {:?} holds {n} texts but {} were sent",
            input.name,
            input.shape,
            other.len()
        ))),
        Data::Numbers(_) | Data::Bools(_) => Err(Error::InvalidInput(format!(
            "input '{}': BYTES data must be strings (texts)",
            input.name
        ))),
    }
}

/// The model rows of a request: one raw tensor, or one input per feature; more instances
/// than the spec's limit are refused before their rows are built.
pub(crate) fn to_rows(spec: &InputSpec, inputs: Vec<InferInput>) -> Result<Decoded, ApiError> {
    let sig = spec.signature();
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
    let features = sig.features;
    let per_feature = features.is_some_and(|f| inputs.iter().all(|i| f.contains(&i.name)));
    if per_feature && !(inputs.len() == 1 && sig.raw_width() == 1 && inputs[0].name == "input") {
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
            if sig.requires(missing) {
                return Err(
                    Error::InvalidInput(format!("feature input '{missing}' is missing")).into(),
                );
            }
        }
        if n == 0 {
            return Err(Error::InvalidInput("inputs hold no instances".into()).into());
        }
        return rows_from_columns(spec, &columns, n);
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
    let raw_shape = sig.raw_shape();
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
    rows_from_tensor(spec, "input", &data, n)
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
        // 1.0, -2.0 and the smallest subnormal in FP16; 1.0 and -2.5 in BF16.
        let h = [0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00];
        assert!(
            matches!(decode_binary("x", "FP16", &h).unwrap(), Data::Numbers(v) if v == vec![1.0, -2.0, 2f64.powi(-24)])
        );
        let b = [0x80, 0x3f, 0x20, 0xc0];
        assert!(
            matches!(decode_binary("x", "BF16", &b).unwrap(), Data::Numbers(v) if v == vec![1.0, -2.5])
        );
        assert!(decode_binary("x", "BF16", &[0x80]).is_err());
        assert!(check_datatype("x", "BF16", &Data::Numbers(vec![1.5])).is_ok());
        assert!(check_datatype("x", "UINT8", &Data::Numbers(vec![256.0])).is_err());
        assert!(check_datatype("x", "INT32", &Data::Numbers(vec![1.5])).is_err());
        assert!(check_datatype("x", "FP128", &Data::Numbers(vec![1.0])).is_err());
        assert!(elements("x", &[1_000_000_000_000, 1_000_000_000_000]).is_err());
        assert!(elements("x", &[-1, 4]).is_err());
    }
}
