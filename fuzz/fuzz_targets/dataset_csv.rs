//! Dataset uploads sent as CSV (`Content-Type: text/csv`): the delimiter detected from the
//! header, RFC 4180 fields, type inference, the profile.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    kiln_fuzz::check_dataset(bytes, kiln::dataset::Format::Csv);
});
