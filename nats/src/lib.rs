//! The JetStream implementation of [`ingest::EventLog`], for running several relays
//! and projectors against one shared log.
//!
//! One stream, `RELAY_EVENTS`, binds `relay.events.>`. It is provisioned (created or
//! updated) at start-up with the settings an audit log needs: file storage, limits
//! retention (a log, not a queue), no age limit, delete and purge denied, and an
//! explicit duplicate window. Each event is one message on `envelope.subject()` with
//! `Nats-Msg-Id` = event id, so the server drops re-publishes inside the window;
//! every publish acknowledgement is awaited. Readers use ordered consumers started
//! from a stream sequence, which need no server-side state and clean up after
//! themselves. Only features of nats-server 2.9 are used (a single `filter_subject`, no
//! KV), so Debian's 2.9.10 works as well as current servers.
//!
//! Layout: [`StreamSettings`] (stream and client settings), [`JetStreamLog`] (the log),
//! and, behind the `testing` feature, `testing::NatsServer` to run a private
//! nats-server in tests.

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    ConsumerErrorKind, DiscardPolicy, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use futures::StreamExt;
use ingest::{Appended, EventLog, EventStream, LogError, Position, StoredEvent};
use schema::{Category, Envelope, SUBJECT_PREFIX};
use std::time::Duration;
use tokio::sync::watch;

#[cfg(feature = "testing")]
pub mod testing;

/// The stream's default name.
pub const STREAM_NAME: &str = "RELAY_EVENTS";

/// Publishes in flight per pipelined window of [`EventLog::append_batch`]; the acks of
/// one window are awaited before the next is sent.
const PUBLISH_WINDOW: usize = 256;

/// Header carrying the event type, for tools that route without parsing JSON.
pub const EVENT_TYPE_HEADER: &str = "Relay-Event-Type";
/// Header carrying the payload version.
pub const EVENT_VERSION_HEADER: &str = "Relay-Event-Version";
/// Header carrying the relay request id, when the event has one.
pub const REQUEST_ID_HEADER: &str = "Relay-Request-Id";

/// How the stream is provisioned and how the client behaves.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Stream name. Default [`STREAM_NAME`].
    pub stream_name: String,
    /// Window in which the server drops a message whose `Nats-Msg-Id` it has already
    /// stored. It must exceed the publisher's retry horizon (its spool replays with
    /// the same ids), or a retried event may be stored twice; projections also dedupe
    /// on event id, so that is a cost, not a correctness bug. Default 10 minutes.
    pub duplicate_window: Duration,
    /// Disk budget for the stream in bytes; `-1` is unlimited. When it is reached the
    /// server refuses new events (discard `New`): old facts are never dropped, and the
    /// publisher spools until an operator adds space. Default -1.
    pub max_bytes: i64,
    /// Replicas (1 for a single server, 3 in a cluster). Default 1.
    pub replicas: usize,
    /// Timeout for JetStream API requests and for each publish acknowledgement.
    /// Default 5 s.
    pub timeout: Duration,
    /// Timeout for establishing a TCP connection to the server. Default 5 s.
    pub connect_timeout: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            stream_name: STREAM_NAME.to_owned(),
            duplicate_window: Duration::from_secs(10 * 60),
            max_bytes: -1,
            replicas: 1,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl StreamSettings {
    /// The stream configuration provisioned at start-up.
    pub fn stream_config(&self) -> jetstream::stream::Config {
        jetstream::stream::Config {
            name: self.stream_name.clone(),
            description: Some("Relay event log: the source of truth for billing and audit".into()),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_age: Duration::ZERO,
            max_bytes: self.max_bytes,
            max_messages: -1,
            max_messages_per_subject: -1,
            discard: DiscardPolicy::New,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            allow_rollup: false,
            ..Default::default()
        }
    }
}

/// The [`EventLog`] on a JetStream stream. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamLog {
    context: Context,
    stream_name: String,
    client: async_nats::Client,
    /// Counts (re)connections; subscriptions recreate their consumer when it moves,
    /// because a restarted server has forgotten the ephemeral consumers.
    connections: watch::Receiver<u64>,
}

