//! The Anthropic-compatible surface: `/v1/messages` (+ `count_tokens`), `/v1/models`,
//! the preconnect probes, all also under `/api`, and `/metrics`.
//!
//! - [`request`]: client credential and the few body fields the relay reads;
//! - [`headers`]: header pass-through and credential replacement;
//! - [`forward`]: account pick, upstream attempts and failover before the first byte;
//! - [`body`]: the response body streamed to the client with the usage tap,
//!   keepalives, idle timeout and the client-disconnect policy;
//! - [`context`]: per-request bookkeeping and the events it produces;
//! - [`tasks`]: account reloads, health housekeeping and the health fold from the log.

pub mod body;
pub mod context;
pub mod deps;
pub mod forward;
pub mod headers;
pub mod request;
pub mod tasks;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pool::health::Cooldowns;
use crate::pool::{HealthSink, Pool};
use crate::upstream::Upstreams;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::Router;
use chrono::Utc;
use context::{Endpoint, RequestCtx};
pub use deps::{ProxyDeps, ProxyDepsInner};
use ingest::publisher::Publisher;
use schema::{AuthFailed, Envelope, Event};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Requests with an invalid key tolerated per client address and minute; beyond, the
/// address gets 429 without a key lookup until the minute ends.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 60;

/// Most streams drained at once after client disconnects; beyond this the relay
/// records partial usage instead of holding more upstream connections open.
pub const MAX_CONCURRENT_DRAINS: usize = 256;

/// Ids of health events this process published, so that reading them back from the
/// log does not re-apply stale states over newer local observations.
#[derive(Default)]
pub struct OwnEvents {
    inner: Mutex<(HashSet<Uuid>, VecDeque<Uuid>)>,
}

const OWN_EVENTS_KEPT: usize = 16_384;

