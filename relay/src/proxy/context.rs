//! Per-request bookkeeping and the events a request produces: one `request.finished`
//! per request, one `usage.recorded` per upstream attempt that reached upstream.

use super::ProxyDeps;
use crate::error::ApiError;
use crate::keys::ApiKey;
use crate::usage_tap::Usage;
use axum::response::Response;
use chrono::Utc;
use http::HeaderValue;
use ingest::publisher::Admission;
use schema::{
    AccountId, Completeness, Envelope, Event, Outcome, RequestFinished, RoutingDecision,
    ServerToolUse, UsageRecorded,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The routes the proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`.
    Model,
}

impl Endpoint {
    /// The route as recorded in events (ids in paths are not included).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::Models => "/v1/models",
            Endpoint::Model => "/v1/models/{id}",
        }
    }

    /// Whether requests carry a JSON body.
    pub fn has_body(self) -> bool {
        matches!(self, Endpoint::Messages | Endpoint::CountTokens)
    }

    /// Whether attempts consume billable tokens (count_tokens and models are free).
    pub fn records_usage(self) -> bool {
        self == Endpoint::Messages
    }
}

/// At most `max` characters of a string that came from a client or from upstream, so
/// that no event carries an unbounded field (and none exceeds the log's payload limit).
pub fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn bounded_opt(s: Option<&str>, max: usize) -> Option<String> {
    s.map(|s| bounded(s, max))
}

/// The relay's request id on every response.
pub const RELAY_REQUEST_ID: &str = "x-relay-request-id";

/// An error response in Anthropic's shape, tagged with the relay request id.
pub fn error_response(err: ApiError, request_id: &str) -> Response {
    let id = (!request_id.is_empty()).then_some(request_id);
    let mut resp = err.into_response_with_id(id);
    if let Some(v) = id.and_then(|i| HeaderValue::from_str(i).ok()) {
        resp.headers_mut().insert(RELAY_REQUEST_ID, v);
    }
    resp
}

/// How a request ended, for `request.finished`.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Status sent to the client.
    pub status: u16,
    /// Outcome.
    pub outcome: Outcome,
    /// Time to the first byte sent to the client.
    pub ttfb: Option<Duration>,
    /// Routing of the final attempt.
    pub routing: Option<RoutingDecision>,
    /// Error type returned, if any.
    pub error_type: Option<String>,
    /// Upstream `request-id`.
    pub upstream_request_id: Option<String>,
}

/// One request's context, owned by whoever finishes the request (the forwarding task,
/// then the response body).
pub struct RequestCtx {
    /// Shared state.
    pub state: ProxyDeps,
    /// The relay's request id.
    pub request_id: String,
    /// The client's key.
    pub key: Arc<ApiKey>,
    /// The route.
    pub endpoint: Endpoint,
    /// When the request arrived.
    pub started: Instant,
    /// Requested model.
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Sticky-session id.
    pub session: Option<String>,
    /// Upstream time so far, all attempts, microseconds.
    pub upstream_us: u64,
    /// Attempts made.
    pub attempts: u32,
    /// What the key's limits granted this request; settled in [`RequestCtx::finish`],
    /// released on drop whatever the exit path.
    permit: std::sync::Mutex<Option<crate::limits::engine::Permit>>,
    /// Cost of the usage recorded so far, nanodollars (kept only when limited).
    cost_nanos: std::sync::atomic::AtomicI64,
    /// Journal sequence number of the newest event this request published.
    last_seq: std::sync::atomic::AtomicU64,
    /// Held until the last event is published (see `Publisher::admit`).
    _admission: Admission,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RequestCtx {
    /// A context for an admitted request.
    pub fn new(
        state: ProxyDeps,
        request_id: String,
        key: Arc<ApiKey>,
        endpoint: Endpoint,
        started: Instant,
        admission: Admission,
    ) -> Self {
        Self {
            state,
            request_id,
            key,
            endpoint,
            started,
            model: None,
            stream: false,
            session: None,
            upstream_us: 0,
            attempts: 0,
            permit: std::sync::Mutex::new(None),
            cost_nanos: std::sync::atomic::AtomicI64::new(0),
            last_seq: std::sync::atomic::AtomicU64::new(0),
            _admission: admission,
        }
    }

    /// Holds the limits permit until the request finishes.
    pub fn hold(&mut self, permit: crate::limits::engine::Permit) {
        *self
            .permit
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(permit);
    }

    fn limited(&self) -> bool {
        self.permit.lock().map(|p| p.is_some()).unwrap_or(true)
    }

    /// Refuses the request because a tenant limit said no.
    pub fn reject_limit(self, r: crate::limits::Rejection) -> Response {
        use crate::limits::LimitName as L;
        let err = match r.limit {
            L::Rpm | L::Concurrency => ApiError::rate_limited(r.message, r.retry_after),
            L::Model | L::Ip => ApiError::permission(r.message),
            L::Unavailable => ApiError::unavailable(r.message, r.retry_after),
            _ => ApiError::billing(r.message),
        };
        self.finish_with(
            Finished {
                status: err.status.as_u16(),
                outcome: Outcome::Rejected,
                ttfb: None,
                routing: None,
                error_type: Some(err.error_type.to_owned()),
                upstream_request_id: None,
            },
            Some(r.limit.as_str().to_owned()),
        );
        error_response(err, &self.request_id)
    }

    /// Publishes an event tagged with this request, its tenant and key.
    pub fn publish(&self, event: Event, account: Option<AccountId>) {
        let mut env = Envelope::new(Uuid::now_v7(), Utc::now(), event)
            .with_request(self.request_id.clone())
            .with_key(Some(self.key.tenant.clone()), Some(self.key.id.clone()));
        if account.is_some() {
            env = env.with_account(account);
        }
        let seq = self.state.publisher.publish(env);
        self.last_seq
            .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }

    /// A wait for the events published so far to be as durable as the journal is
    /// configured to make them; `None` when they already are (they were written to
    /// the journal when published, and it does not sync each record).
    pub fn durable(&self) -> Option<futures::future::BoxFuture<'static, ()>> {
        let seq = self.last_seq.load(std::sync::atomic::Ordering::Relaxed);
        self.state
            .publisher
            .durable(seq)
            .map(|f| Box::pin(f) as futures::future::BoxFuture<'static, ()>)
    }

    /// Journals an upstream attempt before it is sent, so that a crash mid-attempt
    /// is recorded as usage of completeness `unknown` on restart. Only attempts that
    /// can consume billable tokens are journalled.
    pub fn journal_attempt(&self, account: &AccountId, attempt: u32) -> Result<(), ApiError> {
        if !self.endpoint.records_usage() {
            return Ok(());
        }
        let start = ingest::journal::AttemptStart {
            request_id: self.request_id.clone(),
            attempt,
            account: account.clone(),
            tenant: Some(self.key.tenant.clone()),
            api_key: Some(self.key.id.clone()),
            model: self.model.clone().unwrap_or_else(|| "unknown".to_owned()),
            stream: self.stream,
            endpoint: self.endpoint.as_str().to_owned(),
            started_at: Utc::now(),
        };
        match self.state.publisher.attempt_started(&start) {
            Ok(seq) => {
                self.last_seq
                    .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot journal an upstream attempt; not sending it");
                Err(ApiError::unavailable(
                    "relay: the event journal cannot be written; the request was not sent",
                    Some(5),
                ))
            }
        }
    }

    /// Records the usage of one attempt.
    #[expect(clippy::too_many_arguments, reason = "one flat fact with many fields")]
    pub fn record_usage(
        &self,
        account: &AccountId,
        attempt: u32,
        status: u16,
        model: Option<&str>,
        stream: bool,
        usage: &Usage,
        completeness: Completeness,
    ) {
        if !self.endpoint.records_usage() {
            return;
        }
        let t = usage.tokens();
        let ev = UsageRecorded {
            account: account.clone(),
            attempt,
            model: bounded(model.or(self.model.as_deref()).unwrap_or("unknown"), 256),
            status,
            stream,
            input_tokens: t.input,
            output_tokens: t.output,
            cache_read_input_tokens: t.cache_read,
            cache_creation_5m_input_tokens: t.cache_write_5m,
            cache_creation_1h_input_tokens: t.cache_write_1h,
            server_tool_use: ServerToolUse {
                web_search_requests: t.web_search_requests,
                web_fetch_requests: t.web_fetch_requests,
            },
            service_tier: bounded_opt(usage.service_tier.as_deref(), 64),
            speed: bounded_opt(usage.speed.as_deref(), 64),
            inference_geo: bounded_opt(usage.inference_geo.as_deref(), 64),
            completeness,
        };
        if self.limited() {
            let priced = self.state.limiter.prices().price_usage(Utc::now(), &ev);
            let nanos = projections::money::usd_to_nanos(priced.cost).unwrap_or(i64::MAX);
            self.cost_nanos
                .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        }
        self.publish(Event::UsageRecorded(ev), Some(account.clone()));
    }

    /// Publishes `request.finished` and updates the metrics.
    pub fn finish(&self, f: Finished) {
        self.finish_with(f, None);
    }

    fn finish_with(&self, f: Finished, rejected_by: Option<String>) {
        let permit = self
            .permit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(p) = permit {
            p.settle(self.cost_nanos.load(std::sync::atomic::Ordering::Relaxed));
        }
        let latency = self.started.elapsed();
        let latency_us = micros(latency);
        let m = &self.state.proxy.metrics;
        m.request(f.outcome);
        m.overhead
            .observe(latency_us.saturating_sub(self.upstream_us));
        if self.attempts > 0 {
            m.upstream_total.observe(self.upstream_us);
        }
        let account = f.routing.as_ref().map(|r| r.account.clone());
        let ev = RequestFinished {
            endpoint: self.endpoint.as_str().to_owned(),
            status: f.status,
            outcome: f.outcome,
            model: self.model.clone(),
            stream: self.stream,
            latency_us,
            ttfb_us: Some(f.ttfb.map_or(latency_us, micros)),
            upstream_us: (self.attempts > 0).then_some(self.upstream_us),
            attempts: self.attempts,
            routing: f.routing,
            error_type: bounded_opt(f.error_type.as_deref(), 128),
            upstream_request_id: bounded_opt(f.upstream_request_id.as_deref(), 128),
            rejected_by,
        };
        self.publish(Event::RequestFinished(ev), account);
    }

    /// Refuses the request with a relay error and records it.
    pub fn reject(self, err: ApiError) -> Response {
        self.finish(Finished {
            status: err.status.as_u16(),
            outcome: Outcome::Rejected,
            ttfb: None,
            routing: None,
            error_type: Some(err.error_type.to_owned()),
            upstream_request_id: None,
        });
        error_response(err, &self.request_id)
    }

    /// Adds upstream time.
    pub fn add_upstream(&mut self, d: Duration) {
        self.upstream_us = self.upstream_us.saturating_add(micros(d));
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn fields_from_outside_are_bounded_by_characters() {
        assert_eq!(bounded(&"é".repeat(1_000_000), 256).chars().count(), 256);
        assert_eq!(bounded("short", 256), "short");
        assert_eq!(bounded_opt(None, 5), None);
    }
}
