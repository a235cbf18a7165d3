//! Upstream attempts: pick an account, send, and fail over to another account on
//! 429 / 529 / 5xx / 401 / 403 / connection errors — only ever before the first byte
//! reaches the client, because the failed response is read here and never forwarded
//! while another attempt is possible.

use super::body;
use super::context::{error_response, Finished, RequestCtx, RELAY_REQUEST_ID};
use super::headers;
use crate::accounts::AccountKind;
use crate::error::ApiError;
use crate::pool::health::{self, Signal};
use crate::pool::{AccountRuntime, NoAccount, PickRequest};
use crate::token_refresh::Why;
use crate::usage_tap;
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use http::{HeaderMap, HeaderValue, StatusCode};
use schema::{Completeness, HealthEvidence, Outcome, RoutingDecision};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest upstream error body read (for evidence and to pass on).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Longest wait for an upstream error body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest upstream message kept as evidence.
const MAX_EVIDENCE_MESSAGE: usize = 300;

/// A failed attempt, kept to answer with when no further attempt is possible.
enum Failure {
    /// Upstream answered with an error status.
    Upstream {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
        error_type: Option<String>,
        routing: RoutingDecision,
    },
    /// No response arrived.
    Connection {
        message: String,
        routing: RoutingDecision,
    },
}

