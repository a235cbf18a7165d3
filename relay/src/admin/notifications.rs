//! Notification targets and the delivery log: thin handlers over
//! `services::notifications`.

use super::auth::Auth;
use super::error::{
    nullable, AdminError, BadRequest, Body, Forbidden, Id, NotFound, Query, Unauthorized,
};
use super::routes::{ok_message, OkMessage};
use crate::app::AppState;
use crate::notify::{Delivery, Target, TargetKind};
use crate::services::notifications::{CreateTarget, UpdateTarget};
use crate::services::{Page, PageReq};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

/// The routes (merged into the admin router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/notification-targets",
            get(list_targets).post(create_target),
        )
        .route(
            "/api/v1/notification-targets/{id}",
            get(get_target).patch(update_target).delete(delete_target),
        )
        .route("/api/v1/notification-targets/{id}/test", post(test_target))
        .route("/api/v1/admin/notifications", get(admin_deliveries))
        .route("/api/v1/notifications", get(deliveries))
}

/// `page`, `limit` and an optional target of the delivery log.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryFilter {
    /// Page number, from 1 (default 1).
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 10).
    limit: Option<i64>,
    /// Only deliveries to this target.
    target_id: Option<String>,
}

/// `page` and `limit`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TargetPaging {
    /// Page number, from 1 (default 1).
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 10).
    limit: Option<i64>,
}

/// Lists notification targets: all for an administrator, the own tenant's for a user.
#[utoipa::path(
    get, path = "/api/v1/notification-targets", tag = "notifications",
    params(TargetPaging),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of targets", body = Page<Target>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
    )
)]
pub(super) async fn list_targets(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(p): Query<TargetPaging>,
) -> Result<Json<Page<Target>>, AdminError> {
    let page = PageReq::parse(p.page, p.limit)?;
    Ok(Json(s.services.list_targets(&a, page).await?))
}

/// `POST /api/v1/notification-targets` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTargetBody {
    /// `webhook`, `slack`, `feishu`, `dingtalk` or `telegram`.
    #[serde(rename = "type")]
    kind: TargetKind,
    /// Display name (default: the type).
    name: Option<String>,
    /// The webhook URL (Telegram: the API base, default `https://api.telegram.org`).
    /// Stored sealed; only its scheme and host are shown.
    url: Option<String>,
    /// Telegram: the chat id.
    address: Option<String>,
    /// Webhook: the signing secret (required). Feishu, DingTalk: the signing secret
    /// (optional). Telegram: the bot token (required). Stored sealed, never shown.
    secret: Option<String>,
    /// Event filters: `account.*`, `budget.*`, `budget.threshold_crossed`, `ops.*`,
    /// `digest.daily`, `*`, …
    events: Vec<String>,
    /// Administrators: the tenant whose alerts the target receives (absent: an
    /// operator target). Users: absent or their own tenant.
    tenant: Option<String>,
    /// Most deliveries per minute; more are dropped and logged (0 = unlimited,
    /// default 30).
    rate_limit_per_minute: Option<u32>,
    /// Whether it receives alerts (default true).
    enabled: Option<bool>,
}

/// Creates a notification target.
#[utoipa::path(
    post, path = "/api/v1/notification-targets", tag = "notifications",
    request_body = CreateTargetBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The target (never its secret)", body = Target),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn create_target(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<CreateTargetBody>,
) -> Result<Response, AdminError> {
    let t = s
        .services
        .create_target(
            &a,
            CreateTarget {
                kind: b.kind,
                name: b.name,
                url: b.url,
                address: b.address,
                secret: b.secret,
                events: b.events,
                tenant: b.tenant,
                rate_limit_per_minute: b.rate_limit_per_minute,
                enabled: b.enabled,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// One notification target.
#[utoipa::path(
    get, path = "/api/v1/notification-targets/{id}", tag = "notifications",
    params(("id" = String, Path, description = "Target id (`ntf_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The target", body = Target),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn get_target(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Result<Json<Target>, AdminError> {
    Ok(Json(s.services.get_target(&a, &id).await?))
}

/// `PATCH /api/v1/notification-targets/{id}` body: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateTargetBody {
    /// New name.
    name: Option<String>,
    /// New URL.
    url: Option<String>,
    /// New Telegram chat id.
    address: Option<String>,
    /// New secret; `null` removes it (where the type allows none).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    secret: Option<Option<String>>,
    /// New event filters.
    events: Option<Vec<String>>,
    /// New rate limit per minute (0 = unlimited).
    rate_limit_per_minute: Option<u32>,
    /// Enable or disable.
    enabled: Option<bool>,
}

/// Changes a notification target.
#[utoipa::path(
    patch, path = "/api/v1/notification-targets/{id}", tag = "notifications",
    params(("id" = String, Path, description = "Target id (`ntf_…`)")),
    request_body = UpdateTargetBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed target", body = Target),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn update_target(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
    Body(b): Body<UpdateTargetBody>,
) -> Result<Json<Target>, AdminError> {
    Ok(Json(
        s.services
            .update_target(
                &a,
                &id,
                UpdateTarget {
                    name: b.name,
                    url: b.url,
                    address: b.address,
                    secret: b.secret,
                    events: b.events,
                    rate_limit_per_minute: b.rate_limit_per_minute,
                    enabled: b.enabled,
                },
            )
            .await?,
    ))
}

/// Deletes a notification target (its delivery log is kept).
#[utoipa::path(
    delete, path = "/api/v1/notification-targets/{id}", tag = "notifications",
    params(("id" = String, Path, description = "Target id (`ntf_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = OkMessage),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn delete_target(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Result<Json<OkMessage>, AdminError> {
    s.services.delete_target(&a, &id).await?;
    Ok(ok_message("notification target deleted"))
}

/// Sends a test message to a target now; the answer is its delivery-log row.
#[utoipa::path(
    post, path = "/api/v1/notification-targets/{id}/test", tag = "notifications",
    params(("id" = String, Path, description = "Target id (`ntf_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What happened, also when the receiver refused", body = Delivery),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn test_target(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Result<Json<Delivery>, AdminError> {
    Ok(Json(s.services.test_target(&a, &id).await?))
}

/// The delivery log of every target, newest first (administrators).
#[utoipa::path(
    get, path = "/api/v1/admin/notifications", tag = "notifications",
    params(DeliveryFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of deliveries", body = Page<Delivery>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    )
)]
pub(super) async fn admin_deliveries(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(f): Query<DeliveryFilter>,
) -> Result<Json<Page<Delivery>>, AdminError> {
    let page = PageReq::parse(f.page, f.limit)?;
    Ok(Json(
        s.services
            .list_deliveries(&a, true, f.target_id.as_deref(), page)
            .await?,
    ))
}

/// The delivery log of the caller's own targets (a user: their tenant's), newest
/// first.
#[utoipa::path(
    get, path = "/api/v1/notifications", tag = "notifications",
    params(DeliveryFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of deliveries", body = Page<Delivery>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
    )
)]
pub(super) async fn deliveries(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(f): Query<DeliveryFilter>,
) -> Result<Json<Page<Delivery>>, AdminError> {
    let page = PageReq::parse(f.page, f.limit)?;
    Ok(Json(
        s.services
            .list_deliveries(&a, false, f.target_id.as_deref(), page)
            .await?,
    ))
}
