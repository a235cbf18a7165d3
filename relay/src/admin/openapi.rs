//! The admin API's OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types. It is served at
//! `GET /api/v1/openapi.json` and checked in as `relay/openapi.json`; a test fails when
//! the two drift, and the admin API tests walk its operations.

use super::error::{
    BadRequest, Conflict, ErrorBody, Forbidden, Internal, NotFound, TooManyRequests, Unauthorized,
};
use super::{auth, notifications, routes, AdminError};
use crate::services::ServiceError;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document: every `/api/v1` route but the `{*rest}` fallback.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "relay admin API",
        version = "1",
        description = "Accounts, groups, keys, users and tenants of the relay, and its read \
            side (usage, rejections by limit, statements, request and audit logs). Errors are \
            `{\"error\": \"…\", \"code\": 40001}`; the HTTP status is the code divided by 100."
    ),
    paths(
        auth::login,
        auth::register,
        auth::me,
        auth::password,
        routes::list_accounts,
        routes::create_account,
        routes::get_account,
        routes::update_account,
        routes::delete_account,
        routes::reset_account,
        routes::enable_account,
        routes::disable_account,
        test_account,
        routes::list_groups,
        routes::create_group,
        routes::get_group,
        routes::update_group,
        routes::delete_group,
        routes::list_keys,
        routes::create_key,
        routes::get_key,
        routes::update_key,
        routes::revoke_key,
        routes::list_users,
        routes::create_user,
        routes::get_user,
        routes::update_user,
        routes::delete_user,
        routes::list_tenants,
        routes::update_tenant,
        routes::key_limits,
        routes::usage,
        routes::rejections,
        routes::statement,
        routes::logs,
        routes::audit,
        notifications::list_targets,
        notifications::create_target,
        notifications::get_target,
        notifications::update_target,
        notifications::delete_target,
        notifications::test_target,
        notifications::admin_deliveries,
        notifications::deliveries,
        status,
        serve,
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            TooManyRequests,
            Internal
        )
    ),
    modifiers(&BearerToken, &InternalErrors),
    tags(
        (name = "auth", description = "Log in, register, the current user, password"),
        (name = "accounts", description = "Upstream accounts (administrators)"),
        (name = "groups", description = "Account groups: read by all, changed by administrators"),
        (name = "keys", description = "Relay API keys: a user's own, or any for administrators"),
        (name = "users", description = "Users and tenants (administrators)"),
        (name = "reads", description = "Usage, rejections by limit, statements, request log, audit log"),
        (name = "notifications", description = "Alert targets (webhook, Slack, Feishu, DingTalk, Telegram) and the delivery log"),
        (name = "ops", description = "Service status and this document"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme: a token from `POST /api/v1/auth/login`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "The token from POST /api/v1/auth/login; it stops working when the user is \
                 disabled or changes their password",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every operation that answers admin errors can also answer 50001.
struct InternalErrors;

impl Modify for InternalErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                if r.keys().any(|status| status.starts_with('4')) {
                    r.insert(
                        "500".into(),
                        RefOr::Ref(Ref::from_response_name("Internal")),
                    );
                }
            }
        }
    }
}

/// The document as pretty-printed JSON with a final newline, as checked in.
pub fn document() -> Result<String, serde_json::Error> {
    let mut json = serde_json::to_string_pretty(&ApiDoc::openapi())?;
    json.push('\n');
    Ok(json)
}

/// This document.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn serve() -> Response {
    match document() {
        Ok(json) => ([(http::header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => AdminError::from(ServiceError::internal(e)).into_response(),
    }
}

// Served by `crate::ops::status`; this function only carries its description.
/// Service status: database, event log, projector lag, spool, an account summary.
///
/// Public; it names no account, key or tenant.
#[utoipa::path(
    get, path = "/api/v1/status", tag = "ops",
    responses((status = 200, description = "The status", body = Status))
)]
#[expect(
    dead_code,
    reason = "documents crate::ops::status, which is what is routed"
)]
fn status() {}

// Served by `crate::account_probe`; this function only carries its description.
/// Tests an account with one minimal real request.
///
/// The request asks for `max_tokens: 1` and reports the latency and the result, also
/// when upstream refuses; upstream bills it, so its usage is recorded.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{id}/test", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    request_body = Option<AccountTest>,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What the test found, also when upstream refused", body = AccountTestResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
#[expect(
    dead_code,
    reason = "documents crate::account_probe's handler, which is what is routed"
)]
fn test_account() {}

