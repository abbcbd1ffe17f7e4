//! `POST /v2/models/{name}/infer` bodies (JSON, or JSON + binary tensors), decoded against each
//! fixture model's signature with `kiln::api::v2::decode_infer`.
//!
//! Input layout: a first line `#<value>\n` is the `inference-header-content-length` header's
//! value (any bytes, as a client may send) and the rest is the body; without it, the whole
//! input is a body with no such header.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use kiln::api::v2::{decode_infer, HEADER_LENGTH};
use kiln::model::Model;
use kiln_fuzz::{check, models, MAX_ROWS};
use libfuzzer_sys::fuzz_target;

static MODELS: OnceLock<Vec<Model>> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    let mut headers = HeaderMap::new();
    let body = match input.strip_prefix(b"#") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                return;
            };
            // A value no HTTP parser would hand over never reaches the handler.
            let Ok(value) = HeaderValue::from_bytes(&rest[..end]) else {
                return;
            };
            headers.insert(HEADER_LENGTH, value);
            &rest[end + 1..]
        }
        None => input,
    };
    for model in MODELS.get_or_init(models) {
        check(decode_infer(model, &headers, body, MAX_ROWS), model);
    }
});
