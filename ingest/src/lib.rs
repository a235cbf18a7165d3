//! Getting events into the log and reading them back.
//!
//! - [`EventLog`]: the port. One trait, two implementations: the embedded
//!   [`sqlite::SqliteLog`] (default) and the JetStream log in the `nats` crate. It is the
//!   only seam between the embedded and the scale modes.
//! - [`publisher::Publisher`]: what the relay uses. Bounded, never blocks the client
//!   path, retries with the same event id, spools to local disk when the log is
//!   unreachable, and drains on shutdown.
//! - `testing` (feature): the conformance suite every `EventLog` implementation runs.

use futures::stream::BoxStream;
use schema::{Category, Envelope};

pub mod journal;
pub mod publisher;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

/// A position in the log: 1 for the first event, 0 means "before the first event".
pub type Position = u64;

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Where the event is stored.
    pub position: Position,
    /// `true` when an event with the same id was already stored; `position` is then the
    /// original event's position.
    pub duplicate: bool,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its position in the log.
    pub position: Position,
    /// The event.
    pub envelope: Envelope,
}

/// Events in log order; ends only on error or when the log shuts down.
pub type EventStream = BoxStream<'static, Result<StoredEvent, LogError>>;

/// Errors from an event log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The backend cannot be reached right now; the caller may retry later.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// A stored event could not be decoded; the log holds bytes this build cannot read.
    #[error("undecodable event at position {position}: {message}")]
    Corrupt {
        /// Where.
        position: Position,
        /// Why.
        message: String,
    },
    /// The event could not be encoded.
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
    /// The log refuses this event for good (too large, invalid): retrying cannot help.
    /// The publisher moves such an event to its quarantine instead of letting it block
    /// the events behind it.
    #[error("event refused by the log: {0}")]
    Rejected(String),
    /// Any other backend failure.
    #[error("event log backend error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// A totally ordered, append-only log of [`Envelope`]s.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends one event, using its id as the idempotency key. Appending an id that is
    /// already stored returns the original position with `duplicate = true` (the SQLite
    /// log: forever; JetStream: within the stream's duplicate window).
    async fn append(&self, event: &Envelope) -> Result<Appended, LogError>;

    /// Appends several events in order. Implementations may pipeline; the result has one
    /// entry per input, in input order. On error, a prefix may have been stored: retrying
    /// the whole batch is safe because appends are idempotent.
    async fn append_batch(&self, events: &[Envelope]) -> Result<Vec<Appended>, LogError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.append(e).await?);
        }
        Ok(out)
    }

    /// Yields every event with `position > after` in log order, optionally only one
    /// category, then keeps waiting for new ones.
    async fn subscribe(
        &self,
        after: Position,
        filter: Option<Category>,
    ) -> Result<EventStream, LogError>;

    /// Position of the newest event, 0 when empty.
    async fn head(&self) -> Result<Position, LogError>;

    /// Short backend name for logs and metrics (`sqlite`, `jetstream`).
    fn backend(&self) -> &'static str;
}