impl JetStreamLog {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) and creates or updates the
    /// stream. Fails with [`LogError::Unavailable`] when the server cannot be reached;
    /// once connected, the client reconnects forever.
    pub async fn connect(url: &str, settings: StreamSettings) -> Result<JetStreamLog, LogError> {
        let (connected, connections) = watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .name("relay")
            .connection_timeout(settings.connect_timeout)
            .request_timeout(Some(settings.timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            connected.send_modify(|n| *n += 1);
                            tracing::info!("nats connected");
                        }
                        async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                        other => tracing::warn!(event = %other, "nats event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| {
                LogError::Unavailable(format!("cannot connect to nats at {}: {e}", redact(url)))
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.timeout)
            .ack_timeout(settings.timeout)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let info = context
            .create_or_update_stream(settings.stream_config())
            .await
            .map_err(|e| {
                let message = format!("cannot provision stream {}: {e}", settings.stream_name);
                match e.kind() {
                    CreateStreamErrorKind::TimedOut
                    | CreateStreamErrorKind::JetStreamUnavailable => LogError::Unavailable(message),
                    _ => LogError::Backend(message.into()),
                }
            })?;
        tracing::info!(
            stream = %info.config.name,
            messages = info.state.messages,
            last_sequence = info.state.last_sequence,
            "jetstream event log ready"
        );
        Ok(JetStreamLog {
            context,
            stream_name: settings.stream_name,
            client,
            connections,
        })
    }

    /// The underlying client, e.g. to flush or close it.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn message(event: &Envelope) -> Result<PublishMessage, LogError> {
        let mut message = PublishMessage::build()
            .payload(Bytes::from(event.to_json()?))
            .message_id(event.id.to_string())
            .header(EVENT_TYPE_HEADER, event.event.type_name())
            .header(EVENT_VERSION_HEADER, event.version.to_string());
        // The header is a convenience; a value NATS cannot carry (CR or LF would make
        // the client panic) is simply left out; the payload still has it.
        if let Some(request_id) = event
            .request_id
            .as_deref()
            .filter(|r| !r.contains(['\r', '\n']))
        {
            message = message.header(REQUEST_ID_HEADER, request_id);
        }
        Ok(message)
    }
}

/// The URL without credentials, for messages: `nats://user:pass@host` → `nats://host`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        (None, Some((_, host))) => host.to_owned(),
        _ => url.to_owned(),
    }
}

/// Backoff between reconnect attempts: quick at first, at most 2 s, so a restarted
/// server is picked up promptly.
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.min(5)).unwrap_or(5);
    Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(2))
}

fn publish_error(e: async_nats::jetstream::context::PublishError) -> LogError {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => LogError::Unavailable(format!("publish failed: {e}")),
        PublishErrorKind::MaxPayloadExceeded => LogError::Rejected(format!("publish refused: {e}")),
        _ => LogError::Backend(Box::new(e)),
    }
}

fn jetstream_api_error(e: &async_nats::jetstream::Error, what: &str) -> LogError {
    // 503 is "JetStream temporarily unavailable" (no leader, server starting up).
    if e.code() == 503 {
        LogError::Unavailable(format!("{what}: {e}"))
    } else {
        LogError::Backend(format!("{what}: {e}").into())
    }
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, event: &Envelope) -> Result<Appended, LogError> {
        let mut out = self.append_batch(std::slice::from_ref(event)).await?;
        out.pop()
            .ok_or_else(|| LogError::Backend("append returned no acknowledgement".into()))
    }

    async fn append_batch(&self, events: &[Envelope]) -> Result<Vec<Appended>, LogError> {
        let mut out = Vec::with_capacity(events.len());
        for window in events.chunks(PUBLISH_WINDOW) {
            // Pipeline: send the whole window, then await every acknowledgement in
            // order. Duplicates inside a window are fine: the server processes them in
            // order and acknowledges the second copy as a duplicate.
            let mut acks = Vec::with_capacity(window.len());
            for event in window {
                let ack = self
                    .context
                    .send_publish(event.subject(), Self::message(event)?)
                    .await
                    .map_err(publish_error)?;
                acks.push(ack);
            }
            for ack in acks {
                let ack = ack.await.map_err(publish_error)?;
                out.push(Appended {
                    position: ack.sequence,
                    duplicate: ack.duplicate,
                });
            }
        }
        Ok(out)
    }

    async fn subscribe(
        &self,
        after: Position,
        filter: Option<Category>,
    ) -> Result<EventStream, LogError> {
        let mut connections = self.connections.clone();
        connections.borrow_and_update();
        let filter_subject = filter.map(Category::subject_filter).unwrap_or_default();
        let messages =
            open_ordered(&self.context, &self.stream_name, after, &filter_subject).await?;
        let state = Reader {
            context: self.context.clone(),
            stream_name: self.stream_name.clone(),
            filter_subject,
            connections,
            messages: Some(messages),
            last: after,
            done: false,
        };
        Ok(futures::stream::unfold(state, Reader::next).boxed())
    }

    async fn head(&self) -> Result<Position, LogError> {
        let stream = self
            .context
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::Request => {
                    LogError::Unavailable(format!("cannot read stream info: {e}"))
                }
                GetStreamErrorKind::JetStream(api) => {
                    jetstream_api_error(&api, "cannot read stream info")
                }
                _ => LogError::Backend(Box::new(e)),
            })?;
        Ok(stream.cached_info().state.last_sequence)
    }

    fn backend(&self) -> &'static str {
        "jetstream"
    }
}

