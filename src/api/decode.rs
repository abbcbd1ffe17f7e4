//! Request decoding: TF Serving's `instances` / `inputs` / `examples` bodies parsed once,
//! straight into the flat `f32` rows the batcher takes — no intermediate JSON tree for
//! numeric tensors. Named features go through the model's fitted preprocessing here.
//!
//! Every error says where: `instances[2][1]: expected a number, got the string "x"`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::ApiError;
use crate::error::Error;
use crate::model::format::InputDType;
use crate::model::{Model, Signature};
use crate::preprocess::RawValue;

/// What a request must look like for one model: its signature, and the most instances
/// one request may carry.
pub struct InputSpec<'a> {
    sig: Signature<'a>,
    /// Most instances a request may carry (the serving core's `max_rows`). Rows past it are
    /// counted but not kept, so a body of many tiny instances (`{}` filled to 64 values
    /// each) cannot make the decoder allocate far more than the body's size before it is
    /// refused. Every decoding path checks it, the fast one included: it is the only check.
    max_rows: usize,
}

impl<'a> InputSpec<'a> {
    /// The model's signature, with no row limit (see [`Self::with_max_rows`]).
    pub fn of(model: &'a Model) -> Self {
        InputSpec {
            sig: model.signature(),
            max_rows: usize::MAX,
        }
    }

    /// Refuses requests of more than `limit` instances ([`Error::TooManyRows`]) without
    /// holding more than `limit` rows.
    pub fn with_max_rows(mut self, limit: usize) -> Self {
        self.max_rows = limit;
        self
    }

    /// [`Error::TooManyRows`] when `n` instances are more than the limit.
    fn check_rows(&self, n: usize) -> Result<(), Error> {
        crate::serving::check_rows(n, self.max_rows)
    }

    pub fn signature(&self) -> &Signature<'a> {
        &self.sig
    }
}

/// How the request was laid out; the answer uses the same layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `instances` → `predictions`.
    Row,
    /// `inputs` → `outputs`.
    Columnar,
}

/// Decoded model input.
#[derive(Debug)]
pub struct Decoded {
    pub rows: Vec<f32>,
    pub n_rows: usize,
    pub layout: Layout,
    /// Per-instance warnings (unknown categories), with the instance named.
    pub warnings: Vec<String>,
}

/// Which top-level body is expected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    Predict,
    Examples,
}

struct Ctx<'a> {
    spec: &'a InputSpec<'a>,
    rows: Vec<f32>,
    n_rows: usize,
    layout: Option<Layout>,
    warnings: Vec<String>,
    /// Index path of the value being read, for error messages.
    path: Vec<usize>,
    /// `instances`, `inputs` or `examples`.
    root: &'static str,
}

/// The lookup of raw values sent in the signature's order: the feature at position `i` of
/// the preprocessing is, in every model kiln trains, `values[i]` (one comparison); other
/// orders fall back to a search by name.
fn in_signature_order<'v>(
    features: &'v [String],
    values: &'v [RawValue],
) -> impl Fn(usize, &str) -> Option<&'v RawValue> {
    move |i, name| match features.get(i) {
        Some(f) if f == name => values.get(i),
        _ => features.iter().position(|f| f == name).map(|j| &values[j]),
    }
}

