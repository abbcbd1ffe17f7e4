//! `POST /v1/models/{name}:predict` and `:classify` / `:regress` bodies, decoded against each
//! fixture model's signature (`kiln::api::decode`, as the handler calls it), under a row limit.
#![no_main]

use std::sync::OnceLock;

use kiln::api::decode::{decode_examples, decode_predict, InputSpec};
use kiln::model::Model;
use kiln_fuzz::{check, models, MAX_ROWS};
use libfuzzer_sys::fuzz_target;

static MODELS: OnceLock<Vec<Model>> = OnceLock::new();

fuzz_target!(|body: &[u8]| {
    for model in MODELS.get_or_init(models) {
        let spec = InputSpec::of(model).with_max_rows(MAX_ROWS);
        check(decode_predict(body, &spec), model);
        check(decode_examples(body, &spec), model);
    }
});