/// Creates an ordered consumer delivering the events after `after`.
async fn open_ordered(
    context: &Context,
    stream_name: &str,
    after: Position,
    filter_subject: &str,
) -> Result<Ordered, LogError> {
    let deliver_policy = if after == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        }
    };
    let config = OrderedConfig {
        deliver_policy,
        filter_subject: filter_subject.to_owned(),
        ..Default::default()
    };
    let consumer = context
        .create_consumer_on_stream(config, stream_name)
        .await
        .map_err(|e| match e.kind() {
            ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => {
                LogError::Unavailable(format!("cannot create consumer: {e}"))
            }
            ConsumerErrorKind::JetStream(api) => {
                jetstream_api_error(&api, "cannot create consumer")
            }
            _ => LogError::Backend(Box::new(e)),
        })?;
    consumer
        .messages()
        .await
        .map_err(|e| LogError::Unavailable(format!("cannot start consumer: {e}")))
}

/// One subscription: an ordered consumer plus the position reached. When the client
/// reconnects (the server may have restarted and forgotten the consumer) or the
/// consumer fails, it is recreated from the last yielded position, so a tail survives
/// server restarts without the caller noticing. Positions only move forward.
struct Reader {
    context: Context,
    stream_name: String,
    filter_subject: String,
    connections: watch::Receiver<u64>,
    /// `None` while it has to be (re)created.
    messages: Option<Ordered>,
    last: Position,
    /// Set after an undecodable event was yielded; the caller decides what to do.
    done: bool,
}

/// Longest pause between attempts to recreate a consumer.
const RECREATE_MAX_DELAY: Duration = Duration::from_secs(2);

impl Reader {
    async fn next(mut self) -> Option<(Result<StoredEvent, LogError>, Reader)> {
        if self.done {
            return None;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.connections.borrow_and_update();
                match open_ordered(
                    &self.context,
                    &self.stream_name,
                    self.last,
                    &self.filter_subject,
                )
                .await
                {
                    Ok(m) => {
                        self.messages = Some(m);
                        delay = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, after = self.last, "cannot recreate event subscription; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RECREATE_MAX_DELAY);
                    }
                }
                continue;
            };
            let message = tokio::select! {
                message = messages.next() => message,
                changed = self.connections.changed() => {
                    if changed.is_ok() {
                        // Reconnected: start a fresh consumer after what we have.
                        self.messages = None;
                        continue;
                    }
                    // The client is gone for good; keep reading what is buffered.
                    messages.next().await
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, after = self.last, "event subscription failed; recreating");
                    self.messages = None;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECREATE_MAX_DELAY);
                    continue;
                }
                None => return None,
            };
            let position = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    tracing::warn!(error = %e, "message without JetStream metadata; recreating subscription");
                    self.messages = None;
                    continue;
                }
            };
            // A start sequence is a server-side hint, and a recreated consumer may
            // repeat; never yield anything at or before a position already passed.
            if position <= self.last {
                continue;
            }
            self.last = position;
            let item = Envelope::from_json(&message.payload)
                .map(|envelope| StoredEvent { position, envelope })
                .map_err(|e| LogError::Corrupt {
                    position,
                    message: e.to_string(),
                });
            self.done = item.is_err();
            return Some((item, self));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_error_messages() {
        assert_eq!(redact("nats://u:secret@host:4222"), "nats://host:4222");
        assert_eq!(redact("u:secret@host:4222"), "host:4222");
        assert_eq!(redact("nats://host:4222"), "nats://host:4222");
    }

    #[test]
    fn a_request_id_nats_cannot_carry_is_left_out_of_the_headers() {
        let mut e = ingest::testing::sample_admin_event("x");
        e.request_id = Some("bad\r\nid".into());
        // Must not panic; the id stays in the payload.
        assert!(JetStreamLog::message(&e).is_ok());
    }
}
