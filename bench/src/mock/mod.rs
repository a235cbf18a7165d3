//! A faithful mock of the Anthropic API (the upstream the relay talks to), on hyper 1.
//!
//! Runs in-process for tests ([`MockUpstream::start`], bound to `127.0.0.1:0`, stopped
//! when dropped) or out-of-process for benchmarks (the `mock-upstream` binary).
//!
//! Routes: `POST /v1/messages` and `/v1/messages/count_tokens` (any query string, e.g.
//! `?beta=true`), `GET /v1/models[?limit&after_id]`, `GET /v1/models/{id}`,
//! `HEAD /api/hello`, `HEAD /`, `POST /v1/oauth/token`, `GET /api/oauth/profile`,
//! `GET /api/oauth/usage`. Anything else is a 404 in Anthropic's error shape.
//!
//! Protocol rules follow `reference/anthropic-api.md` §7; see `bench/MOCK_API.md` for the
//! short version. Layout: [`usage`] (deterministic token accounting), [`render`] (JSON and
//! SSE bytes), [`body`] (paced/interruptible bodies), [`script`] (per-credential steps),
//! [`oauth`] (token endpoint stubs).

pub mod body;
pub mod oauth;
pub mod render;
pub mod script;
pub mod usage;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use body::{stamp_micros, unix_micros, DroppedOnPurpose, EventGate, Interrupt, MockBody};
pub use oauth::{pkce_challenge, CLAUDE_CODE_CLIENT_ID};
pub use render::{sse_transcript, ResponsePlan, SseFraming};
pub use script::Step;
pub use usage::{
    expected_usage, prompt_tokens, server_tool_uses, CacheSplit, MockUsage, ServerTool,
};

use body::EventStream;
use render::Pace;

/// Default number of `text_delta` events per stream.
pub const DEFAULT_TEXT_CHUNKS: usize = 6;
/// Default request body limit (the API's 32 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The `anthropic-beta` name OAuth tokens require.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// API versions the mock accepts.
pub const API_VERSIONS: [&str; 2] = ["2023-06-01", "2026-10-21"];

/// Which rate-limit header family responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitMode {
    /// Standard family for API keys, unified family for OAuth tokens.
    #[default]
    Auto,
    /// Always `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*`.
    Standard,
    /// Always `anthropic-ratelimit-unified-*`.
    Unified,
    /// No rate-limit headers.
    None,
}

/// Mock settings. `MockConfig::default()` is what tests want; [`MockConfig::fast`] is
/// the benchmark profile.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Bodies above this many bytes get 413 `request_too_large`.
    pub max_body_bytes: usize,
    /// `text_delta` events per stream (and words in the text block).
    pub text_chunks: usize,
    /// Delay before the response head of every `/v1/messages` answer.
    pub first_byte_delay: Duration,
    /// Pacing of deltas: the n-th delta is due at `head + n × interval` (0 = no pacing).
    pub event_interval: Duration,
    /// Restate input/cache usage in `message_delta` with final values that differ from
    /// the provisional `message_start` values (toggle at runtime too).
    pub restate_usage: bool,
    /// Open every SSE event with a `: t=<µs since the Unix epoch>` comment taken when the
    /// event is handed to hyper (benchmarks measure per-event delay with it).
    pub stamp_events: bool,
    /// Rate-limit header family (per-credential overrides at runtime).
    pub rate_limit_headers: RateLimitMode,
    /// A 429 carries the family in its rejected state, as the API sends it: the
    /// standard family with `requests-remaining: 0` and its reset at `retry-after`; the
    /// unified family with `status: rejected`, the representative claim, and that
    /// claim's window rejected with its reset at `retry-after` (a step's own headers win).
    /// Off: every response carries the healthy family (toggle at runtime too).
    pub realistic_rate_limits: bool,
    /// How SSE bytes are framed (toggle at runtime too).
    pub sse_framing: SseFraming,
    /// How usage reports the cache-write split by lifetime.
    pub cache_split: CacheSplit,
    /// `usage.service_tier` of every answer (toggle at runtime too).
    pub service_tier: String,
    /// A beta name answered with the "Unexpected value(s)" 400.
    pub unknown_beta: Option<String>,
    /// `anthropic-organization-id` header value.
    pub organization_id: String,
    /// Keep every request in the log ([`MockUpstream::requests`]).
    pub record_requests: bool,
    /// Skip body parsing and validation: answer every messages request with pre-rendered
    /// bodies (fixed realistic usage), detecting `"stream":true` by byte search.
    pub fast: bool,
    /// `client_id` the token endpoint expects.
    pub oauth_client_id: String,
    /// `expires_in` of minted OAuth tokens.
    pub oauth_expires_in: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            text_chunks: DEFAULT_TEXT_CHUNKS,
            first_byte_delay: Duration::ZERO,
            event_interval: Duration::ZERO,
            restate_usage: false,
            stamp_events: false,
            rate_limit_headers: RateLimitMode::Auto,
            realistic_rate_limits: true,
            sse_framing: SseFraming::default(),
            cache_split: CacheSplit::default(),
            service_tier: "standard".to_owned(),
            unknown_beta: None,
            organization_id: "00000000-0000-4000-8000-00000000a11c".to_owned(),
            record_requests: true,
            fast: false,
            oauth_client_id: CLAUDE_CODE_CLIENT_ID.to_owned(),
            oauth_expires_in: 28800,
        }
    }
}

