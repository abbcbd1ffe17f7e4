//! What every protocol's encoder writes the same way: JSON answers, the timing headers of an
//! inference answer, and tensor shapes with their batch dimension.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;

use crate::serving::Timing;

pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A `200` answer of `body` with its content type, with room reserved for every header an
/// inference answer gets (these, the edge's, hyper's): no regrowth.
pub(crate) fn with_content_type(body: Vec<u8>, content_type: HeaderValue) -> Response {
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.reserve(10);
    h.insert(header::CONTENT_TYPE, content_type);
    res
}

/// A `200` JSON answer of already serialized bytes.
pub(crate) fn json(body: Vec<u8>) -> Response {
    with_content_type(body, APPLICATION_JSON)
}

/// Adds `x-queue-time`, `x-inference-time` (ms) and `x-batch-size` to an inference answer.
pub(crate) fn timing_headers(res: &mut Response, t: &Timing) {
    let h = res.headers_mut();
    h.insert(super::X_QUEUE_TIME, ms_header(t.queue));
    h.insert(super::X_INFERENCE_TIME, ms_header(t.compute));
    h.insert(super::X_BATCH_SIZE, HeaderValue::from(t.batch_rows));
}

/// Milliseconds with microsecond precision, as a header value (formatted on the stack).
pub fn ms_header(d: Duration) -> HeaderValue {
    use std::io::Write;
    let us = d.as_micros();
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    write!(w, "{}.{:03}", us / 1000, us % 1000).expect("48 bytes hold any duration");
    let len = 48 - w.len();
    HeaderValue::from_bytes(&buf[..len]).expect("a number is a valid header")
}

/// A per-instance shape with the batch dimension first, as `-1` (metadata answers).
pub(crate) fn batched(shape: &[usize]) -> Vec<i64> {
    std::iter::once(-1)
        .chain(shape.iter().map(|&d| d as i64))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn ms_headers() {
        assert_eq!(
            super::ms_header(Duration::from_micros(1_234_567)),
            "1234.567"
        );
        assert_eq!(super::ms_header(Duration::from_nanos(999)), "0.000");
        assert_eq!(super::ms_header(Duration::from_micros(42)), "0.042");
    }

    #[test]
    fn batched_shapes() {
        assert_eq!(super::batched(&[]), [-1]);
        assert_eq!(super::batched(&[3, 2]), [-1, 3, 2]);
    }
}