/// The upstream path for a client path: the `/api` mount prefix is removed.
fn upstream_path(path: &str) -> &str {
    match path.strip_prefix("/api") {
        Some(rest) if rest.starts_with("/v1/") => rest,
        _ => path,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the attempts and returns the client's response.
pub async fn forward(mut ctx: RequestCtx, parts: http::request::Parts, body: Bytes) -> Response {
    let state = ctx.state.clone();
    let proxy = &state.proxy;
    let config = &state.config;
    let path = upstream_path(parts.uri.path());
    let query = parts.uri.query();
    let head_timeout = Duration::from_secs(config.http_client_timeout_secs.max(1));
    let max_attempts = config.max_attempts.max(1);
    let mut tried: Vec<Arc<AccountRuntime>> = Vec::new();
    let mut last: Option<Failure> = None;
    // OAuth accounts whose token was refreshed after a 401 in this request: each gets
    // one retry with the new token, which does not count against MAX_ATTEMPTS.
    let mut refreshed: Vec<schema::AccountId> = Vec::new();
    let mut attempt = 0;

    loop {
        attempt += 1;
        if attempt > max_attempts + refreshed.len() as u32 {
            break;
        }
        let pick = proxy.pool.pick(
            PickRequest {
                group: ctx.key.group.as_deref(),
                key: &ctx.key.id,
                session: ctx.session.as_deref(),
                exclude: &tried,
            },
            Utc::now(),
        );
        let lease = match pick {
            Ok(l) => l,
            Err(no) => {
                return match last {
                    Some(f) => respond_failure(ctx, f),
                    None => ctx.reject(no_account_error(no)),
                }
            }
        };
        ctx.attempts = attempt;
        proxy.metrics.attempts.fetch_add(1, Ordering::Relaxed);
        if attempt > 1 {
            proxy.metrics.failovers.fetch_add(1, Ordering::Relaxed);
        }
        let account = lease.account();
        let client = match proxy.upstreams.client(account.proxy_url.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(account = %account.id, error = %e, "cannot build the upstream client");
                proxy.pool.observe(
                    lease.runtime(),
                    Signal::Connection {
                        message: e.to_string(),
                    },
                    Utc::now(),
                );
                tried.push(lease.runtime().clone());
                last = Some(Failure::Connection {
                    message: "the upstream proxy configuration is invalid".into(),
                    routing: lease.decision.clone(),
                });
                continue;
            }
        };
        let mut url = String::with_capacity(
            account.base_url.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        url.push_str(&account.base_url);
        url.push_str(path);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        let mut rb = client
            .request(parts.method.clone(), url)
            .headers(headers::upstream_headers(&parts.headers, account));
        if ctx.endpoint.has_body() {
            rb = rb.body(body.clone());
        }
        if let Err(e) = ctx.journal_attempt(&account.id, attempt) {
            return ctx.reject(e);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(head_timeout, rb.send()).await;
        proxy
            .metrics
            .upstream_head
            .observe(micros(started.elapsed()));
        // A failure once connected may come after upstream read the request (a reset,
        // no head in time): it may bill it, so the attempt is recorded with unknown
        // tokens rather than left out. A connect failure sent nothing.
        let failed = match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err((describe(&e), !e.is_connect())),
            Err(_) => Err((
                format!("no response head within {}s", head_timeout.as_secs()),
                true,
            )),
        };
        let resp = match failed {
            Ok(r) => r,
            Err((message, maybe_served)) => {
                ctx.add_upstream(started.elapsed());
                if maybe_served {
                    ctx.record_usage(
                        &account.id,
                        attempt,
                        0,
                        None,
                        ctx.stream,
                        &usage_tap::Usage::default(),
                        Completeness::Unknown,
                    );
                }
                tracing::warn!(account = %account.id, %message, "upstream attempt failed");
                proxy.pool.observe(
                    lease.runtime(),
                    Signal::Connection {
                        message: message.clone(),
                    },
                    Utc::now(),
                );
                tried.push(lease.runtime().clone());
                last = Some(Failure::Connection {
                    message,
                    routing: lease.decision.clone(),
                });
                continue;
            }
        };
        let status = resp.status().as_u16();
        if health::is_failover_status(status) {
            let upstream_headers = resp.headers().clone();
            let body = read_error_body(resp).await;
            ctx.add_upstream(started.elapsed());
            let summary = usage_tap::summarize_json(&body);
            if status == 401
                && account.kind == AccountKind::OAuth
                && account.refresh_token.is_some()
                && !refreshed.contains(&account.id)
            {
                refreshed.push(account.id.clone());
                let renewed = state
                    .refresher
                    .refresh(account, &account.credential, Why::Rejected)
                    .await;
                match renewed {
                    Ok(true) => {
                        tracing::info!(account = %account.id, "upstream 401; token refreshed, retrying");
                        ctx.record_usage(
                            &account.id,
                            attempt,
                            status,
                            summary.model.as_deref(),
                            ctx.stream,
                            &summary.usage,
                            Completeness::Complete,
                        );
                        if let Err(e) = super::reload_accounts(&state).await {
                            tracing::warn!(error = %e, "cannot reload accounts after a token refresh");
                        }
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(account = %account.id, error = %e, "token refresh after a 401 failed");
                    }
                }
            }
            // A server error that upstream marks as not worth retrying is about the
            // request, not the account: another account would fail the same way, and
            // this one is not to blame.
            let final_answer = status >= 500
                && upstream_headers
                    .get("x-should-retry")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"false"));
            let evidence = evidence(status, &upstream_headers, summary.error.as_ref());
            tracing::info!(account = %account.id, status, "upstream refused; failing over if possible");
            if !final_answer {
                proxy.pool.observe(
                    lease.runtime(),
                    Signal::Status { status, evidence },
                    Utc::now(),
                );
            }
            ctx.record_usage(
                &account.id,
                attempt,
                status,
                summary.model.as_deref(),
                ctx.stream,
                &summary.usage,
                Completeness::Complete,
            );
            tried.push(lease.runtime().clone());
            // Account-specific refusals (401, 403, 429) still fail over.
            last = Some(Failure::Upstream {
                status,
                headers: upstream_headers,
                body,
                error_type: summary.error.map(|e| e.0),
                routing: lease.decision.clone(),
            });
            if final_answer {
                break;
            }
            continue;
        }
        if (200..300).contains(&status) {
            proxy
                .pool
                .observe(lease.runtime(), Signal::Success, Utc::now());
        }
        return body::respond(ctx, lease, resp, attempt, started);
    }
    match last {
        Some(f) => respond_failure(ctx, f),
        None => ctx.reject(no_account_error(NoAccount::NoneConfigured)),
    }
}

/// A connection error without URLs or anything secret.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "could not connect to the upstream"
    } else if e.is_timeout() {
        "the upstream timed out"
    } else if e.is_request() {
        "the upstream request failed"
    } else {
        "the upstream connection failed"
    };
    // The source chain says why (refused, reset, proxy failure) without the URL.
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}

/// Reads an error body, bounded in size and time.
async fn read_error_body(mut resp: reqwest::Response) -> Bytes {
    let mut buf = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            let room = MAX_ERROR_BODY.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if buf.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    Bytes::from(buf)
}