impl MockConfig {
    /// Benchmark profile: fast path, no request log.
    pub fn fast() -> Self {
        MockConfig {
            fast: true,
            record_requests: false,
            ..MockConfig::default()
        }
    }
}

/// The usage every fast-mode response reports (a realistic Claude Code turn).
pub const FAST_USAGE: MockUsage = MockUsage {
    input_tokens: 1200,
    output_tokens: 96,
    cache_read_input_tokens: 18000,
    cache_creation_5m: 600,
    cache_creation_1h: 0,
    web_search_requests: 0,
    web_fetch_requests: 0,
};

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The exact body bytes.
    pub body: Bytes,
    /// The credential presented (`x-api-key` wins over `Authorization: Bearer`).
    pub credential: Option<String>,
}

impl RecordedRequest {
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// [`MockUpstream::wait_for_requests`] timed out.
#[derive(Debug, thiserror::Error)]
#[error("mock upstream saw {seen} requests, wanted {wanted}")]
pub struct WaitTimeout {
    /// Requests seen when the deadline passed.
    pub seen: usize,
    /// Requests wanted.
    pub wanted: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredKind {
    ApiKey,
    OAuth,
}

struct Cred {
    value: String,
    kind: CredKind,
}

/// Shared server state.
struct State {
    config: MockConfig,
    restate: AtomicBool,
    realistic_429: AtomicBool,
    framing: Mutex<SseFraming>,
    service_tier: Mutex<String>,
    seq: AtomicU64,
    scripts: Mutex<HashMap<String, VecDeque<Step>>>,
    defaults: Mutex<HashMap<String, Step>>,
    rate_limit_modes: Mutex<HashMap<String, RateLimitMode>>,
    rate_limit_overridden: AtomicBool,
    log: Mutex<Vec<RecordedRequest>>,
    logged: watch::Sender<usize>,
    oauth: Mutex<oauth::OAuthState>,
    standard_headers: Vec<(HeaderName, HeaderValue)>,
    unified_headers: Vec<(HeaderName, HeaderValue)>,
    org_header: HeaderValue,
    five_hour_reset: String,
    seven_day_reset: String,
    /// Fast-mode bodies, rendered once.
    fast_json: Bytes,
    fast_events: Arc<[(Bytes, Pace)]>,
    /// Set once by [`MockUpstream::gate_events`]; streams started after hold each event.
    gate: OnceLock<EventGate>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn header_pairs(pairs: &[(&str, String)]) -> Vec<(HeaderName, HeaderValue)> {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect()
}

impl State {
    fn new(config: MockConfig) -> State {
        let now = chrono::Utc::now();
        let rfc = |secs: i64| {
            (now + chrono::Duration::seconds(secs))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        };
        let epoch = |secs: i64| (now.timestamp() + secs).to_string();
        let minute = rfc(60);
        let standard_headers = header_pairs(&[
            ("anthropic-ratelimit-requests-limit", "4000".into()),
            ("anthropic-ratelimit-requests-remaining", "3999".into()),
            ("anthropic-ratelimit-requests-reset", minute.clone()),
            ("anthropic-ratelimit-tokens-limit", "2000000".into()),
            ("anthropic-ratelimit-tokens-remaining", "1998000".into()),
            ("anthropic-ratelimit-tokens-reset", minute.clone()),
            ("anthropic-ratelimit-input-tokens-limit", "1600000".into()),
            (
                "anthropic-ratelimit-input-tokens-remaining",
                "1599000".into(),
            ),
            ("anthropic-ratelimit-input-tokens-reset", minute.clone()),
            ("anthropic-ratelimit-output-tokens-limit", "400000".into()),
            (
                "anthropic-ratelimit-output-tokens-remaining",
                "400000".into(),
            ),
            ("anthropic-ratelimit-output-tokens-reset", minute),
        ]);
        let unified_headers = header_pairs(&[
            ("anthropic-ratelimit-unified-status", "allowed".into()),
            ("anthropic-ratelimit-unified-reset", epoch(5 * 3600)),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour".into(),
            ),
            ("anthropic-ratelimit-unified-5h-status", "allowed".into()),
            ("anthropic-ratelimit-unified-5h-utilization", "0.42".into()),
            ("anthropic-ratelimit-unified-5h-reset", epoch(5 * 3600)),
            ("anthropic-ratelimit-unified-7d-status", "allowed".into()),
            ("anthropic-ratelimit-unified-7d-utilization", "0.30".into()),
            ("anthropic-ratelimit-unified-7d-reset", epoch(7 * 86400)),
            (
                "anthropic-ratelimit-unified-overage-status",
                "rejected".into(),
            ),
            (
                "anthropic-ratelimit-unified-overage-disabled-reason",
                "org_level_disabled".into(),
            ),
        ]);
        let fast_plan = ResponsePlan {
            id: "msg_01MockFast0000000000000000".to_owned(),
            model: "claude-sonnet-4-6".to_owned(),
            thinking: false,
            tool: None,
            usage: FAST_USAGE,
            text_chunks: config.text_chunks.max(1),
            restate_usage: config.restate_usage,
            server_tools: Vec::new(),
            service_tier: config.service_tier.clone(),
            framing: config.sse_framing,
            cache_split: config.cache_split,
        };
        let org_header = HeaderValue::from_str(&config.organization_id)
            .unwrap_or_else(|_| HeaderValue::from_static("mock-org"));
        State {
            restate: AtomicBool::new(config.restate_usage),
            realistic_429: AtomicBool::new(config.realistic_rate_limits),
            framing: Mutex::new(config.sse_framing),
            service_tier: Mutex::new(config.service_tier.clone()),
            seq: AtomicU64::new(0),
            scripts: Mutex::new(HashMap::new()),
            defaults: Mutex::new(HashMap::new()),
            rate_limit_modes: Mutex::new(HashMap::new()),
            rate_limit_overridden: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            logged: watch::channel(0).0,
            oauth: Mutex::new(oauth::OAuthState::default()),
            standard_headers,
            unified_headers,
            org_header,
            five_hour_reset: rfc(5 * 3600),
            seven_day_reset: rfc(7 * 86400),
            fast_json: render::message_json(&fast_plan),
            fast_events: render::sse_events(&fast_plan).into(),
            gate: OnceLock::new(),
            config,
        }
    }

