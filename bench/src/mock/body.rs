//! Response bodies of the mock: a whole buffer, or an SSE event stream.
//!
//! The event stream yields one body frame per event (hyper writes one chunk per frame),
//! paces text deltas against absolute deadlines (`sleep_until(start + n × interval)`) so
//! timer rounding never accumulates, and can be interrupted: a stall (silence), an
//! `event: error`, or an abrupt drop (the body errors, hyper aborts the connection without
//! the terminating chunk).
//!
//! Two opt-in instruments: *stamps* (each event starts with an SSE comment line
//! `: t=<µs since the Unix epoch>` taken when the event is handed to hyper, so a client on
//! the same machine can tell how long the event took to reach it, [`stamp_micros`]) and a
//! *gate* (each event waits for a permit the test releases, [`EventGate`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::render::{error_event, Pace};

/// The error a dropped stream ends with; hyper answers it by closing the connection.
#[derive(Debug, thiserror::Error)]
#[error("mock upstream dropped the stream on purpose")]
pub struct DroppedOnPurpose;

/// How an event stream is cut short.
#[derive(Debug, Clone)]
pub enum Interrupt {
    /// Silence for `duration` after `after_events` events, then carry on (later deadlines
    /// shift by the stall).
    Stall {
        /// Events sent before the silence.
        after_events: usize,
        /// Length of the silence.
        duration: Duration,
    },
    /// `event: error` of this type after `after_events` events, then end of body.
    Error {
        /// Events sent before the error.
        after_events: usize,
        /// `overloaded_error`, `api_error`, …
        error_type: String,
    },
    /// Abort the connection after `after_events` events.
    Drop {
        /// Events sent before the abort.
        after_events: usize,
    },
}

impl Interrupt {
    fn after(&self) -> usize {
        match self {
            Interrupt::Stall { after_events, .. }
            | Interrupt::Error { after_events, .. }
            | Interrupt::Drop { after_events } => *after_events,
        }
    }
}

/// The comment line that opens a stamped event: `: t=<µs since the Unix epoch>\n`.
const STAMP_PREFIX: &[u8] = b": t=";

/// Microseconds since the Unix epoch (CLOCK_REALTIME): the clock stamps are read against,
/// shared by processes on one machine.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `event` preceded by a stamp comment with the current time. The comment sits inside
/// the event's block, so an SSE parser ignores it and the event count is unchanged.
fn stamped(event: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(event.len() + 24);
    out.put_slice(STAMP_PREFIX);
    out.put_slice(unix_micros().to_string().as_bytes());
    out.put_u8(b'\n');
    out.put_slice(event);
    out.freeze()
}

