//! The HTTP server: router assembly and `run(listener, …, shutdown)`.
//!
//! The server takes an already-bound listener so tests bind `127.0.0.1:0`.

use crate::app::AppState;
use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Builds the router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/", get(crate::admin::landing).head(crate::proxy::hello))
        .merge(crate::proxy::routes())
        .merge(crate::admin::routes())
        .merge(crate::oauth_onboarding::routes())
        .merge(crate::account_probe::routes())
        .fallback(crate::proxy::not_found)
        .with_state(state)
}

/// `GET /health`: the process is up and serving.
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Serves until `shutdown` is cancelled, then stops accepting and lets in-flight
/// requests finish.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SSE frames are small writes: without TCP_NODELAY, Nagle holds each one back until
    // the client's delayed ACK arrives (≈40 ms on Linux), so every token would reach the
    // client late. Set on every accepted socket.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted socket");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