/// What upstream said, for the health event.
fn evidence(status: u16, headers: &HeaderMap, error: Option<&(String, String)>) -> HealthEvidence {
    let retry_after_ms = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|ms| ms / 1000.0);
    let retry_after = retry_after_ms.or_else(|| {
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    // Bounded: at most 64 headers of at most 64 + 256 characters reach the event.
    let unified = headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("anthropic-ratelimit-unified-")?;
            Some((
                crate::proxy::context::bounded(name, 64),
                crate::proxy::context::bounded(v.to_str().ok()?, 256),
            ))
        })
        .take(64)
        .collect();
    HealthEvidence {
        status: Some(status),
        retry_after_s: retry_after
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.ceil() as u64),
        error_type: error.map(|e| crate::proxy::context::bounded(&e.0, 128)),
        message: error.map(|e| e.1.chars().take(MAX_EVIDENCE_MESSAGE).collect()),
        unified,
    }
}

/// The client's error when no account can take the request.
fn no_account_error(no: NoAccount) -> ApiError {
    match no {
        NoAccount::NoneConfigured => ApiError::unavailable(
            "relay: no upstream account is available for this API key's group",
            None,
        ),
        NoAccount::AllBusy => ApiError::overloaded(
            "relay: every upstream account for this API key is at its concurrency limit; retry shortly",
            Some(1),
        ),
        NoAccount::CoolingDown { soonest } => {
            let secs = (soonest - Utc::now()).num_seconds().max(1);
            let secs = u64::try_from(secs).unwrap_or(1);
            ApiError::overloaded(
                format!(
                    "upstream: every upstream account for this API key is rate-limited or overloaded; the first recovers in {secs}s"
                ),
                Some(secs),
            )
        }
        NoAccount::Unusable => ApiError::unavailable(
            "upstream: every upstream account for this API key is unauthorized or disabled",
            None,
        ),
    }
}

/// Answers with the last failed attempt: upstream's own error verbatim, or 502.
fn respond_failure(ctx: RequestCtx, failure: Failure) -> Response {
    match failure {
        Failure::Upstream {
            status,
            headers: upstream_headers,
            body,
            error_type,
            routing,
        } => {
            let upstream_request_id = upstream_headers
                .get("request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            ctx.finish(Finished {
                status,
                outcome: Outcome::UpstreamError,
                ttfb: None,
                routing: Some(routing),
                error_type,
                upstream_request_id,
            });
            let mut out = headers::response_headers(&upstream_headers);
            if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
                out.insert(RELAY_REQUEST_ID, v);
            }
            let mut resp = Response::new(axum::body::Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            *resp.headers_mut() = out;
            resp
        }
        Failure::Connection { message, routing } => {
            let err = ApiError::bad_gateway(format!("upstream: {message}"));
            ctx.finish(Finished {
                status: err.status.as_u16(),
                outcome: Outcome::UpstreamError,
                ttfb: None,
                routing: Some(routing),
                error_type: Some(err.error_type.to_owned()),
                upstream_request_id: None,
            });
            error_response(err, &ctx.request_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_prefix_is_removed() {
        assert_eq!(upstream_path("/api/v1/messages"), "/v1/messages");
        assert_eq!(upstream_path("/v1/messages"), "/v1/messages");
        assert_eq!(
            upstream_path("/api/v1/models/claude-x"),
            "/v1/models/claude-x"
        );
    }

    #[test]
    fn evidence_reads_retry_after_and_unified_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7999"));
        h.insert(
            "anthropic-ratelimit-unified-reset",
            HeaderValue::from_static("1800000000"),
        );
        h.insert(
            "anthropic-ratelimit-unified-status",
            HeaderValue::from_static("rejected"),
        );
        let e = evidence(429, &h, Some(&("rate_limit_error".into(), "slow".into())));
        assert_eq!(e.retry_after_s, Some(7999));
        assert_eq!(
            e.unified.get("reset").map(String::as_str),
            Some("1800000000")
        );
        assert_eq!(
            e.unified.get("status").map(String::as_str),
            Some("rejected")
        );
        assert_eq!(e.error_type.as_deref(), Some("rate_limit_error"));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(evidence(429, &h, None).retry_after_s, Some(2));
    }
}
