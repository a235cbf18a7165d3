//! The admin API: thin handlers over [`crate::services`]. JSON in, JSON out; errors
//! are `{"error": "<message>", "code": <int>}` with the seed's codes, and the HTTP
//! status matches the code.
//!
//! - [`error`]: [`AdminError`] and the body extractors that turn bad input into 40001;
//! - [`auth`]: the bearer-token extractor, login, registration, `me`, password;
//! - [`routes`]: accounts, groups, keys, users, tenants and the read side;
//! - [`notifications`]: notification targets and the delivery log;
//! - [`openapi`]: the OpenAPI document of all of it, served at `/api/v1/openapi.json`.

pub mod auth;
pub mod error;
pub mod notifications;
pub mod openapi;
pub mod routes;

pub use error::AdminError;

use crate::app::AppState;
use axum::response::Html;
use axum::Router;

/// The admin routes (merged into the server's router).
pub fn routes() -> Router<AppState> {
    routes::router()
}

/// `GET /`: what this service is and where its API lives.
pub async fn landing() -> Html<&'static str> {
    Html(include_str!("landing.html"))
}