    fn next_step(&self, credential: &str) -> Step {
        if let Some(step) = lock(&self.scripts)
            .get_mut(credential)
            .and_then(VecDeque::pop_front)
        {
            return step;
        }
        lock(&self.defaults)
            .get(credential)
            .cloned()
            .unwrap_or(Step::Ok)
    }

    fn request_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("req_011CMock{n:014}")
    }

    fn plan(&self, body: &Value) -> ResponsePlan {
        let mut plan = ResponsePlan::for_request(
            body,
            self.config.text_chunks,
            self.restate.load(Ordering::Relaxed),
        );
        plan.framing = *lock(&self.framing);
        plan.cache_split = self.config.cache_split;
        plan.service_tier.clone_from(&lock(&self.service_tier));
        plan
    }
}

/// A running mock upstream. Stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts a mock with the default (test) configuration on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    #[expect(
        clippy::expect_used,
        reason = "test helper with an infallible signature; binding 127.0.0.1:0 only fails when the OS is out of ports"
    )]
    pub async fn start() -> MockUpstream {
        Self::start_with(MockConfig::default())
            .await
            .expect("bind mock upstream on 127.0.0.1:0")
    }

    /// Starts a mock with `config` on `127.0.0.1:0`.
    pub async fn start_with(config: MockConfig) -> std::io::Result<MockUpstream> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a mock with `config` on `addr`.
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockUpstream> {
        // A deep accept backlog: benchmarks open thousands of connections at once.
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config));
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(MockUpstream { addr, state, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and closes every open connection.
    pub async fn shutdown(self) {
        self.task.abort();
        // Wait for the accept loop (and with it every connection task) to be dropped.
        let _ = (&mut { self }.task).await;
    }

    /// Appends steps to `credential`'s FIFO (one consumed per messages request).
    pub fn script(&self, credential: &str, steps: impl IntoIterator<Item = Step>) {
        lock(&self.state.scripts)
            .entry(credential.to_owned())
            .or_default()
            .extend(steps);
    }

    /// The step used for `credential` when its FIFO is empty.
    pub fn set_default(&self, credential: &str, step: Step) {
        lock(&self.state.defaults).insert(credential.to_owned(), step);
    }

    /// Back to [`Step::Ok`] as `credential`'s default.
    pub fn clear_default(&self, credential: &str) {
        lock(&self.state.defaults).remove(credential);
    }

    /// Overrides the rate-limit header family for `credential`.
    pub fn set_rate_limit_mode(&self, credential: &str, mode: RateLimitMode) {
        lock(&self.state.rate_limit_modes).insert(credential.to_owned(), mode);
        self.state
            .rate_limit_overridden
            .store(true, Ordering::Relaxed);
    }

    /// From now on, every SSE event of every stream waits until the returned gate releases
    /// it ([`EventGate::release`], one event per permit), so a test controls when the
    /// mock writes each event. Calling it again returns the same gate.
    pub fn gate_events(&self) -> EventGate {
        self.state.gate.get_or_init(EventGate::new).clone()
    }

    /// Turns restated usage in `message_delta` on or off.
    pub fn set_restate_usage(&self, on: bool) {
        self.state.restate.store(on, Ordering::Relaxed);
    }

    /// Turns the rejected rate-limit headers of 429s on or off
    /// ([`MockConfig::realistic_rate_limits`]).
    pub fn set_realistic_rate_limits(&self, on: bool) {
        self.state.realistic_429.store(on, Ordering::Relaxed);
    }

    /// Frames the SSE bytes of streams started from now on this way.
    pub fn set_sse_framing(&self, framing: SseFraming) {
        *lock(&self.state.framing) = framing;
    }

    /// Answers from now on with this `usage.service_tier` (`standard`, `batch`, …).
    pub fn set_service_tier(&self, tier: &str) {
        *lock(&self.state.service_tier) = tier.to_owned();
    }

    /// Every recorded request, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.log).clone()
    }

    /// Recorded requests that presented `credential`.
    pub fn requests_for(&self, credential: &str) -> Vec<RecordedRequest> {
        lock(&self.state.log)
            .iter()
            .filter(|r| r.credential.as_deref() == Some(credential))
            .cloned()
            .collect()
    }

    /// Forgets the request log (the count keeps going).
    pub fn clear_requests(&self) {
        lock(&self.state.log).clear();
    }

    /// Requests recorded so far (since start, not reset by [`Self::clear_requests`]).
    pub fn request_count(&self) -> usize {
        *self.state.logged.borrow()
    }

    /// Waits until at least `n` requests were recorded since start; returns the log.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>, WaitTimeout> {
        let mut rx = self.state.logged.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.requests()),
            _ => Err(WaitTimeout {
                seen: self.request_count(),
                wanted: n,
            }),
        }
    }

    /// The plan (content, ids, usage) this mock will answer `body` with.
    pub fn response_plan(&self, body: &Value) -> ResponsePlan {
        self.state.plan(body)
    }

    /// The exact SSE body frames this mock (with its current settings) sends for `body`:
    /// one per event unless [`SseFraming`] reshapes them; concatenated, the bytes on the
    /// wire.
    pub fn sse_transcript(&self, body: &Value) -> Vec<Bytes> {
        render::sse_events(&self.state.plan(body))
            .into_iter()
            .map(|(b, _)| b)
            .collect()
    }

    /// The exact non-streaming body this mock sends for `body`.
    pub fn message_body(&self, body: &Value) -> Bytes {
        render::message_json(&self.state.plan(body))
    }

    /// Registers an authorization code for the token endpoint, bound to a PKCE S256
    /// `code_challenge`.
    pub fn register_oauth_code(&self, code: &str, code_challenge: &str) {
        lock(&self.state.oauth).register_code(code, code_challenge);
    }

    /// Registers a refresh token as valid for the `refresh_token` grant.
    pub fn register_refresh_token(&self, token: &str) {
        lock(&self.state.oauth).register_refresh_token(token);
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connection tasks live in this set, so aborting the accept loop drops them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The credential a request presents: `x-api-key` wins over `Authorization: Bearer`.
fn presented_credential(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

fn beta_list(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Response decoration and construction.
impl State {
    fn respond(
        &self,
        status: StatusCode,
        content_type: &'static str,
        body: MockBody,
        cred: Option<&Cred>,
        request_id: &str,
        extra: &[(String, String)],
    ) -> Response<MockBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        if !content_type.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("request-id", v);
        }
        h.insert("anthropic-organization-id", self.org_header.clone());
        let mode = match cred {
            Some(c) => {
                // Skips the lock on the hot path when no override was ever set.
                let over = if self.rate_limit_overridden.load(Ordering::Relaxed) {
                    lock(&self.rate_limit_modes).get(&c.value).copied()
                } else {
                    None
                };
                match over.unwrap_or(self.config.rate_limit_headers) {
                    RateLimitMode::Auto if c.kind == CredKind::OAuth => RateLimitMode::Unified,
                    RateLimitMode::Auto => RateLimitMode::Standard,
                    m => m,
                }
            }
            None => RateLimitMode::None,
        };
        let family = match mode {
            RateLimitMode::Unified => &self.unified_headers[..],
            RateLimitMode::Standard | RateLimitMode::Auto => &self.standard_headers[..],
            RateLimitMode::None => &[],
        };
        for (k, v) in family {
            h.insert(k.clone(), v.clone());
        }
        if status == StatusCode::TOO_MANY_REQUESTS
            && mode != RateLimitMode::None
            && self.realistic_429.load(Ordering::Relaxed)
        {
            for (k, v) in rejected_headers(mode, extra) {
                h.insert(k, v);
            }
        }
        for (k, v) in extra {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        }
        resp
    }

    fn json(
        &self,
        status: StatusCode,
        body: Bytes,
        cred: Option<&Cred>,
        request_id: &str,
    ) -> Response<MockBody> {
        self.respond(
            status,
            "application/json",
            body.into(),
            cred,
            request_id,
            &[],
        )
    }

    fn error(
        &self,
        status: u16,
        error_type: &str,
        message: &str,
        cred: Option<&Cred>,
        request_id: &str,
        extra: &[(String, String)],
    ) -> Response<MockBody> {
        let body = json!({
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        });
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.respond(
            status,
            "application/json",
            Bytes::from(body.to_string()).into(),
            cred,
            request_id,
            extra,
        )
    }
}

/// Seconds until a 429's limit resets: its `retry-after`, else a minute.
fn rejection_secs(extra: &[(String, String)]) -> u64 {
    extra
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(60)
}

/// The rate-limit family of a 429 in its rejected state, reset `retry-after` from now
/// (see [`MockConfig::realistic_rate_limits`]); a step's own rate-limit headers replace
/// this decoration.
fn rejected_headers(
    mode: RateLimitMode,
    extra: &[(String, String)],
) -> Vec<(HeaderName, HeaderValue)> {
    let secs = rejection_secs(extra);
    let now = chrono::Utc::now();
    let reset_at = now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(60));
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if !extra
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
    {
        pairs.push(("retry-after", secs.to_string()));
    }
    // A step that describes its rejection itself (e.g. [`Step::claim_rejected`]) keeps
    // the other windows healthy.
    let described = extra
        .iter()
        .any(|(k, _)| k.to_ascii_lowercase().starts_with("anthropic-ratelimit-"));
    match mode {
        _ if described => {}
        RateLimitMode::Unified => {
            let reset = reset_at.timestamp().to_string();
            pairs.extend([
                ("anthropic-ratelimit-unified-status", "rejected".to_owned()),
                ("anthropic-ratelimit-unified-reset", reset.clone()),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "five_hour".to_owned(),
                ),
                (
                    "anthropic-ratelimit-unified-5h-status",
                    "rejected".to_owned(),
                ),
                (
                    "anthropic-ratelimit-unified-5h-utilization",
                    "1.0".to_owned(),
                ),
                ("anthropic-ratelimit-unified-5h-reset", reset),
            ]);
        }
        RateLimitMode::Standard | RateLimitMode::Auto => {
            pairs.extend([
                ("anthropic-ratelimit-requests-remaining", "0".to_owned()),
                (
                    "anthropic-ratelimit-requests-reset",
                    reset_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
            ]);
        }
        RateLimitMode::None => {}
    }
    header_pairs(&pairs)
}

