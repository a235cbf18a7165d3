//! `POST /api/v1/admin/accounts/{id}/test`: one minimal real request through an
//! account (`max_tokens: 1`), reporting latency and the result. Upstream bills it, so
//! its usage is recorded like any attempt (account only, no tenant), and the test is
//! audited.

use crate::admin::auth::Auth;
use crate::admin::error::{AdminError, Id};
use crate::app::AppState;
use crate::services::ServiceError;
use crate::usage_tap;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use http::{HeaderMap, HeaderValue};
use schema::{AdminVerb, Completeness, Envelope, Event, ServerToolUse, UsageRecorded};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Model used when the caller names none: the cheapest current one.
pub const DEFAULT_MODEL: &str = "claude-haiku-4-5";

/// The route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/admin/accounts/{id}/test", post(test_account))
}

/// Optional body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    /// Model to ask (default `claude-haiku-4-5`).
    pub model: Option<String>,
}

/// What the test found.
#[derive(Debug, Serialize)]
pub struct TestResult {
    /// The account.
    pub account: String,
    /// Whether upstream answered 2xx.
    pub ok: bool,
    /// Upstream status (absent on a connection failure).
    pub status: Option<u16>,
    /// Time to the complete answer, milliseconds.
    pub latency_ms: u64,
    /// Model asked.
    pub model: String,
    /// Upstream error type and message, or the connection failure.
    pub error: Option<String>,
    /// Input and output tokens upstream reported.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
}

async fn test_account(
    State(s): State<AppState>,
    Auth(actor): Auth,
    Id(id): Id<String>,
    body: bytes::Bytes,
) -> Result<Json<TestResult>, AdminError> {
    if !actor.is_admin() {
        return Err(ServiceError::Forbidden("administrator role required".into()).into());
    }
    let body: TestBody = if body.iter().all(u8::is_ascii_whitespace) {
        TestBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AdminError::bad_request(format!(
                "invalid body: {}",
                e.to_string().chars().take(200).collect::<String>()
            ))
        })?
    };
    let model = body.model.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    if model.is_empty() || model.len() > 128 {
        return Err(AdminError::bad_request("model must be 1 to 128 characters"));
    }
    let account = s
        .accounts
        .get(&id)
        .await
        .map_err(ServiceError::from)?
        .filter(|_| id.len() <= 80)
        .ok_or_else(|| AdminError::not_found("account not found"))?;
    let client = s
        .proxy
        .upstreams
        .client(account.proxy_url.as_deref())
        .map_err(|e| AdminError::bad_request(format!("the account's proxy is invalid: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let headers = crate::proxy::headers::upstream_headers(&headers, &account);
    let payload = serde_json::json!({
        "model": model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    });
    let started = Instant::now();
    let sent = client
        .post(format!("{}/v1/messages", account.base_url))
        .headers(headers)
        .timeout(Duration::from_secs(60))
        .body(payload.to_string())
        .send()
        .await;
    let (status, bytes, error) = match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) => (Some(status), b, None),
                Err(_) => (
                    Some(status),
                    bytes::Bytes::new(),
                    Some("the response broke off".to_owned()),
                ),
            }
        }
        Err(e) => (
            None,
            bytes::Bytes::new(),
            Some(if e.is_timeout() {
                "the upstream timed out".to_owned()
            } else {
                "could not reach the upstream".to_owned()
            }),
        ),
    };
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let summary = usage_tap::summarize_json(&bytes);
    let t = summary.usage.tokens();
    if let Some(status) = status {
        let request_id = format!("req_probe_{}", Uuid::now_v7().simple());
        s.publisher.publish(
            Envelope::new(
                Uuid::now_v7(),
                Utc::now(),
                Event::UsageRecorded(UsageRecorded {
                    account: account.id.clone(),
                    attempt: 1,
                    model: summary.model.clone().unwrap_or_else(|| model.clone()),
                    status,
                    stream: false,
                    input_tokens: t.input,
                    output_tokens: t.output,
                    cache_read_input_tokens: t.cache_read,
                    cache_creation_5m_input_tokens: t.cache_write_5m,
                    cache_creation_1h_input_tokens: t.cache_write_1h,
                    server_tool_use: ServerToolUse {
                        web_search_requests: t.web_search_requests,
                        web_fetch_requests: t.web_fetch_requests,
                    },
                    service_tier: summary.usage.service_tier.clone(),
                    speed: summary.usage.speed.clone(),
                    inference_geo: summary.usage.inference_geo.clone(),
                    completeness: Completeness::Complete,
                }),
            )
            .with_request(request_id)
            .with_account(Some(account.id.clone())),
        );
    }
    let error = error.or_else(|| {
        summary
            .error
            .as_ref()
            .map(|(t, m)| format!("{t}: {}", m.chars().take(300).collect::<String>()))
    });
    let ok = status.is_some_and(|s| (200..300).contains(&s));
    s.services.audit_account(
        &actor,
        AdminVerb::AccountTest,
        &account.id,
        format!(
            "tested {} ({}): {} in {latency_ms} ms",
            account.id,
            account.name,
            match status {
                Some(code) => format!("HTTP {code}"),
                None => "no response".into(),
            }
        ),
    );
    Ok(Json(TestResult {
        account: account.id.to_string(),
        ok,
        status,
        latency_ms,
        model,
        error,
        input_tokens: t.input,
        output_tokens: t.output,
    }))
}
