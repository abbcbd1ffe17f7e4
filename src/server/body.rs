//! The request body with an idle timeout: a body that stalls (no bytes for the configured
//! time) ends with [`BodyTimeout`], which the handlers answer 408. Polled by whichever task
//! reads the body (a handler, on the runtime).
//!
//! The clock counts silence, not the whole upload: a 100 MiB dataset arriving slowly but
//! steadily is fine, a client that stops sending is not. tower-http's
//! `RequestBodyTimeoutLayer` bounds the total time instead, which would either cut off
//! large uploads on slow links or, set long enough for them, let a stalled small body hold
//! its connection for as long.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: no bytes for {} ms", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

/// The timeout behind a body read error, if that is what it was (the error may come
/// wrapped by axum, multer or a length limit: the whole source chain is searched).
pub fn timed_out(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(t.0);
        }
        next = e.source();
    }
    None
}

/// `inner` with an idle timeout.
pub(crate) struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    /// Made on the first wait: most bodies arrive with their headers and never wait, so
    /// they never touch the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was set: the next wait starts a new silence.
    progressed: bool,
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            sleep: None,
            progressed: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                if this.progressed {
                    sleep.as_mut().reset(Instant::now() + this.timeout);
                }
                sleep
            }
            None => this
                .sleep
                .insert(Box::pin(tokio::time::sleep(this.timeout))),
        };
        this.progressed = false;
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one chunk at each of the given times (from the start), then ends.
    struct Scripted {
        at: Vec<Duration>,
        start: Instant,
        sleep: Pin<Box<Sleep>>,
    }

    impl Scripted {
        fn new(at: &[u64]) -> Self {
            let start = Instant::now();
            Scripted {
                at: at
                    .iter()
                    .rev()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect(),
                start,
                sleep: Box::pin(tokio::time::sleep_until(start)),
            }
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let Some(&next) = self.at.last() else {
                return Poll::Ready(None);
            };
            let due = self.start + next;
            self.sleep.as_mut().reset(due);
            match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.at.pop();
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    async fn read_all(body: IdleTimeout<Scripted>) -> Result<usize, BoxError> {
        let mut body = std::pin::pin!(body);
        let mut n = 0;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            n += frame?.into_data().map_or(0, |d| d.len());
        }
        Ok(n)
    }

    // Real time (kiln's tokio has no `test-util` to pause it), with a wide margin: gaps of
    // 50 ms against a timeout of 500 ms.
    #[tokio::test]
    async fn a_slow_but_steady_body_outlives_the_timeout_and_a_stalled_one_does_not() {
        let t = Duration::from_millis(500);
        // Twelve chunks 50 ms apart: 600 ms in all, longer than the timeout.
        let steady = Scripted::new(&(1..=12).map(|i| i * 50).collect::<Vec<_>>());
        assert_eq!(read_all(IdleTimeout::new(steady, t)).await.unwrap(), 12);
        // Two chunks, then a silence far longer than the timeout.
        let stalled = Scripted::new(&[10, 20, 60_000]);
        let err = read_all(IdleTimeout::new(stalled, t)).await.unwrap_err();
        assert_eq!(timed_out(&*err), Some(t));
    }

    #[test]
    fn the_timeout_is_found_through_wrappers() {
        let wrapped = axum::Error::new(axum::Error::new(BodyTimeout(Duration::from_secs(1))));
        assert_eq!(timed_out(&wrapped), Some(Duration::from_secs(1)));
        assert_eq!(timed_out(&std::io::Error::other("reset")), None);
    }
}
