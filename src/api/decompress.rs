//! `Content-Encoding: gzip` on request bodies, for the routes that take large ones (dataset
//! uploads, inference): the body is decompressed as it is read, so every size limit applies
//! to what it decompresses to (a gzip bomb is a 413 once it passes the limit, never a
//! buffer of its full size). A request without the header passes through untouched: the
//! predict path pays one header look-up.
//!
//! Any other encoding is 415 `unsupported_content_encoding`; a body that is not valid gzip
//! is 400 `invalid_content_encoding` (see [`bad_encoding`]). Runs on the runtime, in the
//! reading handler's task.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_http::decompression::{DecompressionBody, RequestDecompression};

use super::error::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The encodings accepted, as the `Accept-Encoding` a refusal names.
pub(crate) const ACCEPTED: &str = "gzip, identity";

/// A compressed body that could not be decompressed.
#[derive(Debug, thiserror::Error)]
#[error("the request body is not valid gzip: {0}")]
pub struct BadEncoding(#[source] BoxError);

/// The decompression failure behind a body read error, if that is what it was (the error
/// may come wrapped by axum or a length limit: the whole source chain is searched).
pub fn bad_encoding<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BadEncoding> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(bad) = e.downcast_ref::<BadEncoding>() {
            return Some(bad);
        }
        next = e.source();
    }
    None
}

/// The route layer that decompresses request bodies.
#[derive(Clone, Copy)]
pub(crate) struct Decompress;

impl<S> tower::Layer<S> for Decompress {
    type Service = Decompressing<S>;

    fn layer(&self, inner: S) -> Decompressing<S> {
        Decompressing { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Decompressing<S> {
    inner: S,
}

impl<S> tower::Service<Request> for Decompressing<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let gzip = match req.headers().get(header::CONTENT_ENCODING) {
            None => false,
            Some(v) if v.as_bytes() == b"identity" => false,
            Some(v) if v.as_bytes() == b"gzip" => true,
            Some(v) => {
                let refused = ApiError::UnsupportedContentEncoding(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
                let mut res = refused.into_response();
                res.headers_mut().insert(
                    header::ACCEPT_ENCODING,
                    header::HeaderValue::from_static(ACCEPTED),
                );
                return Either::Right(Box::pin(std::future::ready(Ok(res))));
            }
        };
        if !gzip {
            return Either::Left(self.inner.call(req));
        }
        // The service that was polled ready takes the request; a clone stays for the next.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let decompressing = RequestDecompression::new(tower::service_fn(
            move |req: axum::http::Request<DecompressionBody<Body>>| {
                let body = |b: DecompressionBody<Body>| Body::new(b.map_err(BadEncoding));
                inner.clone().oneshot(req.map(body))
            },
        ))
        .gzip(true);
        Either::Right(Box::pin(async move {
            let res = decompressing.oneshot(req).await?;
            Ok(res.map(Body::new))
        }))
    }
}