/// Endpoints the mock serves.
enum Route {
    Hello,
    Messages,
    CountTokens,
    Models,
    Model(String),
    OAuthToken,
    OAuthProfile,
    OAuthUsage,
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    match (method, path) {
        (&Method::HEAD, "/" | "/api/hello") => Route::Hello,
        (&Method::POST, "/v1/messages") => Route::Messages,
        (&Method::POST, "/v1/messages/count_tokens") => Route::CountTokens,
        (&Method::GET, "/v1/models") => Route::Models,
        (&Method::GET, p) if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            Route::Model(p["/v1/models/".len()..].to_owned())
        }
        (&Method::POST, "/v1/oauth/token") => Route::OAuthToken,
        (&Method::GET, "/api/oauth/profile") => Route::OAuthProfile,
        (&Method::GET, "/api/oauth/usage") => Route::OAuthUsage,
        _ => Route::NotFound,
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, DroppedOnPurpose> {
    let arrived = Instant::now();
    let (parts, incoming) = req.into_parts();
    let request_id = state.request_id();
    let limit = state.config.max_body_bytes;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = if declared.is_some_and(|n| n > limit) {
        None
    } else {
        match Limited::new(incoming, limit).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => None,
            // The client went away mid-body: nothing to answer.
            Err(_) => return Err(DroppedOnPurpose),
        }
    };
    let credential = presented_credential(&parts.headers);