impl Ctx<'_> {
    fn here(&self) -> String {
        let mut s = String::from(self.root);
        for i in &self.path {
            s.push_str(&format!("[{i}]"));
        }
        s
    }

    fn err<E: de::Error>(&self, msg: impl fmt::Display) -> E {
        E::custom(format!("{}: {msg}", self.here()))
    }

    fn shape_str(&self) -> String {
        format!("{:?}", self.spec.sig.shape)
    }

    /// Ends an instance whose values are in `rows`. Past the row limit the request will be
    /// refused: the instance is counted (for the message) and dropped.
    fn end_row(&mut self) {
        self.n_rows += 1;
        if self.n_rows > self.spec.max_rows {
            self.rows
                .truncate(self.spec.max_rows * self.spec.sig.row_len);
        }
    }

    /// Encodes one named instance: `values` are (name, value) pairs as sent.
    fn push_named<E: de::Error>(&mut self, values: &[(String, RawValue)]) -> Result<(), E> {
        let Some(features) = self.spec.sig.features else {
            return Err(self.err(format!(
                "this model has no feature names; send each instance as an array of shape {}",
                self.shape_str()
            )));
        };
        // Values sent in the features' order (what clients generated from the signature
        // send) are known and unique: one comparison each, no search.
        let in_order =
            values.len() == features.len() && values.iter().zip(features).all(|((n, _), f)| n == f);
        for (i, (name, _)) in values.iter().enumerate().filter(|_| !in_order) {
            if !features.contains(name) {
                return Err(self.err(format!(
                    "unknown feature '{name}'; the model's features are {features:?}"
                )));
            }
            if values[..i].iter().any(|(n, _)| n == name) {
                return Err(self.err(format!("feature '{name}' is given twice")));
            }
        }
        let lookup = |i: usize, name: &str| match values.get(i) {
            Some((n, v)) if n == name => Some(v),
            _ => values.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        };
        self.push_lookup(lookup)
    }

    fn push_lookup<'v, E: de::Error>(
        &mut self,
        lookup: impl Fn(usize, &str) -> Option<&'v RawValue>,
    ) -> Result<(), E> {
        let features = self.spec.sig.features.expect("checked by callers");
        match self.spec.sig.preprocessing {
            Some(prep) => {
                let mut warnings = Vec::new();
                prep.apply(lookup, &mut self.rows, &mut warnings)
                    .map_err(|m| self.err(m))?;
                if self.n_rows < self.spec.max_rows {
                    for w in warnings {
                        let at = self.here();
                        self.warnings.push(format!("{at}: {w}"));
                    }
                }
            }
            None => {
                for (i, f) in features.iter().enumerate() {
                    let x = match lookup(i, f) {
                        Some(RawValue::Number(x)) => *x,
                        Some(RawValue::Bool(b)) => f64::from(u8::from(*b)),
                        Some(RawValue::Text(s)) => s.trim().parse::<f64>().map_err(|_| {
                            self.err(format!(
                                "feature '{f}': expected a number, got the string {s:?}"
                            ))
                        })?,
                        Some(RawValue::Missing) | None => {
                            return Err(self.err(format!(
                                "feature '{f}' is missing (this model has no fill values)"
                            )))
                        }
                    };
                    let x = self
                        .check_number(x)
                        .map_err(|m| self.err(format!("feature '{f}': {m}")))?;
                    self.rows.push(x);
                }
            }
        }
        self.end_row();
        Ok(())
    }

    /// Validates one tensor element for the input dtype.
    fn check_number(&self, x: f64) -> Result<f32, String> {
        let v = x as f32;
        if !v.is_finite() {
            return Err(format!("value {x} is not a finite 32-bit float"));
        }
        if self.spec.sig.dtype == InputDType::Int64 {
            if x.fract() != 0.0 || x < 0.0 {
                return Err(format!("expected a non-negative integer id, got {x}"));
            }
            if let Some(n) = self.spec.sig.vocab {
                if x >= n as f64 {
                    return Err(format!(
                        "id {x} is out of range: the embedding has {n} entries"
                    ));
                }
            }
            if x > 16_777_216.0 {
                return Err(format!("id {x} is too large"));
            }
        }
        Ok(v)
    }
}

/// Parses a `:predict` body: `{"instances": [...]}` or `{"inputs": ...}`.
pub fn decode_predict(body: &[u8], spec: &InputSpec) -> Result<Decoded, ApiError> {
    // Plain tensors of plain numbers: one pass, no serde (see `fast_rows`); anything else,
    // errors included, through the full decoder.
    if spec.sig.preprocessing.is_none() && spec.sig.dtype == InputDType::Float32 {
        if let Some((rows, n_rows)) =
            super::fast_rows::instances(body, spec.sig.shape, spec.max_rows)
        {
            return Ok(Decoded {
                rows,
                n_rows,
                layout: Layout::Row,
                warnings: Vec::new(),
            });
        }
    }
    decode(body, spec, Body::Predict)
}

/// Parses a `:classify` / `:regress` body: `{"examples": [{...}], "context": {...}}`.
pub fn decode_examples(body: &[u8], spec: &InputSpec) -> Result<Decoded, ApiError> {
    if spec.sig.features.is_none() {
        return Err(Error::InvalidInput(
            "this model has no feature names, so it takes no examples: use :predict with instances"
                .into(),
        )
        .into());
    }
    decode(body, spec, Body::Examples)
}

fn decode(body: &[u8], spec: &InputSpec, kind: Body) -> Result<Decoded, ApiError> {
    let mut ctx = Ctx {
        spec,
        rows: Vec::new(),
        n_rows: 0,
        layout: None,
        warnings: Vec::new(),
        path: Vec::with_capacity(4),
        root: "instances",
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = Top {
        ctx: &mut ctx,
        kind,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    result.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::InvalidInput(e.to_string()).into(),
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => ApiError::MalformedJson(e.to_string()),
    })?;
    spec.check_rows(ctx.n_rows)?;
    let layout = ctx.layout.expect("set by Top on success");
    debug_assert_eq!(ctx.rows.len(), ctx.n_rows * spec.sig.row_len);
    Ok(Decoded {
        rows: ctx.rows,
        n_rows: ctx.n_rows,
        layout,
        warnings: ctx.warnings,
    })
}

