//! The web console at `/console`: one HTML page, one script and one stylesheet, all
//! embedded in the binary (`cargo build` needs no Node toolchain, nothing is built).
//!
//! The script is a small hash-routed page that calls only the public admin API
//! (`/api/v1/…`, and `/oauth/…` for the OAuth wizard) with the bearer token from
//! `POST /api/v1/auth/login`, kept in `sessionStorage`: what the console can do, a
//! script can do. The server side is static files and headers:
//!
//! - a strict Content-Security-Policy (scripts, styles and fetches from this origin
//!   only, no inline code, no framing);
//! - the page is revalidated on every load; the script and stylesheet are named by a
//!   hash of their content (`?v=…`) and cached for a year.

use axum::extract::Query;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Only this origin, no inline script or style, no plugins, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The page with its asset URLs versioned by content.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    INDEX
        .replace("{{app.js}}", &version(SCRIPT))
        .replace("{{app.css}}", &version(STYLE))
});

/// The first 16 hex digits of the SHA-256 of an asset.
fn version(asset: &str) -> String {
    let digest = Sha256::digest(asset.as_bytes());
    hex::encode(&digest[..8])
}

/// The console's routes (merged into the server's router; no state needed).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", "no-cache", PAGE.as_str())
}

#[derive(serde::Deserialize)]
struct Versioned {
    v: Option<String>,
}

async fn script(Query(q): Query<Versioned>) -> Response {
    versioned("text/javascript; charset=utf-8", SCRIPT, q)
}

async fn style(Query(q): Query<Versioned>) -> Response {
    versioned("text/css; charset=utf-8", STYLE, q)
}

/// An asset cached for a year when asked for by its current version, else revalidated.
fn versioned(content_type: &'static str, body: &'static str, q: Versioned) -> Response {
    let cache = if q.v.as_deref() == Some(version(body).as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    asset(content_type, cache, body)
}

fn asset(content_type: &'static str, cache: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_its_assets_by_their_current_version() {
        assert!(PAGE.contains(&format!("/console/app.js?v={}", version(SCRIPT))));
        assert!(PAGE.contains(&format!("/console/app.css?v={}", version(STYLE))));
        assert!(!PAGE.contains("{{"));
    }

    #[test]
    fn no_asset_writes_markup_from_strings() {
        // Text is set with `textContent` and DOM nodes, never parsed from strings.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(banned), "app.js uses {banned}");
        }
        assert!(!INDEX.contains("<script>"), "inline script breaks the CSP");
        assert!(!INDEX.contains("style="), "inline style breaks the CSP");
    }
}