    if state.config.record_requests {
        lock(&state.log).push(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone().unwrap_or_default(),
            credential: credential.clone(),
        });
        state.logged.send_modify(|c| *c += 1);
    }

    let Some(body) = body else {
        return Ok(state.error(
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            None,
            &request_id,
            &[],
        ));
    };

    match route(&parts.method, parts.uri.path()) {
        Route::Hello => Ok(state.respond(
            StatusCode::OK,
            "",
            MockBody::empty(),
            None,
            &request_id,
            &[],
        )),
        Route::Messages => {
            messages(
                &state,
                &parts.headers,
                credential,
                body,
                &request_id,
                arrived,
                false,
            )
            .await
        }
        Route::CountTokens => {
            messages(
                &state,
                &parts.headers,
                credential,
                body,
                &request_id,
                arrived,
                true,
            )
            .await
        }
        Route::Models | Route::Model(_) => {
            let cred = match authenticate(&state, &parts.headers, credential, &request_id) {
                Ok(c) => c,
                Err(resp) => return Ok(*resp),
            };
            Ok(models(
                &state,
                &parts.uri,
                route(&parts.method, parts.uri.path()),
                &cred,
                &request_id,
            ))
        }
        Route::OAuthToken => {
            let result = lock(&state.oauth).token(
                &body,
                &state.config.oauth_client_id,
                state.config.oauth_expires_in,
            );
            let (status, value) = match result {
                Ok(v) => (StatusCode::OK, v),
                Err((s, v)) => (
                    StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST),
                    v,
                ),
            };
            Ok(state.json(status, Bytes::from(value.to_string()), None, &request_id))
        }
        Route::OAuthProfile | Route::OAuthUsage => {
            let is_oauth = credential
                .as_deref()
                .is_some_and(|c| c.starts_with("sk-ant-oat01-"))
                && parts.headers.contains_key(http::header::AUTHORIZATION);
            if !is_oauth {
                return Ok(state.error(
                    401,
                    "authentication_error",
                    "OAuth token required",
                    None,
                    &request_id,
                    &[],
                ));
            }
            let value = if matches!(route(&parts.method, parts.uri.path()), Route::OAuthProfile) {
                oauth::profile()
            } else {
                oauth::usage(&state.five_hour_reset, &state.seven_day_reset)
            };
            Ok(state.json(
                StatusCode::OK,
                Bytes::from(value.to_string()),
                None,
                &request_id,
            ))
        }
        Route::NotFound => Ok(state.error(
            404,
            "not_found_error",
            &format!("Not found: {} {}", parts.method, parts.uri.path()),
            None,
            &request_id,
            &[],
        )),
    }
}