// === the top-level object ===

struct Top<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    kind: Body,
}

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.kind {
            Body::Predict => f.write_str(r#"an object with "instances" or "inputs""#),
            Body::Examples => f.write_str(r#"an object with "examples""#),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut context: Option<Vec<(String, RawValue)>> = None;
        let mut examples: Option<Vec<NamedRaw>> = None;
        while let Some(key) = map.next_key::<String>()? {
            match (self.kind, key.as_str()) {
                (Body::Predict, "instances" | "inputs") => {
                    if self.ctx.layout.is_some() {
                        return Err(de::Error::custom(
                            r#"give either "instances" or "inputs", not both"#,
                        ));
                    }
                    if key == "instances" {
                        self.ctx.root = "instances";
                        self.ctx.layout = Some(Layout::Row);
                        map.next_value_seed(Instances { ctx: self.ctx })?;
                    } else {
                        self.ctx.root = "inputs";
                        self.ctx.layout = Some(Layout::Columnar);
                        map.next_value_seed(Inputs { ctx: self.ctx })?;
                    }
                }
                (Body::Examples, "examples") => {
                    // Examples may come before the context: keep them raw until the end.
                    self.ctx.root = "examples";
                    self.ctx.layout = Some(Layout::Row);
                    examples = Some(map.next_value()?);
                }
                (Body::Examples, "context") => {
                    context = Some(map.next_value::<NamedRaw>()?.0);
                }
                (_, "signature_name") => {
                    let s: String = map.next_value()?;
                    if !s.is_empty() && s != "serving_default" {
                        return Err(de::Error::custom(format!(
                            "unknown signature_name {s:?}: this model has one signature, \"serving_default\""
                        )));
                    }
                }
                (Body::Examples, "model_spec") => {
                    map.next_value::<IgnoredAny>()?;
                }
                (Body::Predict, other) => {
                    return Err(de::Error::custom(format!(
                        r#"unknown field "{other}": expected "instances" or "inputs" (and optionally "signature_name")"#
                    )))
                }
                (Body::Examples, other) => {
                    return Err(de::Error::custom(format!(
                        r#"unknown field "{other}": expected "examples" (and optionally "context", "signature_name")"#
                    )))
                }
            }
        }
        if self.kind == Body::Examples {
            let Some(examples) = examples else {
                return Err(de::Error::custom(r#"missing field "examples""#));
            };
            encode_examples(self.ctx, examples, context.as_deref())?;
        }
        match self.ctx.layout {
            None => Err(de::Error::custom(
                r#"missing field: expected "instances" or "inputs""#,
            )),
            Some(_) if self.ctx.n_rows == 0 => {
                Err(de::Error::custom(format!("{} is empty", self.ctx.root)))
            }
            Some(_) => Ok(()),
        }
    }
}

/// Encodes examples once the whole body (and so the context) has been read.
fn encode_examples<E: de::Error>(
    ctx: &mut Ctx,
    examples: Vec<NamedRaw>,
    context: Option<&[(String, RawValue)]>,
) -> Result<(), E> {
    let context = context_values(ctx, context.unwrap_or_default())?;
    for (i, ex) in examples.into_iter().enumerate() {
        ctx.path.push(i);
        let mut values = ex.0;
        for (k, v) in &context {
            if !values.iter().any(|(n, _)| n == k) {
                values.push((k.clone(), v.clone()));
            }
        }
        ctx.push_named(&values)?;
        ctx.path.pop();
    }
    Ok(())
}

/// The context's values, each a feature of the model (an unknown name would be refused in
/// every example) and each name once (the first of repeated names counts, as it did when
/// merged). Checked once, so merging costs features x example size per example, not the
/// square of a context of a million names.
fn context_values<'c, E: de::Error>(
    ctx: &Ctx,
    context: &'c [(String, RawValue)],
) -> Result<Vec<&'c (String, RawValue)>, E> {
    let features = ctx
        .spec
        .sig
        .features
        .expect("decode_examples checks feature names");
    let mut kept: Vec<&(String, RawValue)> = Vec::new();
    for entry in context {
        if !features.contains(&entry.0) {
            return Err(E::custom(format!(
                "context: unknown feature '{}'; the model's features are {features:?}",
                entry.0
            )));
        }
        if !kept.iter().any(|(n, _)| *n == entry.0) {
            kept.push(entry);
        }
    }
    Ok(kept)
}

// === instances: a list of instances ===

struct Instances<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for Instances<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Instances<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of instances")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.ctx.path.push(i);
            let more = seq.next_element_seed(Instance { ctx: self.ctx })?.is_some();
            self.ctx.path.pop();
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// One instance: a tensor (nested arrays), a list of raw feature values, an object of
/// named features, or a bare number when the instance shape is `[1]`.
struct Instance<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for Instance<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Instance<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an instance: an array, or an object of named features")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        if let (Some(features), Some(_)) = (ctx.spec.sig.features, ctx.spec.sig.preprocessing) {
            // Raw feature values in the signature's order.
            let mut values = Vec::with_capacity(features.len());
            loop {
                ctx.path.push(values.len());
                let next = seq
                    .next_element::<RawValue>()
                    .map_err(|e| ctx.err(format!("expected a feature value: {e}")));
                ctx.path.pop();
                let Some(v) = next? else { break };
                if values.len() == features.len() {
                    return Err(ctx.err(format!(
                        "expected {} feature values {features:?}, got more",
                        features.len()
                    )));
                }
                values.push(v);
            }
            if values.len() != features.len() {
                return Err(ctx.err(format!(
                    "expected {} feature values {features:?}, got {}",
                    features.len(),
                    values.len()
                )));
            }
            // Values in the signature's order: the feature at `i` is usually `values[i]`.
            return ctx.push_lookup(in_signature_order(features, &values));
        }
        read_dim(ctx, &mut seq, 0)?;
        ctx.end_row();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut values = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, RawValue>()? {
            values.push((k, v));
        }
        self.ctx.push_named(&values)
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        if self.ctx.spec.sig.row_len != 1 || self.ctx.spec.sig.preprocessing.is_some() {
            return Err(self.ctx.err(format!(
                "expected an array of shape {}, got a number",
                self.ctx.shape_str()
            )));
        }
        let v = self.ctx.check_number(x).map_err(|m| self.ctx.err(m))?;
        self.ctx.rows.push(v);
        self.ctx.end_row();
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.visit_f64(x as f64)
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.visit_f64(x as f64)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        Err(self.ctx.err(format!(
            "expected an array or an object, got the string {s:?}"
        )))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        Err(self
            .ctx
            .err(format!("expected an array or an object, got {b}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.ctx.err("expected an array or an object, got null"))
    }
}

/// Reads dimension `depth` of a tensor instance from `seq`, checking its length.
fn read_dim<'de, A: SeqAccess<'de>>(
    ctx: &mut Ctx,
    seq: &mut A,
    depth: usize,
) -> Result<(), A::Error> {
    let want = ctx.spec.sig.shape[depth];
    let last = depth + 1 == ctx.spec.sig.shape.len();
    let mut n = 0;
    loop {
        if n == want {
            // One element too many is enough to say so (and bounds the work).
            ctx.path.push(n);
            let extra = seq.next_element::<IgnoredAny>()?.is_some();
            ctx.path.pop();
            if extra {
                return Err(ctx.err(format!(
                    "expected {want} values at dimension {depth} of shape {}, got more",
                    ctx.shape_str()
                )));
            }
            return Ok(());
        }
        ctx.path.push(n);
        let got = if last {
            seq.next_element_seed(Element { ctx: &mut *ctx })?
        } else {
            seq.next_element_seed(Dim {
                ctx: &mut *ctx,
                depth: depth + 1,
            })?
        };
        ctx.path.pop();
        if got.is_none() {
            return Err(ctx.err(format!(
                "expected {want} values at dimension {depth} of shape {}, got {n}",
                ctx.shape_str()
            )));
        }
        n += 1;
    }
}

struct Dim<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Dim<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dim<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array for dimension {}", self.depth)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        read_dim(self.ctx, &mut seq, self.depth)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.ctx.err(format!(
            "expected an array at dimension {} of shape {}, got a number",
            self.depth,
            self.ctx.shape_str()
        )))
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.visit_f64(x as f64)
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.visit_f64(x as f64)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        Err(self
            .ctx
            .err(format!("expected an array, got the string {s:?}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.ctx.err("expected an array, got null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.ctx.err("expected an array, got an object"))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        Err(self.ctx.err(format!("expected an array, got {b}")))
    }
}