/// The optional body of `POST /api/v1/admin/accounts/{id}/test`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountTest {
    /// Model to ask (default `claude-haiku-4-5`).
    pub model: Option<String>,
}

/// What `POST /api/v1/admin/accounts/{id}/test` found.
#[derive(ToSchema)]
pub struct AccountTestResult {
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
    /// Input tokens upstream reported.
    pub input_tokens: u64,
    /// Output tokens upstream reported.
    pub output_tokens: u64,
}

/// The answer of `GET /api/v1/status` (built as JSON by `crate::ops::status`).
#[derive(ToSchema)]
pub struct Status {
    /// `ok`, or `degraded` when the database or the event log is unreachable.
    pub status: String,
    /// `ok` or `error`.
    pub database_status: String,
    /// `sqlite` or `postgres`.
    pub database_backend: String,
    /// The event log.
    pub event_log: StatusEventLog,
    /// How far each projection is behind; none when it could not be read.
    pub projections: Option<Vec<StatusProjection>>,
    /// The event publisher's queue and spool.
    pub publisher: StatusPublisher,
    /// The account pool.
    pub accounts: StatusAccounts,
    /// The relay's clock.
    pub time: DateTime<Utc>,
}

/// The event log in the status.
#[derive(ToSchema)]
pub struct StatusEventLog {
    /// `sqlite` or `jetstream`.
    pub backend: String,
    /// `ok` or `unreachable`.
    pub status: String,
    /// Newest position; none when unreachable.
    pub head: Option<u64>,
}

/// One projection's lag in the status.
#[derive(ToSchema)]
pub struct StatusProjection {
    /// Projection name.
    pub projection: String,
    /// Last applied position.
    pub checkpoint: u64,
    /// Events not yet applied.
    pub behind: u64,
}

/// The event publisher in the status.
#[derive(ToSchema)]
pub struct StatusPublisher {
    /// Events published but not yet appended or spooled.
    pub queue_depth: u64,
    /// Events in the spool, waiting for the log.
    pub spool_events: u64,
    /// Payload bytes in the spool.
    pub spool_bytes: u64,
    /// Events the log refused for good, set aside in the spool file's quarantine.
    pub quarantine_events: u64,
    /// The local journal every event is written to first.
    pub journal: StatusJournal,
}

/// The publisher's journal in the status.
#[derive(ToSchema)]
pub struct StatusJournal {
    /// The sync policy: `never`, `interval(…)` or `always` (`JOURNAL_FSYNC`).
    pub fsync: String,
    /// Whether the last write failed (new requests are refused while it does).
    pub failing: bool,
    /// Segment files of this process.
    pub segments: u64,
    /// Upstream attempts started and not yet ended.
    pub open_attempts: u64,
    /// Failed writes since start.
    pub write_errors_total: u64,
}

/// The account pool in the status.
#[derive(ToSchema)]
pub struct StatusAccounts {
    /// Accounts loaded.
    pub total: u64,
    /// Of those, disabled.
    pub disabled: u64,
    /// Enabled accounts by health state (`healthy`, `rate_limited`, …).
    pub by_state: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn checked_in() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
    }

    #[test]
    fn openapi_json_matches_the_rust_types() {
        let fresh = document().unwrap();
        let path = checked_in();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &fresh).unwrap();
            return;
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        if stored == fresh {
            return;
        }
        let line = stored
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| stored.lines().count().min(fresh.lines().count()));
        panic!(
            "relay/openapi.json is out of date with the admin API's handlers and types \
             (first difference at line {}: checked in {:?}, generated {:?}). Regenerate it \
             with `UPDATE_OPENAPI=1 cargo test -p relay openapi` and commit it.",
            line + 1,
            stored.lines().nth(line).unwrap_or("<end>"),
            fresh.lines().nth(line).unwrap_or("<end>"),
        );
    }

    #[test]
    fn every_operation_but_the_public_ones_needs_a_bearer_token() {
        let doc: serde_json::Value = serde_json::from_str(&document().unwrap()).unwrap();
        let mut public = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let secured = op["security"][0].get("bearer").is_some();
                if !secured {
                    public.push(format!("{} {path}", method.to_uppercase()));
                }
                assert!(
                    !secured || op["responses"].get("401").is_some(),
                    "{method} {path} needs a token, so it answers 401"
                );
            }
        }
        public.sort();
        assert_eq!(
            public,
            [
                "GET /api/v1/openapi.json",
                "GET /api/v1/status",
                "POST /api/v1/auth/login",
                "POST /api/v1/auth/register",
            ]
        );
    }
}