/// The send time (µs since the Unix epoch) of a stamped event, read from its first line.
pub fn stamp_micros(event: &[u8]) -> Option<u64> {
    let rest = event.strip_prefix(STAMP_PREFIX)?;
    let end = memchr::memchr(b'\n', rest)?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Holds back the events of every stream of a mock: each event waits for one permit.
/// Lets a test decide exactly when the mock writes the next event.
#[derive(Clone, Debug)]
pub struct EventGate {
    permits: Arc<Semaphore>,
    /// Events that went through the gate (each is handed to hyper right after).
    passed: Arc<AtomicUsize>,
}

impl EventGate {
    pub(crate) fn new() -> Self {
        EventGate {
            permits: Arc::new(Semaphore::new(0)),
            passed: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Lets `n` more events go out (across all streams, in the order they wait).
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// How many events the mock has written through the gate so far.
    pub fn passed(&self) -> usize {
        self.passed.load(Ordering::SeqCst)
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// An SSE body over pre-rendered events.
pub struct EventStream {
    events: Arc<[(Bytes, Pace)]>,
    next: usize,
    /// Deadline origin for paced events.
    start: Instant,
    interval: Duration,
    interrupt: Option<Interrupt>,
    sleep: Option<Pin<Box<Sleep>>>,
    finished: bool,
    flushed_before_drop: bool,
    /// Prefix each event with a send-time comment.
    stamp: bool,
    /// When set, each event waits for a permit of this gate.
    gate: Option<EventGate>,
    /// The pending permit request for the next event.
    acquiring: Option<Acquire>,
}

impl EventStream {
    /// A stream of `events`, paced events due at `start + n × interval`.
    pub fn new(
        events: Arc<[(Bytes, Pace)]>,
        start: Instant,
        interval: Duration,
        interrupt: Option<Interrupt>,
    ) -> Self {
        EventStream {
            events,
            next: 0,
            start,
            interval,
            interrupt,
            sleep: None,
            finished: false,
            flushed_before_drop: false,
            stamp: false,
            gate: None,
            acquiring: None,
        }
    }

    /// Stamps every event with its send time (see [`stamp_micros`]).
    #[must_use]
    pub fn stamped(mut self, on: bool) -> Self {
        self.stamp = on;
        self
    }

    /// Makes every event wait for a permit of `gate`.
    #[must_use]
    pub fn gated(mut self, gate: Option<EventGate>) -> Self {
        self.gate = gate;
        self
    }

    /// Whether the gate (if any) lets the next event go; registers the waker otherwise.
    fn poll_gate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(gate) = &self.gate else {
            return Poll::Ready(());
        };
        let acquiring = self
            .acquiring
            .get_or_insert_with(|| Box::pin(gate.permits.clone().acquire_owned()));
        let Poll::Ready(permit) = acquiring.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        self.acquiring = None;
        if let Ok(permit) = permit {
            permit.forget();
        }
        gate.passed.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(())
    }
}

/// A mock response body.
pub enum MockBody {
    /// A complete buffer (JSON bodies); `None` once sent.
    Full(Option<Bytes>),
    /// A paced SSE stream.
    Events(Box<EventStream>),
}

impl MockBody {
    /// An empty body.
    pub fn empty() -> Self {
        MockBody::Full(None)
    }
}

impl From<Bytes> for MockBody {
    fn from(b: Bytes) -> Self {
        MockBody::Full(Some(b))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = DroppedOnPurpose;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DroppedOnPurpose>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Events(s) => s.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Events(s) => s.finished,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Events(_) => SizeHint::default(),
        }
    }
}

impl EventStream {
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DroppedOnPurpose>>> {
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            if self.interrupt.as_ref().map(Interrupt::after) == Some(self.next) {
                match self.interrupt.take() {
                    Some(Interrupt::Stall { duration, .. }) => {
                        self.start += duration;
                        self.sleep = Some(Box::pin(tokio::time::sleep(duration)));
                        continue;
                    }
                    Some(Interrupt::Error { error_type, .. }) => {
                        self.finished = true;
                        return Poll::Ready(Some(Ok(Frame::data(error_event(&error_type)))));
                    }
                    Some(Interrupt::Drop { after_events }) => {
                        if !self.flushed_before_drop {
                            // hyper buffers the head and ready frames; yield once so they
                            // are flushed before the abort (else the client sees no reply).
                            self.flushed_before_drop = true;
                            self.interrupt = Some(Interrupt::Drop { after_events });
                            self.sleep =
                                Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
                            continue;
                        }
                        self.finished = true;
                        return Poll::Ready(Some(Err(DroppedOnPurpose)));
                    }
                    None => {}
                }
            }
            let Some((event, pace)) = self.events.get(self.next).cloned() else {
                self.finished = true;
                return Poll::Ready(None);
            };
            if let Pace::Paced(n) = pace {
                if !self.interval.is_zero() {
                    let due = self.start + self.interval * n;
                    if Instant::now() < due {
                        self.sleep = Some(Box::pin(tokio::time::sleep_until(due)));
                        continue;
                    }
                }
            }
            if self.poll_gate(cx).is_pending() {
                return Poll::Pending;
            }
            self.next += 1;
            let event = if self.stamp { stamped(&event) } else { event };
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_a_comment_line_carrying_the_send_time() {
        let event = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
        let before = unix_micros();
        let out = stamped(event);
        let after = unix_micros();
        let sent = stamp_micros(&out).unwrap_or_default();
        assert!(
            (before..=after).contains(&sent),
            "{before} ≤ {sent} ≤ {after}"
        );
        assert!(out.starts_with(b": t="));
        assert!(
            out.ends_with(event),
            "the event follows the comment unchanged"
        );
        assert_eq!(stamp_micros(event), None);
        assert_eq!(stamp_micros(b": keepalive\n\n"), None);
    }
}