/// One number of a tensor.
struct Element<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        let v = self.ctx.check_number(x).map_err(|m| self.ctx.err(m))?;
        self.ctx.rows.push(v);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, x: i64) -> Result<(), E> {
        self.visit_f64(x as f64)
    }
    fn visit_u64<E: de::Error>(self, x: u64) -> Result<(), E> {
        self.visit_f64(x as f64)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        Err(self
            .ctx
            .err(format!("expected a number, got the string {s:?}")))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        Err(self.ctx.err(format!("expected a number, got {b}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.ctx.err("expected a number, got null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.ctx.err(format!(
            "expected a number, got an array (the instance shape is {})",
            self.ctx.shape_str()
        )))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.ctx.err("expected a number, got an object"))
    }
}

// === inputs: a batched tensor, or columns of named features ===

struct Inputs<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
}

impl<'de> DeserializeSeed<'de> for Inputs<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Inputs<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batched tensor, or an object of feature columns")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Instances { ctx: self.ctx }.visit_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut columns: Vec<(String, Vec<RawValue>)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Vec<RawValue>>()? {
            columns.push((k, v));
        }
        let Some((_, first)) = columns.first() else {
            return Err(de::Error::custom("inputs is an empty object"));
        };
        let n = first.len();
        if let Some((name, col)) = columns.iter().find(|(_, c)| c.len() != n) {
            return Err(de::Error::custom(format!(
                "inputs: column '{name}' has {} values but '{}' has {n}",
                col.len(),
                columns[0].0
            )));
        }
        for i in 0..n {
            self.ctx.path.push(i);
            let row: Vec<(String, RawValue)> = columns
                .iter()
                .map(|(k, c)| (k.clone(), c[i].clone()))
                .collect();
            self.ctx.push_named(&row)?;
            self.ctx.path.pop();
        }
        Ok(())
    }
}