/// Checks the credential: API keys by prefix, OAuth tokens by prefix plus the OAuth beta.
fn authenticate(
    state: &State,
    headers: &HeaderMap,
    credential: Option<String>,
    request_id: &str,
) -> Result<Cred, Box<Response<MockBody>>> {
    let deny = |message: &str| {
        Box::new(state.error(401, "authentication_error", message, None, request_id, &[]))
    };
    let Some(value) = credential else {
        return Err(deny("x-api-key header is required"));
    };
    let via_x_api_key = headers.contains_key("x-api-key");
    if value.starts_with("sk-ant-api03-") {
        return Ok(Cred {
            value,
            kind: CredKind::ApiKey,
        });
    }
    if value.starts_with("sk-ant-oat01-") && !via_x_api_key {
        if !beta_list(headers).any(|b| b == OAUTH_BETA) {
            return Err(deny("OAuth authentication is currently not supported."));
        }
        return Ok(Cred {
            value,
            kind: CredKind::OAuth,
        });
    }
    Err(deny("invalid x-api-key"))
}

fn models(
    state: &State,
    uri: &http::Uri,
    route: Route,
    cred: &Cred,
    request_id: &str,
) -> Response<MockBody> {
    let all = model_list();
    match route {
        Route::Model(id) => match all.iter().find(|m| m["id"] == id.as_str()) {
            Some(m) => state.json(
                StatusCode::OK,
                Bytes::from(m.to_string()),
                Some(cred),
                request_id,
            ),
            None => state.error(
                404,
                "not_found_error",
                &format!("model: {id}"),
                Some(cred),
                request_id,
                &[],
            ),
        },
        _ => {
            let query = uri.query().unwrap_or("");
            let param = |k: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_owned())
            };
            let limit = param("limit")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(20)
                .clamp(1, 1000);
            let start = param("after_id")
                .and_then(|id| all.iter().position(|m| m["id"] == id.as_str()))
                .map_or(0, |i| i + 1);
            let page: Vec<&Value> = all.iter().skip(start).take(limit).collect();
            let body = json!({
                "data": page,
                "has_more": start + page.len() < all.len(),
                "first_id": page.first().map(|m| m["id"].clone()),
                "last_id": page.last().map(|m| m["id"].clone()),
            });
            state.json(
                StatusCode::OK,
                Bytes::from(body.to_string()),
                Some(cred),
                request_id,
            )
        }
    }
}

