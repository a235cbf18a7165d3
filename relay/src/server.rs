//! The HTTP server: router assembly and `run(listener, app, shutdown, options)`.
//!
//! Connections are served with hyper directly, so that the edge has the discipline a
//! public service needs:
//!
//! - a header-read timeout, which is also the idle keep-alive timeout (hyper arms it
//!   whenever a connection waits for a request head): slow-header clients are cut off;
//! - a cap on open connections, below the process's file-descriptor limit; a connection
//!   over the cap gets a canned Anthropic-shaped 503 and is closed at once;
//! - a bound on request-head size; oversized heads and URIs are refused in Anthropic's
//!   shape, never forwarded;
//! - requests hyper cannot parse (a malformed request line or header) answered in
//!   Anthropic's shape too ([`shaped`]): hyper writes those itself, with an empty body;
//! - a shutdown that stops accepting, asks every connection to finish its request, and
//!   ends after `SHUTDOWN_GRACE` whatever remains.
//!
//! The server takes an already-bound listener so tests bind `127.0.0.1:0`.

mod shaped;

use crate::app::AppState;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Limits of the edge.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Longest wait for a request head (and for the next request on an idle
    /// keep-alive connection).
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Longest time in-flight requests get to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Longest request URI accepted (path and query), bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Builds the router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/", get(crate::admin::landing).head(crate::proxy::hello))
        .merge(crate::proxy::routes())
        .merge(crate::admin::routes())
        .merge(crate::oauth_onboarding::routes())
        .merge(crate::account_probe::routes())
        .merge(crate::console::routes())
        .fallback(crate::proxy::not_found)
        .layer(axum::middleware::map_response(shape_framework_errors))
        .with_state(state)
}

/// The router of the separate health listener.
pub fn health_router() -> Router {
    Router::new().route("/health", get(health))
}

/// `GET /health`: the process is up and serving.
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// The framework's own refusals (405, and any other error status without a body) get
/// the error shape of the surface they came from: `{error, code}` on `/api/v1/*` and
/// `/oauth/*`, Anthropic's elsewhere. Responses with a body pass untouched.
async fn shape_framework_errors(uri: axum::http::Uri, resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let empty = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0")
        || (resp.headers().get(http::header::CONTENT_TYPE).is_none()
            && http_body::Body::size_hint(resp.body()).exact() == Some(0));
    if !empty {
        return resp;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!("method not allowed on {}", clip(uri.path())),
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let admin = uri.path().starts_with("/oauth/")
        || (uri.path().starts_with("/api/v1/") && !is_messages_api(uri.path()));
    let mut shaped = if admin {
        let code = u32::from(status.as_u16()) * 100 + 1;
        (
            status,
            axum::Json(serde_json::json!({ "error": message, "code": code })),
        )
            .into_response()
    } else {
        crate::error::ApiError::from_status(status, message).into_response()
    };
    if let Some(allow) = resp.headers().get(http::header::ALLOW) {
        shaped
            .headers_mut()
            .insert(http::header::ALLOW, allow.clone());
    }
    shaped
}

fn is_messages_api(path: &str) -> bool {
    path.starts_with("/api/v1/messages") || path.starts_with("/api/v1/models")
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

/// A connection over the cap: refused with a complete, Anthropic-shaped 503.
fn over_capacity() -> Vec<u8> {
    let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"relay: too many open connections; retry shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The soft limit on open files, from `/proc/self/limits` (Linux), if readable.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap in force: the configured one, kept 128 below the file limit so
/// the relay always has descriptors for upstream connections and its databases.
pub fn effective_max_connections(configured: usize) -> usize {
    match open_files_limit() {
        Some(limit) => configured.min(limit.saturating_sub(128).max(16)),
        None => configured,
    }
}

/// Serves until `shutdown` is cancelled, then stops accepting, lets in-flight requests
/// finish for at most `shutdown_grace`, and returns.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    options: ServerOptions,
) -> std::io::Result<()> {
    let cap = effective_max_connections(options.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // Heads up to 4× the limit are read, so that `refuse_oversized` can answer
        // them in Anthropic's shape; beyond that hyper refuses with a bare 431.
        .max_buf_size(options.max_header_bytes.saturating_mul(4).max(8192))
        .keep_alive(true);
    tracing::debug!(max_connections = cap, "accepting connections");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a reset before accept: wait a moment, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // SSE frames are small writes: without TCP_NODELAY, Nagle holds each one back
        // until the client's delayed ACK arrives (≈40 ms on Linux).
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(&over_capacity()),
                )
                .await;
            });
            continue;
        };
        let app = app.clone();
        let http = http.clone();
        let closing = closing.clone();
        let max_header_bytes = options.max_header_bytes;
        connections.spawn(async move {
            let dispatched = shaped::Dispatched::default();
            let io = TokioIo::new(shaped::Shaped::new(stream, dispatched.clone()));
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    dispatched.mark();
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let app = app.clone();
                    async move {
                        if let Some(refused) = refuse_oversized(&req, max_header_bytes) {
                            return Ok::<_, std::convert::Infallible>(refused);
                        }
                        app.oneshot(req.map(axum::body::Body::new)).await
                    }
                });
            let conn = http.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(slot);
        });
    }
    // Stop accepting; ask every connection to finish the request it has.
    drop(listener);
    closing.cancel();
    connections.close();
    if tokio::time::timeout(options.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = options.shutdown_grace.as_secs(),
            "shutdown grace over; closing the remaining connections"
        );
    }
    Ok(())
}

/// A URI or a head too large to forward: refused in Anthropic's shape.
fn refuse_oversized<B>(req: &Request<B>, max_header_bytes: usize) -> Option<Response> {
    let head: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if head > max_header_bytes {
        return Some(
            crate::error::ApiError::from_status(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request headers larger than {max_header_bytes} bytes"),
            )
            .into_response(),
        );
    }
    let uri_len = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1);
    if uri_len > MAX_URI_BYTES {
        return Some(
            crate::error::ApiError::from_status(
                StatusCode::URI_TOO_LONG,
                format!("request URI longer than {MAX_URI_BYTES} bytes"),
            )
            .into_response(),
        );
    }
    None
}
