//! A panic in a handler or an extractor answers 500 in kiln's error shape, over a real
//! socket, and the server goes on serving. The panicking routes exist only here: the test adds
//! them through `kiln::serve_with_routes`, which the `kiln` binary never does.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::get;
use serde_json::Value;

use crate::util::*;

async fn panicking_handler() -> &'static str {
    panic!("test-only handler bug")
}

/// An extractor with a bug.
struct PanickingExtractor;

impl<S: Send + Sync> FromRequestParts<S> for PanickingExtractor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        panic!("test-only extractor bug")
    }
}

async fn behind_a_panicking_extractor(_: PanickingExtractor) -> &'static str {
    "not reached"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_answers_500_in_the_error_shape() {
    let models = tempfile::tempdir().unwrap();
    let extra = axum::Router::new()
        .route("/test/panic/handler", get(panicking_handler))
        .route("/test/panic/extractor", get(behind_a_panicking_extractor));
    let s = Server::start_with_routes(models.path(), "", extra).await;
    // One keep-alive client: the connection that saw a panic serves the next request too.
    let client = reqwest::Client::new();
    for path in ["/test/panic/handler", "/test/panic/extractor"] {
        let r = client
            .get(s.url(path))
            .header("x-request-id", "panic-1")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: no answer ({e}), the connection was dropped"));
        assert_eq!(r.status(), 500, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        // The edge middleware still ran: the answer carries the request id and its timing.
        assert_eq!(r.headers()["x-request-id"], "panic-1");
        assert!(r.headers().contains_key("x-total-time"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "internal", "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            !message.contains("test-only"),
            "the detail stays in the log: {message}"
        );
        let r = client.get(s.url("/health/live")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let metrics = client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("/test/panic/handler") && l.contains("status=\"500\"")),
        "the 500 is counted"
    );
    s.stop().await;
}