/// The models `GET /v1/models` lists.
pub fn model_list() -> Vec<Value> {
    [
        (
            "claude-opus-4-7",
            "Claude Opus 4.7",
            "2026-04-16T00:00:00Z",
            1_000_000,
            128_000,
        ),
        (
            "claude-sonnet-4-6",
            "Claude Sonnet 4.6",
            "2026-02-17T00:00:00Z",
            1_000_000,
            64_000,
        ),
        (
            "claude-haiku-4-5-20251001",
            "Claude Haiku 4.5",
            "2025-10-01T00:00:00Z",
            200_000,
            64_000,
        ),
    ]
    .into_iter()
    .map(|(id, name, created, input, output)| {
        json!({"type":"model","id":id,"display_name":name,"created_at":created,
               "max_input_tokens":input,"max_tokens":output})
    })
    .collect()
}

/// Whether the raw body asks for streaming (fast mode: no JSON parse).
fn bytes_say_stream(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"stream\":true").is_some()
        || memchr::memmem::find(body, b"\"stream\": true").is_some()
}

/// `POST /v1/messages` and `/v1/messages/count_tokens`.
async fn messages(
    state: &State,
    headers: &HeaderMap,
    credential: Option<String>,
    body: Bytes,
    request_id: &str,
    arrived: Instant,
    count_tokens: bool,
) -> Result<Response<MockBody>, DroppedOnPurpose> {
    let cred = match authenticate(state, headers, credential, request_id) {
        Ok(c) => c,
        Err(resp) => return Ok(*resp),
    };
    let bad = |message: &str| {
        Ok(state.error(
            400,
            "invalid_request_error",
            message,
            Some(&cred),
            request_id,
            &[],
        ))
    };
    let version = headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok());
    let Some(version) = version else {
        return bad("anthropic-version: header is required");
    };
    if !API_VERSIONS.contains(&version) {
        return bad(&format!("anthropic-version: invalid version `{version}`"));
    }

    // What the answer is made of: pre-rendered in fast mode, computed from the body else.
    let (stream, plan) = if state.config.fast {
        (!count_tokens && bytes_say_stream(&body), None)
    } else {
        if let Some(unknown) = &state.config.unknown_beta {
            if beta_list(headers).any(|b| b == unknown) {
                return bad(&format!(
                    "Unexpected value(s) `{unknown}` for the `anthropic-beta` header. Please consult our documentation at docs.anthropic.com or try again without the header."
                ));
            }
        }
        let json_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_type {
            return bad("Content-Type must be application/json");
        }
        let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
            return bad("There was an error parsing the body of your request");
        };
        if !parsed.is_object() {
            return bad("Request body must be a JSON object");
        }
        if !parsed.get("model").is_some_and(Value::is_string) {
            return bad("model: Field required");
        }
        if !count_tokens && !parsed.get("max_tokens").is_some_and(Value::is_u64) {
            return bad("max_tokens: Field required");
        }
        if !parsed.get("messages").is_some_and(Value::is_array) {
            return bad("messages: Field required");
        }
        if version == "2026-10-21" {
            for field in ["temperature", "top_p", "top_k"] {
                if parsed.get(field).is_some() {
                    return bad(&format!("{field}: Extra inputs are not permitted"));
                }
            }
        }
        if count_tokens {
            return count_tokens_answer(state, &cred, &parsed, request_id, arrived).await;
        }
        let stream = parsed.get("stream") == Some(&Value::Bool(true));
        (stream, Some(state.plan(&parsed)))
    };

    if count_tokens {
        // Only fast mode gets here: a fixed count.
        let n = FAST_USAGE.input_tokens
            + FAST_USAGE.cache_read_input_tokens
            + FAST_USAGE.cache_creation_input_tokens();
        return apply_simple_step(state, &cred, request_id, arrived)
            .await
            .map(|r| {
                r.unwrap_or_else(|| {
                    state.json(
                        StatusCode::OK,
                        Bytes::from(format!("{{\"input_tokens\":{n}}}")),
                        Some(&cred),
                        request_id,
                    )
                })
            });
    }

    let mut interrupt = None;
    match state.next_step(&cred.value) {
        Step::Ok => {}
        Step::Error {
            status,
            error_type,
            message,
            retry_after,
            mut headers,
        } => {
            if let Some(secs) = retry_after {
                headers.push(("retry-after".to_owned(), secs.to_string()));
            }
            return Ok(state.error(
                status,
                &error_type,
                &message,
                Some(&cred),
                request_id,
                &headers,
            ));
        }
        Step::SlowFirstByte(d) => tokio::time::sleep(d).await,
        Step::Stall {
            after_events,
            duration,
        } => {
            if stream {
                interrupt = Some(Interrupt::Stall {
                    after_events,
                    duration,
                });
            } else {
                tokio::time::sleep(duration).await;
            }
        }
        Step::MidStreamError {
            after_events,
            error_type,
        } => {
            if stream {
                interrupt = Some(Interrupt::Error {
                    after_events,
                    error_type,
                });
            } else {
                return Ok(http_error_for(state, &error_type, &cred, request_id));
            }
        }
        Step::Drop { after_events } => {
            if stream {
                interrupt = Some(Interrupt::Drop { after_events });
            } else {
                return Err(DroppedOnPurpose);
            }
        }
        Step::Reset => return Err(DroppedOnPurpose),
    }
    if !state.config.first_byte_delay.is_zero() {
        tokio::time::sleep_until(arrived + state.config.first_byte_delay).await;
    }

    if stream {
        let events: Arc<[(Bytes, Pace)]> = match &plan {
            Some(p) => render::sse_events(p).into(),
            None => state.fast_events.clone(),
        };
        // A stamp opens a frame, so it would land inside an event split across frames.
        let plain = plan.as_ref().is_none_or(|p| p.framing.is_plain());
        let body = MockBody::Events(Box::new(
            EventStream::new(
                events,
                Instant::now(),
                state.config.event_interval,
                interrupt,
            )
            .stamped(state.config.stamp_events && plain)
            .gated(state.gate.get().cloned()),
        ));
        let mut resp = state.respond(
            StatusCode::OK,
            "text/event-stream; charset=utf-8",
            body,
            Some(&cred),
            request_id,
            &[],
        );
        resp.headers_mut()
            .insert("cache-control", HeaderValue::from_static("no-cache"));
        Ok(resp)
    } else {
        let json = match &plan {
            Some(p) => render::message_json(p),
            None => state.fast_json.clone(),
        };
        Ok(state.json(StatusCode::OK, json, Some(&cred), request_id))
    }
}

