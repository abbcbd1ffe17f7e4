//! Dataset uploads sent as JSON records (`Content-Type: application/json`): an array of
//! objects streamed one record at a time, type inference, the profile.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    kiln_fuzz::check_dataset(bytes, kiln::dataset::Format::Json);
});
