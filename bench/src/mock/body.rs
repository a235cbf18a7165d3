//! Response bodies of the mock: a whole buffer, or an SSE event stream.
//!
//! The event stream yields one body frame per event (hyper writes one chunk per frame),
//! paces text deltas against absolute deadlines (`sleep_until(start + n × interval)`) so
//! timer rounding never accumulates, and can be interrupted: a stall (silence), an
//! `event: error`, or an abrupt drop (the body errors, hyper aborts the connection without
//! the terminating chunk).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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
        }
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
            let Some((event, pace)) = self.events.get(self.next) else {
                self.finished = true;
                return Poll::Ready(None);
            };
            if let Pace::Paced(n) = pace {
                if !self.interval.is_zero() {
                    let due = self.start + self.interval * *n;
                    if Instant::now() < due {
                        self.sleep = Some(Box::pin(tokio::time::sleep_until(due)));
                        continue;
                    }
                }
            }
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(event.clone()))));
        }
    }
}