/// The HTTP error matching a mid-stream error type, for non-streaming requests.
fn http_error_for(
    state: &State,
    error_type: &str,
    cred: &Cred,
    request_id: &str,
) -> Response<MockBody> {
    if error_type == "overloaded_error" {
        state.error(529, error_type, "Overloaded", Some(cred), request_id, &[])
    } else {
        state.error(
            500,
            error_type,
            "Internal server error",
            Some(cred),
            request_id,
            &[],
        )
    }
}

/// Applies the next step for requests without a stream; `Ok(None)` means "answer normally".
async fn apply_simple_step(
    state: &State,
    cred: &Cred,
    request_id: &str,
    arrived: Instant,
) -> Result<Option<Response<MockBody>>, DroppedOnPurpose> {
    match state.next_step(&cred.value) {
        Step::Ok => {}
        Step::Error {
            status,
            error_type,
            message,
            retry_after,
            mut headers,
        } => {
            if let Some(secs) = retry_after {
                headers.push(("retry-after".to_owned(), secs.to_string()));
            }
            return Ok(Some(state.error(
                status,
                &error_type,
                &message,
                Some(cred),
                request_id,
                &headers,
            )));
        }
        Step::SlowFirstByte(d) | Step::Stall { duration: d, .. } => tokio::time::sleep(d).await,
        Step::MidStreamError { error_type, .. } => {
            return Ok(Some(http_error_for(state, &error_type, cred, request_id)))
        }
        Step::Drop { .. } | Step::Reset => return Err(DroppedOnPurpose),
    }
    if !state.config.first_byte_delay.is_zero() {
        tokio::time::sleep_until(arrived + state.config.first_byte_delay).await;
    }
    Ok(None)
}

async fn count_tokens_answer(
    state: &State,
    cred: &Cred,
    parsed: &Value,
    request_id: &str,
    arrived: Instant,
) -> Result<Response<MockBody>, DroppedOnPurpose> {
    if let Some(resp) = apply_simple_step(state, cred, request_id, arrived).await? {
        return Ok(resp);
    }
    let n = prompt_tokens(parsed);
    Ok(state.json(
        StatusCode::OK,
        Bytes::from(format!("{{\"input_tokens\":{n}}}")),
        Some(cred),
        request_id,
    ))
}
