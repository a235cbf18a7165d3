//! The response body sent to the client: upstream chunks forwarded as they arrive,
//! observed by the usage tap, with SSE keepalives during upstream silence, an idle
//! timeout on upstream reads, a synthetic `event: error` when the upstream dies
//! mid-stream, and the client-disconnect policy when the client leaves early.
//!
//! The body owns the request's [`Finish`]: whoever ends the body (normal end, upstream
//! failure, or `Drop` after a disconnect) publishes the usage and `request.finished`
//! events exactly once and releases the account's concurrency slot.

use super::context::{Finished, RequestCtx, RELAY_REQUEST_ID};
use super::headers;
use crate::config::DisconnectPolicy;
use crate::pool::health::Signal;
use crate::pool::Lease;
use crate::usage_tap::{JsonTap, SseTap, Usage};
use bytes::Bytes;
use chrono::Utc;
use futures::stream::BoxStream;
use futures::StreamExt;
use http::{HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use schema::{Completeness, HealthEvidence, Outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Upstream body chunks.
pub type UpstreamStream = BoxStream<'static, reqwest::Result<Bytes>>;

/// The SSE comment sent during upstream silence.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// The body ended because the upstream failed in a way that cannot be expressed in the
/// stream (mid-event, or a non-streaming body): the connection is aborted.
#[derive(Debug, thiserror::Error)]
#[error("upstream failed mid-response")]
pub struct UpstreamBroken;

/// The usage tap matching the response.
#[derive(Debug)]
pub enum Tap {
    /// `text/event-stream`.
    Sse(Box<SseTap>),
    /// A JSON body kept for its usage / error.
    Json(JsonTap),
    /// Nothing to observe.
    None,
}

impl Tap {
    fn feed(&mut self, chunk: &[u8]) {
        match self {
            Tap::Sse(t) => t.feed(chunk),
            Tap::Json(t) => t.feed(chunk),
            Tap::None => {}
        }
    }

    /// Usage, model and error type seen.
    fn summary(&self) -> (Usage, Option<String>, Option<String>) {
        match self {
            Tap::Sse(t) => (
                t.usage().clone(),
                t.model().map(str::to_owned),
                t.error().map(str::to_owned),
            ),
            Tap::Json(t) => {
                let s = t.summary();
                (s.usage, s.model, s.error.map(|e| e.0))
            }
            Tap::None => (Usage::default(), None, None),
        }
    }
}

/// Everything needed to close the request once the body ends.
pub struct Finish {
    /// The request.
    pub ctx: RequestCtx,
    /// The account in use; dropping it frees the concurrency slot.
    pub lease: Lease,
    /// Attempt number of this response.
    pub attempt: u32,
    /// Upstream status (sent to the client).
    pub status: u16,
    /// Upstream `request-id`.
    pub upstream_request_id: Option<String>,
    /// When this attempt started.
    pub attempt_started: Instant,
    /// When the first byte went to the client.
    pub first_byte: Option<Instant>,
}

/// A wait for a request's events to be durable (see [`RequestCtx::durable`]).
type Durable = futures::future::BoxFuture<'static, ()>;

impl Finish {
    /// Publishes the attempt's usage and the request's end. Returns a wait for them to
    /// be durable when the journal syncs each record.
    fn close(mut self, tap: &Tap, completeness: Completeness, outcome: Outcome) -> Option<Durable> {
        self.ctx.add_upstream(self.attempt_started.elapsed());
        let (usage, model, error_type) = tap.summary();
        let account = self.lease.account().id.clone();
        if error_type.as_deref() == Some("overloaded_error") && self.status < 400 {
            // A mid-stream overload says the same about the account as a 529.
            let evidence = HealthEvidence {
                status: Some(self.status),
                error_type: error_type.clone(),
                ..HealthEvidence::default()
            };
            self.ctx.state.proxy.pool.observe(
                self.lease.runtime(),
                Signal::Status {
                    status: 529,
                    evidence,
                },
                Utc::now(),
            );
        }
        let stream = matches!(tap, Tap::Sse(_));
        self.ctx.record_usage(
            &account,
            self.attempt,
            self.status,
            model.as_deref(),
            stream,
            &usage,
            completeness,
        );
        let ttfb = self.first_byte.map(|t| t.duration_since(self.ctx.started));
        self.ctx.finish(Finished {
            status: self.status,
            outcome,
            ttfb,
            routing: Some(self.lease.decision.clone()),
            error_type,
            upstream_request_id: self.upstream_request_id.take(),
        });
        self.ctx.durable()
    }
}

/// The streaming response body.
pub struct ProxyBody {
    upstream: Option<UpstreamStream>,
    tap: Tap,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    keepalive: Option<(Pin<Box<Sleep>>, Duration)>,
    finish: Option<Finish>,
    size: Option<u64>,
    forwarded: u64,
    /// When the upstream last sent bytes (or the body started).
    last_upstream: tokio::time::Instant,
    /// When the last keepalive went out.
    last_keepalive: tokio::time::Instant,
    /// The response's last chunk (`None`: its end), held back until the request's
    /// events are durable.
    held: Option<(Option<Bytes>, Durable)>,
    done: bool,
}

impl ProxyBody {
    /// A body over `upstream`; `finish` is `None` only in tests.
    fn new(
        upstream: UpstreamStream,
        tap: Tap,
        idle_timeout: Duration,
        keepalive: Option<Duration>,
        finish: Option<Finish>,
        size: Option<u64>,
    ) -> Self {
        Self {
            upstream: Some(upstream),
            tap,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            keepalive: keepalive.map(|every| (Box::pin(tokio::time::sleep(every)), every)),
            finish,
            size,
            forwarded: 0,
            last_upstream: tokio::time::Instant::now(),
            last_keepalive: tokio::time::Instant::now(),
            held: None,
            done: false,
        }
    }

    fn mark_first_byte(&mut self) {
        if let Some(f) = &mut self.finish {
            if f.first_byte.is_none() {
                f.first_byte = Some(Instant::now());
            }
        }
    }

    fn outcome_for_status(&self) -> Outcome {
        match &self.finish {
            Some(f) if f.status >= 400 => Outcome::UpstreamError,
            _ => Outcome::Completed,
        }
    }

    /// Closes the request (once). Returns the wait for its events to be durable.
    fn close(&mut self, completeness: Completeness, outcome: Outcome) -> Option<Durable> {
        self.done = true;
        self.upstream = None;
        self.finish
            .take()
            .and_then(|f| f.close(&self.tap, completeness, outcome))
    }

    /// Closes the request and sends `last` (`None`: the end of the body) only once its
    /// events are durable: they were written to the journal by `close`, before the
    /// client has the whole response.
    /// A stream (`ends: false`) keeps forwarding whatever upstream sends after
    /// `message_stop`.
    fn close_then(
        &mut self,
        completeness: Completeness,
        outcome: Outcome,
        last: Option<Bytes>,
        ends: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBroken>>> {
        let wait = if ends {
            self.close(completeness, outcome)
        } else {
            self.finish
                .take()
                .and_then(|f| f.close(&self.tap, completeness, outcome))
        };
        match wait {
            Some(wait) => {
                self.held = Some((last, wait));
                self.poll_held(cx)
            }
            None => Poll::Ready(last.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn poll_held(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBroken>>> {
        let Some((_, wait)) = &mut self.held else {
            return Poll::Ready(None);
        };
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let last = self.held.take().and_then(|(b, _)| b);
        Poll::Ready(last.map(|b| Ok(Frame::data(b))))
    }

    /// Upstream ended cleanly.
    fn upstream_ended(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBroken>>> {
        if let Tap::Sse(t) = &self.tap {
            if !t.saw_stop() {
                if t.error().is_some() {
                    self.close(Completeness::UpstreamErrorPartial, Outcome::UpstreamError);
                    return Poll::Ready(None);
                }
                return self.upstream_failed("the upstream closed the stream before message_stop");
            }
        }
        let outcome = self.outcome_for_status();
        self.close_then(Completeness::Complete, outcome, None, true, cx)
    }

    /// Upstream broke (read error or idle timeout).
    fn upstream_failed(&mut self, why: &str) -> Poll<Option<Result<Frame<Bytes>, UpstreamBroken>>> {
        tracing::warn!(reason = why, "upstream failed mid-response");
        if let Some(f) = &self.finish {
            f.ctx.state.proxy.pool.observe(
                f.lease.runtime(),
                Signal::Connection {
                    message: why.to_owned(),
                },
                Utc::now(),
            );
        }
        match &self.tap {
            Tap::Sse(t) if t.saw_stop() => {
                let outcome = self.outcome_for_status();
                self.close(Completeness::Complete, outcome);
                Poll::Ready(None)
            }
            Tap::Sse(t) if t.error().is_some() => {
                // The client already has upstream's own error event.
                self.close(Completeness::UpstreamErrorPartial, Outcome::UpstreamError);
                Poll::Ready(None)
            }
            Tap::Sse(t) if t.at_boundary() => {
                // Anthropic's field order, so substring-matching clients see the usual
                // `{"type":"error","error":{"type":…` shape.
                let message = serde_json::Value::String(format!("relay: {why}"));
                let frame = Bytes::from(format!(
                    "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":{message}}}}}\n\n"
                ));
                // The tap sees what the client sees, so the request records the error.
                self.tap.feed(&frame);
                self.close(Completeness::UpstreamErrorPartial, Outcome::UpstreamError);
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            _ => {
                // Half an event (or a JSON body) cannot be completed honestly: abort so
                // the client sees a broken response rather than a truncated one.
                self.close(Completeness::UpstreamErrorPartial, Outcome::UpstreamError);
                Poll::Ready(Some(Err(UpstreamBroken)))
            }
        }
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.held.is_some() {
            return this.poll_held(cx);
        }
        if this.done {
            return Poll::Ready(None);
        }
        let Some(up) = this.upstream.as_mut() else {
            this.done = true;
            return Poll::Ready(None);
        };
        loop {
            match up.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    this.tap.feed(&chunk);
                    // Timers are not re-armed per chunk (that would touch the timer
                    // wheel on every event); they check this when they fire.
                    this.last_upstream = tokio::time::Instant::now();
                    this.mark_first_byte();
                    this.forwarded += chunk.len() as u64;
                    // The request is complete with this chunk: a stream's
                    // `message_stop`, or a sized body's last byte (the server may not
                    // poll again for the end). Its events are journalled before the
                    // chunk goes out.
                    let (complete, ends) = match &this.tap {
                        Tap::Sse(t) => (t.saw_stop(), false),
                        _ => (this.size.is_some_and(|n| this.forwarded >= n), true),
                    };
                    if complete && this.finish.is_some() {
                        let outcome = this.outcome_for_status();
                        return this.close_then(
                            Completeness::Complete,
                            outcome,
                            Some(chunk),
                            ends,
                            cx,
                        );
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let why = if e.is_timeout() {
                        "the upstream read timed out"
                    } else {
                        "the upstream connection broke mid-response"
                    };
                    return this.upstream_failed(why);
                }
                Poll::Ready(None) => return this.upstream_ended(cx),
                Poll::Pending => break,
            }
        }
        if this.poll_idle_expired(cx) {
            return this.upstream_failed("the upstream went silent past the idle timeout");
        }
        if this.poll_keepalive_due(cx) {
            if let Some(f) = &this.finish {
                f.ctx
                    .state
                    .proxy
                    .metrics
                    .keepalives
                    .fetch_add(1, Ordering::Relaxed);
            }
            this.mark_first_byte();
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(KEEPALIVE)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl ProxyBody {
    /// Whether the upstream has been silent for the idle timeout. Registers the waker
    /// on the idle timer otherwise.
    fn poll_idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_upstream + self.idle_timeout;
            if tokio::time::Instant::now() >= deadline {
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
    }

    /// Whether a keepalive comment should go out now: the upstream (and the relay)
    /// have been quiet for an interval and the stream sits between events. Registers
    /// the waker on the keepalive timer otherwise.
    fn poll_keepalive_due(&mut self, cx: &mut Context<'_>) -> bool {
        let at_boundary = matches!(&self.tap, Tap::Sse(t) if t.at_boundary());
        let quiet_since = self.last_upstream.max(self.last_keepalive);
        let Some((timer, every)) = &mut self.keepalive else {
            return false;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = tokio::time::Instant::now();
            let due = quiet_since + *every;
            if now < due {
                timer.as_mut().reset(due);
                continue;
            }
            // Due. Mid-event nothing may be inserted: look again one interval later.
            timer.as_mut().reset(now + *every);
            if at_boundary {
                self.last_keepalive = now;
                return true;
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        // The client left before the end of the body.
        let tap = std::mem::replace(&mut self.tap, Tap::None);
        let upstream = self.upstream.take();
        let state = finish.ctx.state.clone();
        let proxy = &state.proxy;
        let can_drain = state.config.disconnect_policy == DisconnectPolicy::Drain
            && upstream.is_some()
            && tokio::runtime::Handle::try_current().is_ok()
            && proxy
                .drains
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < super::MAX_CONCURRENT_DRAINS).then_some(n + 1)
                })
                .is_ok();
        match upstream {
            Some(up) if can_drain => {
                proxy.metrics.drains.fetch_add(1, Ordering::Relaxed);
                let limits = DrainLimits {
                    time: Duration::from_secs(state.config.drain_max_secs),
                    bytes: state.config.drain_max_bytes,
                    idle: self.idle_timeout,
                };
                state.tracker.spawn(drain(up, tap, finish, limits));
            }
            _ => {
                // Nobody waits for these: the client is gone.
                let _ = finish.close(
                    &tap,
                    Completeness::ClientDisconnectedPartial,
                    Outcome::ClientDisconnected,
                );
            }
        }
    }
}

struct DrainLimits {
    time: Duration,
    bytes: u64,
    idle: Duration,
}

/// Keeps reading a stream whose client left, to capture the final usage.
async fn drain(mut up: UpstreamStream, mut tap: Tap, finish: Finish, limits: DrainLimits) {
    let deadline = tokio::time::Instant::now() + limits.time;
    let mut read = 0u64;
    let mut ended = false;
    loop {
        let next = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + limits.idle),
            up.next(),
        );
        let next = tokio::select! {
            n = next => n,
            // Shutting down: record what was seen rather than hold the exit.
            () = finish.ctx.state.shutdown.cancelled() => break,
        };
        match next {
            Ok(Some(Ok(chunk))) => {
                tap.feed(&chunk);
                read += chunk.len() as u64;
                if matches!(&tap, Tap::Sse(t) if t.saw_stop()) {
                    ended = true;
                    break;
                }
                if read > limits.bytes {
                    break;
                }
            }
            Ok(None) => {
                ended = !matches!(&tap, Tap::Sse(t) if !t.saw_stop());
                break;
            }
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    drop(up);
    let completeness = if ended {
        Completeness::ClientDisconnectedDrained
    } else {
        Completeness::ClientDisconnectedPartial
    };
    let state = finish.ctx.state.clone();
    if let Some(wait) = finish.close(&tap, completeness, Outcome::ClientDisconnected) {
        wait.await;
    }
    state.proxy.drains.fetch_sub(1, Ordering::AcqRel);
}

/// Turns an upstream response into the client's response.
pub fn respond(
    ctx: RequestCtx,
    lease: Lease,
    resp: reqwest::Response,
    attempt: u32,
    attempt_started: Instant,
) -> axum::response::Response {
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let tap = if is_sse {
        Tap::Sse(Box::default())
    } else if ctx.endpoint.records_usage() || status.as_u16() >= 400 {
        Tap::Json(JsonTap::default())
    } else {
        Tap::None
    };
    let upstream_request_id = resp
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut out_headers = headers::response_headers(resp.headers());
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        out_headers.insert(RELAY_REQUEST_ID, v);
    }
    let size = if is_sse { None } else { resp.content_length() };
    let config = &ctx.state.config;
    let idle_timeout = config.upstream_idle_timeout();
    let keepalive = (is_sse && config.sse_keepalive_ms > 0).then(|| config.sse_keepalive());
    let finish = Finish {
        ctx,
        lease,
        attempt,
        status: status.as_u16(),
        upstream_request_id,
        attempt_started,
        first_byte: None,
    };
    let body = ProxyBody::new(
        resp.bytes_stream().boxed(),
        tap,
        idle_timeout,
        keepalive,
        Some(finish),
        size,
    );
    let mut response = axum::response::Response::new(axum::body::Body::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = out_headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    fn body_over(
        rx: mpsc::UnboundedReceiver<Bytes>,
        keepalive: Duration,
        idle: Duration,
    ) -> ProxyBody {
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, reqwest::Error>(b), rx))
        })
        .boxed();
        ProxyBody::new(
            stream,
            Tap::Sse(Box::default()),
            idle,
            Some(keepalive),
            None,
            None,
        )
    }

    async fn next_data(b: &mut ProxyBody) -> Option<Bytes> {
        match b.frame().await {
            Some(Ok(f)) => f.into_data().ok(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn keepalives_only_between_events() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut b = body_over(rx, Duration::from_millis(10), Duration::from_secs(30));
        // Half an event, then silence: no comment may be inserted.
        tx.send(Bytes::from_static(
            b"event: content_block_delta\ndata: {\"ty",
        ))
        .unwrap();
        assert_eq!(
            next_data(&mut b).await.unwrap(),
            &b"event: content_block_delta\ndata: {\"ty"[..]
        );
        let waited = tokio::time::timeout(Duration::from_millis(150), next_data(&mut b)).await;
        assert!(
            waited.is_err(),
            "nothing may be sent inside an event: {waited:?}"
        );
        // The event completes; during the next silence comments flow.
        tx.send(Bytes::from_static(b"pe\":\"x\"}\n\n")).unwrap();
        assert_eq!(next_data(&mut b).await.unwrap(), &b"pe\":\"x\"}\n\n"[..]);
        let k = tokio::time::timeout(Duration::from_secs(5), next_data(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(k, KEEPALIVE);
    }

    #[tokio::test]
    async fn idle_upstream_mid_event_aborts_and_at_boundary_sends_an_error_event() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut b = body_over(rx, Duration::from_secs(60), Duration::from_millis(50));
        tx.send(Bytes::from_static(b"event: ping\ndata: {}\n\n"))
            .unwrap();
        next_data(&mut b).await.unwrap();
        let err = next_data(&mut b).await.unwrap();
        let text = String::from_utf8(err.to_vec()).unwrap();
        assert!(
            text.starts_with(
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\""
            ),
            "{text}"
        );
        assert!(b.frame().await.is_none());

        let (tx, rx) = mpsc::unbounded_channel();
        let mut b = body_over(rx, Duration::from_secs(60), Duration::from_millis(50));
        tx.send(Bytes::from_static(b"event: ping\nda")).unwrap();
        next_data(&mut b).await.unwrap();
        assert!(matches!(b.frame().await, Some(Err(UpstreamBroken))));
        drop(tx);
    }
}