// === raw scalar values ===

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, string, boolean or null")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<RawValue, E> {
                Ok(RawValue::Number(x))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<RawValue, E> {
                Ok(RawValue::Number(x as f64))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<RawValue, E> {
                Ok(RawValue::Number(x as f64))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawValue, E> {
                Ok(RawValue::Text(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<RawValue, E> {
                Ok(RawValue::Text(s))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<RawValue, E> {
                Ok(RawValue::Bool(b))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
                Ok(RawValue::Missing)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
                Ok(RawValue::Missing)
            }
        }
        d.deserialize_any(V)
    }
}

/// An object of named raw values, in the order sent.
struct NamedRaw(Vec<(String, RawValue)>);

impl<'de> Deserialize<'de> for NamedRaw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NamedRaw;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of named feature values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedRaw, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = map.next_entry::<String, RawValue>()? {
                    v.push(e);
                }
                Ok(NamedRaw(v))
            }
        }
        d.deserialize_map(V)
    }
}

// === tensors and columns that arrive already parsed (the V2 protocol) ===

/// A plain message error, so `Ctx`'s helpers can serve decoders that are not serde's.
#[derive(Debug)]
struct Plain(String);

impl fmt::Display for Plain {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Plain {}

impl de::Error for Plain {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Plain(msg.to_string())
    }
}

fn ctx<'a>(spec: &'a InputSpec<'a>, root: &'static str, capacity: usize) -> Ctx<'a> {
    Ctx {
        spec,
        rows: Vec::with_capacity(capacity),
        n_rows: 0,
        layout: Some(Layout::Columnar),
        warnings: Vec::new(),
        path: Vec::with_capacity(2),
        root,
    }
}

fn done(c: Ctx) -> Decoded {
    Decoded {
        rows: c.rows,
        n_rows: c.n_rows,
        layout: Layout::Columnar,
        warnings: c.warnings,
    }
}

/// Rows from a numeric tensor of `n` instances (flat, row-major), named `root` in errors.
/// Models with preprocessing take raw feature values in signature order.
pub fn rows_from_tensor(
    spec: &InputSpec,
    root: &'static str,
    data: &[f64],
    n: usize,
) -> Result<Decoded, ApiError> {
    spec.check_rows(n)?;
    let width = spec.sig.raw_width();
    let mut c = ctx(spec, root, n * spec.sig.row_len);
    let bad = |e: Plain| Error::InvalidInput(e.0);
    match (spec.sig.features, spec.sig.preprocessing) {
        (Some(features), Some(_)) => {
            for (i, row) in data.chunks(width).enumerate() {
                c.path.push(i);
                let values: Vec<RawValue> = row.iter().map(|&x| RawValue::Number(x)).collect();
                c.push_lookup::<Plain>(in_signature_order(features, &values))
                    .map_err(bad)?;
                c.path.pop();
            }
        }
        _ => {
            for (i, &x) in data.iter().enumerate() {
                let v = c
                    .check_number(x)
                    .map_err(|m| Error::InvalidInput(format!("{root}[{i}]: {m}")))?;
                c.rows.push(v);
            }
            c.n_rows = n;
        }
    }
    Ok(done(c))
}