impl OwnEvents {
    /// Remembers an id.
    pub fn remember(&self, id: Uuid) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *g;
        if set.insert(id) {
            order.push_back(id);
            if order.len() > OWN_EVENTS_KEPT {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    /// Whether this process published `id`.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .contains(id)
    }
}

/// Proxy state shared by every request.
pub struct ProxyState {
    /// The account pool.
    pub pool: Arc<Pool>,
    /// HTTP clients.
    pub upstreams: Upstreams,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Health events published by this process.
    pub own_events: Arc<OwnEvents>,
    /// Streams currently being drained after a disconnect.
    pub drains: AtomicUsize,
    /// Invalid-key requests per client address and minute.
    pub auth_failures: crate::throttle::FailureWindows<std::net::IpAddr>,
    /// The same per address and reason, deciding when an aggregated event is due.
    pub auth_failure_events:
        crate::throttle::FailureWindows<(std::net::IpAddr, schema::AuthFailureReason)>,
    /// Log position read just before the start-up account load: the admin watcher
    /// follows account changes from here, so none logged meanwhile is missed.
    pub accounts_as_of: std::sync::atomic::AtomicU64,
}

impl ProxyState {
    /// Builds the proxy state; health transitions are published through `publisher`.
    pub fn new(
        config: &crate::config::ServeConfig,
        egress: crate::egress::EgressPolicy,
        publisher: Publisher,
    ) -> Self {
        let own_events = Arc::new(OwnEvents::default());
        let own = own_events.clone();
        let sink: HealthSink = Arc::new(move |ev| {
            let envelope =
                Envelope::new(Uuid::now_v7(), Utc::now(), Event::AccountHealthChanged(ev));
            own.remember(envelope.id);
            tracing::info!(event = ?envelope.event, "account health changed");
            publisher.publish(envelope);
        });
        Self {
            pool: Arc::new(Pool::new(
                Cooldowns::from_config(config),
                Duration::from_secs(config.sticky_session_ttl_secs),
                sink,
            )),
            upstreams: Upstreams::new(config, egress),
            metrics: Arc::new(Metrics::new()),
            own_events,
            drains: AtomicUsize::new(0),
            auth_failures: crate::throttle::FailureWindows::new(Duration::from_secs(60)),
            auth_failure_events: crate::throttle::FailureWindows::new(Duration::from_secs(60)),
            accounts_as_of: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Reloads the pool's accounts from the database.
pub async fn reload_accounts(state: &ProxyDeps) -> Result<(), crate::accounts::AccountStoreError> {
    let accounts = state.accounts.list().await?;
    state.proxy.pool.reload(accounts);
    Ok(())
}

/// The proxy routes (merged into the server's router).
pub fn routes<S>() -> Router<S>
where
    ProxyDeps: axum::extract::FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    let mut r = Router::new()
        // Claude Code 2.1.112 probes `HEAD {base}`, which is `/api` for a prefixed base.
        .route("/api", head(hello))
        .route("/metrics", get(metrics_guarded));
    for prefix in ["", "/api"] {
        r = r
            .route(&format!("{prefix}/v1/messages"), post(messages))
            .route(
                &format!("{prefix}/v1/messages/count_tokens"),
                post(count_tokens),
            )
            .route(&format!("{prefix}/v1/models"), get(models))
            .route(&format!("{prefix}/v1/models/{{id}}"), get(model))
            .route(&format!("{prefix}/api/hello"), head(hello).get(hello));
    }
    r
}

/// Unknown paths get Anthropic's 404 shape, so SDKs report them sensibly.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("Not found: {}", uri.path())).into_response()
}

/// `HEAD /` and `HEAD /api/hello`: Claude Code's preconnect probe.
pub async fn hello() -> StatusCode {
    StatusCode::OK
}

async fn messages(State(state): State<ProxyDeps>, req: Request) -> Response {
    handle(state, Endpoint::Messages, req).await
}

async fn count_tokens(State(state): State<ProxyDeps>, req: Request) -> Response {
    handle(state, Endpoint::CountTokens, req).await
}

async fn models(State(state): State<ProxyDeps>, req: Request) -> Response {
    handle(state, Endpoint::Models, req).await
}

async fn model(State(state): State<ProxyDeps>, req: Request) -> Response {
    handle(state, Endpoint::Model, req).await
}

/// `GET /metrics`.
/// `GET /metrics` on the main listener: only with `Authorization: Bearer
/// <METRICS_TOKEN>` (it names every account); without a configured token, not at all
/// (serve it on `METRICS_ADDR` instead).
async fn metrics_guarded(State(state): State<ProxyDeps>, headers: http::HeaderMap) -> Response {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let allowed = state.config.metrics_token.as_deref().is_some_and(|t| {
        !t.is_empty()
            && t.len() == presented.len()
            && t.bytes()
                .zip(presented.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !allowed {
        return (
            StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            "metrics need Authorization: Bearer <METRICS_TOKEN>, or METRICS_ADDR\n",
        )
            .into_response();
    }
    metrics(State(state)).await
}

/// The metrics router for `METRICS_ADDR`, a separate listener that needs no token.
pub fn metrics_router(state: ProxyDeps) -> axum::Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<ProxyDeps>) -> Response {
    use std::fmt::Write as _;
    let mut extra = String::new();
    let stats = state.publisher.stats();
    let _ = write!(
        extra,
        "# HELP relay_event_queue_depth Events waiting for the event log.\n# TYPE relay_event_queue_depth gauge\nrelay_event_queue_depth {}\n\
         # HELP relay_event_spool_events Events spooled locally while the log is unreachable.\n# TYPE relay_event_spool_events gauge\nrelay_event_spool_events {}\n\
         # HELP relay_event_spool_bytes Bytes in the local event spool.\n# TYPE relay_event_spool_bytes gauge\nrelay_event_spool_bytes {}\n\
         # HELP relay_events_published_total Events acknowledged by the log.\n# TYPE relay_events_published_total counter\nrelay_events_published_total {}\n\
         # HELP relay_event_quarantine_events Events the log refused for good, set aside.\n# TYPE relay_event_quarantine_events gauge\nrelay_event_quarantine_events {}\n\
         # HELP relay_journal_records_total Records written to the local event journal.\n# TYPE relay_journal_records_total counter\nrelay_journal_records_total {}\n\
         # HELP relay_journal_write_errors_total Failed journal writes (requests are refused while writes fail).\n# TYPE relay_journal_write_errors_total counter\nrelay_journal_write_errors_total {}\n\
         # HELP relay_journal_syncs_total Journal fdatasync calls.\n# TYPE relay_journal_syncs_total counter\nrelay_journal_syncs_total {}\n\
         # HELP relay_journal_open_attempts Upstream attempts journalled and not yet ended.\n# TYPE relay_journal_open_attempts gauge\nrelay_journal_open_attempts {}\n",
        stats.queue_depth, stats.spool_events, stats.spool_bytes, stats.published_total, stats.quarantine_events,
        stats.journal.records_total, stats.journal.write_errors_total, stats.journal.syncs_total, stats.journal.open_attempts
    );
    extra.push_str("# HELP relay_account_state Health state of each upstream account (1 = current).\n# TYPE relay_account_state gauge\n");
    let snapshot = state.proxy.pool.snapshot();
    let now = Utc::now();
    for slot in &snapshot.slots {
        let h = slot.rt.health();
        let state_name = if h.available(now) {
            "healthy"
        } else {
            crate::metrics::health_name(h.state)
        };
        let _ = writeln!(
            extra,
            "relay_account_state{{account=\"{}\",name=\"{}\",state=\"{}\"}} 1",
            slot.account.id,
            crate::metrics::label(&slot.account.name),
            state_name
        );
    }
    extra.push_str("# HELP relay_account_inflight Requests in flight per upstream account.\n# TYPE relay_account_inflight gauge\n");
    for slot in &snapshot.slots {
        let _ = writeln!(
            extra,
            "relay_account_inflight{{account=\"{}\"}} {}",
            slot.account.id,
            slot.rt.inflight()
        );
    }
    let body = state.proxy.metrics.render(&extra);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

/// A fresh relay request id.
fn new_request_id() -> String {
    format!("req_relay_{}", Uuid::now_v7().simple())
}

/// Every proxied request: authenticate, admit, validate, then forward in a task of
/// its own so that a client leaving early cannot cancel the upstream exchange (its
/// usage is still recorded).
async fn handle(state: ProxyDeps, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let request_id = new_request_id();
    let (parts, body) = req.into_parts();

    let presented = request::credential(&parts.headers);
    let client_ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let scope = client_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    // An address that keeps presenting bad keys is answered without a lookup.
    if let Some(wait) =
        state
            .proxy
            .auth_failures
            .blocked(&scope, AUTH_FAILURES_PER_MINUTE, Instant::now())
    {
        state
            .proxy
            .metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return context::error_response(
            ApiError::rate_limited(
                "relay: too many requests with an invalid API key from this address",
                Some(wait),
            ),
            &request_id,
        );
    }
    let key = match state.keys.authenticate(presented, Utc::now()).await {
        Ok(k) => k,
        Err(e) => {
            state
                .proxy
                .metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(reason) = e.audit_reason() {
                let now = Instant::now();
                let from_addr = state.proxy.auth_failures.fail(&scope, now);
                // Recorded aggregated: the 1st, 10th, 100th … failure of an address
                // for a reason in a minute, so a flood cannot fill the event log.
                let n = state.proxy.auth_failure_events.fail(&(scope, reason), now);
                if crate::throttle::is_milestone(n) {
                    let ev = Envelope::new(
                        Uuid::now_v7(),
                        Utc::now(),
                        Event::AuthFailed(AuthFailed {
                            reason,
                            endpoint: endpoint.as_str().to_owned(),
                            key_prefix: request::loggable_prefix(presented),
                            client_addr: client_ip.map(|ip| ip.to_string()),
                            failures_in_window: Some(u64::from(n)),
                        }),
                    )
                    .with_request(request_id.clone());
                    state.publisher.publish(ev);
                }
                if from_addr > AUTH_FAILURES_PER_MINUTE {
                    return context::error_response(
                        ApiError::rate_limited(
                            "relay: too many requests with an invalid API key from this address",
                            state.proxy.auth_failures.blocked(
                                &scope,
                                AUTH_FAILURES_PER_MINUTE,
                                now,
                            ),
                        ),
                        &request_id,
                    );
                }
                return context::error_response(
                    ApiError::authentication(e.to_string()),
                    &request_id,
                );
            }
            tracing::error!("key store unavailable during authentication");
            return context::error_response(
                ApiError::unavailable(
                    "relay: the key store is unavailable; retry shortly",
                    Some(1),
                ),
                &request_id,
            );
        }
    };

    let admission = match state.publisher.admit() {
        Ok(a) => a,
        Err(bp) => {
            tracing::warn!(reason = %bp, "refusing request: event log backlogged");
            return context::error_response(
                ApiError::unavailable(
                    "relay: the event log is unavailable or backlogged; the request was not accepted",
                    Some(5),
                ),
                &request_id,
            );
        }
    };

    let mut ctx = RequestCtx::new(state.clone(), request_id, key, endpoint, started, admission);

    let body_bytes = if endpoint.has_body() {
        match read_body(&state, &parts.headers, body).await {
            Ok(b) => b,
            Err(e) => return ctx.reject(e),
        }
    } else {
        bytes::Bytes::new()
    };

    let mut session: Option<String> = request::session_header(&parts.headers).map(str::to_owned);
    let mut max_tokens = None;
    let mut tools = (0, 0);
    if endpoint.has_body() {
        match request::parse_body(&body_bytes) {
            Ok(info) => {
                ctx.model = Some(info.model.into_owned());
                ctx.stream = info.stream;
                max_tokens = info.max_tokens;
                tools = (info.max_searches, info.tool_input_tokens);
                if session.is_none() {
                    session = info.session;
                }
            }
            Err(e) => return ctx.reject(e),
        }
    }
    ctx.session = session;

    // Tenant limits, before anything is sent upstream.
    let mut limit_headers = None;
    if !ctx.key.limits.is_empty() || ctx.key.tenant_budget.is_some() {
        let now = Utc::now();
        let reservation = match (&ctx.model, endpoint.records_usage()) {
            (Some(m), true) => crate::limits::reservation_nanos(
                state.limiter.prices(),
                m,
                crate::limits::Worst {
                    body_bytes: body_bytes.len(),
                    max_tokens: max_tokens.unwrap_or(0),
                    searches: tools.0,
                    tool_input_tokens: tools.1,
                },
                now.timestamp_millis(),
            ),
            _ => 0,
        };
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let key = ctx.key.clone();
        let admitted = state
            .limiter
            .admit(
                &key,
                &key.limits,
                key.tenant_budget.as_ref(),
                ctx.model.as_deref(),
                ip,
                reservation,
                &ctx.request_id,
                now,
            )
            .await;
        match admitted {
            Ok(permit) => {
                limit_headers = Some(limit_header_values(&permit));
                ctx.hold(permit);
            }
            Err(rejection) => return ctx.reject_limit(rejection),
        }
    }

    let tracker = state.tracker.clone();
    // Everything the request logs from here on carries its id (LOG_FORMAT=json too).
    let span = tracing::info_span!("request", request_id = %ctx.request_id);
    let task = tracker.spawn(tracing::Instrument::instrument(
        forward::forward(ctx, parts, body_bytes),
        span,
    ));
    match task.await {
        Ok(mut resp) => {
            if let Some(values) = limit_headers {
                let h = resp.headers_mut();
                for (name, value) in values {
                    h.insert(name, value);
                }
            }
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "forwarding task failed");
            context::error_response(ApiError::internal(), "")
        }
    }
}

/// The `x-relay-*` headers that tell a client where its key stands.
fn limit_header_values(
    p: &crate::limits::engine::Permit,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut out = Vec::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            out.push((http::HeaderName::from_static(name), v));
        }
    };
    if let Some((limit, left)) = &p.remaining {
        put("x-relay-budget-remaining-usd", left.to_string());
        put("x-relay-budget-limit", limit.as_str().to_owned());
    }
    if let Some(r) = p.rpm {
        put("x-relay-ratelimit-rpm", r.to_string());
    }
    if let Some(c) = p.max_concurrency {
        put("x-relay-concurrency-limit", c.to_string());
    }
    out
}

/// Reads the body under the size limit, refusing non-JSON content types first.
async fn read_body(
    state: &ProxyDeps,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<bytes::Bytes, ApiError> {
    if !request::is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    let max = state.config.max_body_bytes;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::too_large(max));
    }
    let limit = std::time::Duration::from_secs(state.config.body_read_timeout_secs.max(1));
    let read = match tokio::time::timeout(limit, axum::body::to_bytes(body, max)).await {
        Ok(r) => r,
        Err(_) => {
            return Err(ApiError::from_status(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs()
                ),
            ))
        }
    };
    match read {
        Ok(b) => Ok(b),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(ApiError::too_large(max))
            } else {
                Err(ApiError::invalid_request("could not read the request body"))
            }
        }
    }
}