/// Rows from one column of raw values per feature (`n` values each).
pub fn rows_from_columns(
    spec: &InputSpec,
    columns: &[(String, Vec<RawValue>)],
    n: usize,
) -> Result<Decoded, ApiError> {
    spec.check_rows(n)?;
    let mut c = ctx(spec, "inputs", n * spec.sig.row_len);
    for i in 0..n {
        c.path.push(i);
        let row: Vec<(String, RawValue)> = columns
            .iter()
            .map(|(k, v)| (k.clone(), v[i].clone()))
            .collect();
        c.push_named::<Plain>(&row)
            .map_err(|e| Error::InvalidInput(e.0))?;
        c.path.pop();
    }
    Ok(done(c))
}

/// Rows from named instances (TF Serving's gRPC `Classify` / `Regress` examples, each a list
/// of feature values by name), `root[i]` in errors; as REST's `examples` are decoded.
pub fn rows_from_named(
    spec: &InputSpec,
    root: &'static str,
    instances: &[Vec<(String, RawValue)>],
) -> Result<Decoded, ApiError> {
    if spec.sig.features.is_none() {
        return Err(Error::InvalidInput(
            "this model has no feature names, so it takes no examples: use Predict with an input tensor"
                .into(),
        )
        .into());
    }
    if instances.is_empty() {
        return Err(Error::InvalidInput(format!("{root} is empty")).into());
    }
    spec.check_rows(instances.len())?;
    let mut c = ctx(spec, root, instances.len() * spec.sig.row_len);
    for (i, row) in instances.iter().enumerate() {
        c.path.push(i);
        c.push_named::<Plain>(row)
            .map_err(|e| Error::InvalidInput(e.0))?;
        c.path.pop();
    }
    Ok(done(c))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn model(json: serde_json::Value) -> Model {
        Model::of_spec(json)
    }

    fn models() -> Vec<Model> {
        vec![
            model(
                serde_json::json!({"format_version": 1, "task": "classification", "input": {"shape": [2, 2]},
                "layers": [{"type": "flatten"}, {"type": "dense", "units": 2}]}),
            ),
            model(
                serde_json::json!({"format_version": 1, "task": "classification", "input": {"shape": [3], "features": ["a", "b", "c"]},
                "layers": [{"type": "dense", "units": 2}],
                "preprocessing": {"features": [
                    {"kind": "numeric", "name": "a", "fill": 0.0},
                    {"kind": "numeric", "name": "b"},
                    {"kind": "categorical", "name": "c", "encoding": "ordinal", "categories": ["x", "y"]}]}}),
            ),
            model(
                serde_json::json!({"format_version": 1, "task": "classification", "input": {"shape": [3], "dtype": "int64"},
                "layers": [{"type": "embedding", "input_dim": 5, "output_dim": 2}, {"type": "flatten"}, {"type": "dense", "units": 2}]}),
            ),
        ]
    }

    /// Arbitrary JSON values, nested a few levels.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|x| serde_json::Number::from_f64(x)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-c]{0,3}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(
                    "instances|inputs|examples|context|signature_name|[a-c]",
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The types that describe request bodies in the OpenAPI document read what the decoder
    /// accepts, and refuse what it refuses for an unknown field.
    #[test]
    fn documented_request_types_read_what_the_decoder_accepts() {
        use crate::api::types::{ExamplesRequest, PredictRequest};
        let models = models();
        let named = InputSpec::of(&models[1]);
        for body in [
            r#"{"instances": [[1, 2, "x"], [3, 4, "y"]]}"#,
            r#"{"instances": [{"a": 1, "b": 2, "c": "x"}], "signature_name": "serving_default"}"#,
            r#"{"inputs": {"a": [1], "b": [2], "c": ["x"]}}"#,
            r#"{"inputs": [[1, 2, "x"]]}"#,
        ] {
            decode_predict(body.as_bytes(), &named).unwrap();
            serde_json::from_str::<PredictRequest>(body).unwrap();
        }
        for body in [
            r#"{"examples": [{"a": 1, "b": 2}], "context": {"c": "x"}}"#,
            r#"{"model_spec": {"name": "m"}, "examples": [{"a": 1, "b": 2, "c": "y"}]}"#,
        ] {
            decode_examples(body.as_bytes(), &named).unwrap();
            serde_json::from_str::<ExamplesRequest>(body).unwrap();
        }
        let unknown = r#"{"instances": [[1, 2, "x"]], "extra": 1}"#;
        assert!(decode_predict(unknown.as_bytes(), &named).is_err());
        assert!(serde_json::from_str::<PredictRequest>(unknown).is_err());
        let unknown = r#"{"examples": [{"a": 1}], "instances": []}"#;
        assert!(decode_examples(unknown.as_bytes(), &named).is_err());
        assert!(serde_json::from_str::<ExamplesRequest>(unknown).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Any bytes: an error or rows of the right width, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            for m in &models() {
                let spec = InputSpec::of(m);
                for d in [decode_predict(&bytes, &spec), decode_examples(&bytes, &spec)].into_iter().flatten() {
                    prop_assert_eq!(d.rows.len(), d.n_rows * m.spec().row_len());
                }
            }
        }

        /// Numeric instances in any JSON spelling: the fast path and the full decoder read
        /// the same bits.
        #[test]
        fn the_fast_path_reads_what_the_full_decoder_reads(
            rows in prop::collection::vec(prop::collection::vec(
                prop_oneof![any::<f32>().prop_map(f64::from), any::<f64>(), -1e6f64..1e6, (-1000i64..1000).prop_map(|i| i as f64)],
                4), 1..5),
            exponent in any::<bool>(),
        ) {
            let m = &models()[0];
            let spec = InputSpec::of(m);
            let mut body = String::from(r#"{"instances": ["#);
            for (i, row) in rows.iter().enumerate() {
                if i > 0 { body.push(','); }
                let row: Vec<String> = row.iter().map(|x| if exponent { format!("{x:e}") } else { serde_json::to_string(x).unwrap() }).collect();
                body.push_str(&format!("[[{}, {}], [{}, {}]]", row[0], row[1], row[2], row[3]));
            }
            body.push_str("]}");
            let full = decode(body.as_bytes(), &spec, Body::Predict);
            let fast = super::super::fast_rows::instances(body.as_bytes(), &[2, 2], usize::MAX);
            match (full, fast) {
                (Ok(full), Some((rows, n))) => {
                    prop_assert_eq!(full.n_rows, n);
                    let a: Vec<u32> = full.rows.iter().map(|x| x.to_bits()).collect();
                    let b: Vec<u32> = rows.iter().map(|x| x.to_bits()).collect();
                    prop_assert_eq!(a, b);
                }
                (Err(_), None) => {}
                (full, fast) => prop_assert!(false, "{body}: full {full:?}, fast {fast:?}"),
            }
        }

        /// Any JSON shape: the same, and every error is a 400 kind.
        #[test]
        fn arbitrary_json_never_panics(v in json()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            for m in &models() {
                let spec = InputSpec::of(m);
                for r in [decode_predict(&bytes, &spec), decode_examples(&bytes, &spec)] {
                    match r {
                        Ok(d) => {
                            prop_assert_eq!(d.rows.len(), d.n_rows * m.spec().row_len());
                            prop_assert!(d.rows.iter().all(|x| x.is_finite()));
                        }
                        Err(ApiError::Serving(Error::InvalidInput(_)) | ApiError::MalformedJson(_)) => {}
                        Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
                    }
                }
            }
        }
    }

    /// Named features with fill values: `{}` is a whole instance.
    fn filled() -> Model {
        model(
            serde_json::json!({"format_version": 1, "task": "classification",
            "input": {"shape": [2], "features": ["a", "b"]},
            "layers": [{"type": "dense", "units": 2}],
            "preprocessing": {"features": [
                {"kind": "numeric", "name": "a", "fill": 1.0},
                {"kind": "numeric", "name": "b", "fill": 2.0}]}}),
        )
    }

    #[test]
    fn more_instances_than_the_limit_are_counted_and_refused() {
        let m = filled();
        let spec = InputSpec::of(&m).with_max_rows(10);
        let empties = vec!["{}"; 1000].join(",");
        let ones = vec!["1"; 1000].join(",");
        let bodies = [
            (format!(r#"{{"instances": [{empties}]}}"#), false),
            (format!(r#"{{"inputs": {{"a": [{ones}]}}}}"#), false),
            (format!(r#"{{"examples": [{empties}]}}"#), true),
        ];
        for (body, examples) in &bodies {
            let r = if *examples {
                decode_examples(body.as_bytes(), &spec)
            } else {
                decode_predict(body.as_bytes(), &spec)
            };
            assert!(
                matches!(
                    r,
                    Err(ApiError::Serving(Error::TooManyRows {
                        rows: 1000,
                        limit: 10
                    }))
                ),
                "{body:.40}: {r:?}"
            );
        }
        // Plain numeric instances (the fast path's body) meet the same check.
        let plain = &models()[0];
        let spec_plain = InputSpec::of(plain).with_max_rows(10);
        let tensors = |n: usize| {
            let rows = vec!["[[1, 2], [3, 4]]"; n].join(",");
            format!(r#"{{"instances": [{rows}]}}"#)
        };
        let r = decode_predict(tensors(1000).as_bytes(), &spec_plain);
        assert!(
            matches!(
                r,
                Err(ApiError::Serving(Error::TooManyRows {
                    rows: 1000,
                    limit: 10
                }))
            ),
            "{r:?}"
        );
        let d = decode_predict(tensors(10).as_bytes(), &spec_plain).unwrap();
        assert_eq!((d.n_rows, d.rows.len()), (10, 40));
        let ten = format!(r#"{{"instances": [{}]}}"#, ["{}"; 10].join(","));
        let d = decode_predict(ten.as_bytes(), &spec).unwrap();
        assert_eq!((d.n_rows, d.rows.len()), (10, 20));
        // V2 tensors and columns: refused from the shape, before any row is built.
        assert!(rows_from_tensor(&spec, "input", &[0.0; 6], 3).is_ok());
        let small = InputSpec::of(&m).with_max_rows(2);
        let r = rows_from_tensor(&small, "input", &[0.0; 6], 3);
        assert!(
            matches!(
                r,
                Err(ApiError::Serving(Error::TooManyRows { rows: 3, limit: 2 }))
            ),
            "{r:?}"
        );
        let col = vec![RawValue::Number(1.0); 3];
        let r = rows_from_columns(&small, &[("a".into(), col)], 3);
        assert!(
            matches!(
                r,
                Err(ApiError::Serving(Error::TooManyRows { rows: 3, limit: 2 }))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn the_context_is_checked_once_and_its_first_value_of_a_name_counts() {
        let m = model(
            serde_json::json!({"format_version": 1, "task": "classification", "input": {"shape": [2], "features": ["u", "v"]},
            "layers": [{"type": "dense", "units": 2}]}),
        );
        let spec = InputSpec::of(&m);
        let body = br#"{"examples": [{"v": 1}, {"v": 3, "u": 4}], "context": {"u": 2, "u": 5}}"#;
        let d = decode_examples(body, &spec).unwrap();
        assert_eq!(d.rows, [2.0, 1.0, 4.0, 3.0]);
        // Many names: refused at the first unknown one (merging each into each example
        // cost the square of their number).
        let names: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}": 1"#)).collect();
        let body = format!(
            r#"{{"examples": [{{}}], "context": {{{}}}}}"#,
            names.join(",")
        );
        let err = decode_examples(body.as_bytes(), &spec)
            .unwrap_err()
            .to_string();
        assert!(err.contains("context: unknown feature 'k0'"), "{err}");
    }

    #[test]
    fn named_values_in_any_order_read_the_same_and_are_checked() {
        let m = model(
            serde_json::json!({"format_version": 1, "task": "classification", "input": {"shape": [3], "features": ["u", "v", "w"]},
            "layers": [{"type": "dense", "units": 2}]}),
        );
        let spec = InputSpec::of(&m);
        let bodies = [
            r#"{"instances": [{"u": 1, "v": 2, "w": 3}]}"#,
            r#"{"instances": [{"w": 3, "u": 1, "v": 2}]}"#,
            r#"{"instances": [{"v": 2, "w": 3, "u": 1}]}"#,
        ];
        for body in bodies {
            let d = decode_predict(body.as_bytes(), &spec).unwrap();
            assert_eq!(d.rows, [1.0, 2.0, 3.0], "{body}");
        }
        // As many values as features, but not the features: still refused by name.
        let twice = br#"{"instances": [{"u": 1, "u": 2, "w": 3}]}"#;
        let err = decode_predict(twice, &spec).unwrap_err().to_string();
        assert!(err.contains("feature 'u' is given twice"), "{err}");
        let unknown = br#"{"instances": [{"u": 1, "v": 2, "x": 3}]}"#;
        let err = decode_predict(unknown, &spec).unwrap_err().to_string();
        assert!(err.contains("unknown feature 'x'"), "{err}");
        // With fitted preprocessing, raw arrays and named objects in any order agree.
        let m = filled();
        let spec = InputSpec::of(&m);
        let names = spec.sig.features.unwrap().to_vec();
        let raw: Vec<String> = (1..=names.len()).map(|i| i.to_string()).collect();
        let positional = format!(r#"{{"instances": [[{}]]}}"#, raw.join(","));
        let reversed: Vec<String> = names
            .iter()
            .zip(&raw)
            .rev()
            .map(|(n, v)| format!(r#""{n}": {v}"#))
            .collect();
        let named = format!(r#"{{"instances": [{{{}}}]}}"#, reversed.join(","));
        let a = decode_predict(positional.as_bytes(), &spec).unwrap();
        let b = decode_predict(named.as_bytes(), &spec).unwrap();
        assert_eq!(a.rows, b.rows);
    }
}
