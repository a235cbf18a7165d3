//! Admin API routes: accounts, groups, keys, users, tenants, and the read side.

use super::auth::{self, Auth};
use super::error::{
    not_found, nullable, AdminError, BadRequest, Body, Conflict, Forbidden, Id, NotFound, Query,
    Unauthorized,
};
use crate::app::AppState;
use crate::groups::Group;
use crate::identity::{Role, Tenant, User};
use crate::keys::ApiKey;
use crate::services::accounts::{AccountView, CreateAccount, PlatformType, UpdateAccount};
use crate::services::keys::CreateKey;
use crate::services::reads::{RejectionQuery, RejectionsAnswer, UsageAnswer, UsageQuery};
use crate::services::users::{CreateUser, UserChange};
use crate::services::{Page, PageReq};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

type Res<T> = Result<Json<T>, AdminError>;

/// Every admin route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/register", post(auth::register))
        .route("/api/v1/auth/me", get(auth::me))
        .route("/api/v1/auth/password", post(auth::password))
        .route(
            "/api/v1/admin/accounts",
            get(list_accounts).post(create_account),
        )
        .route(
            "/api/v1/admin/accounts/{id}",
            get(get_account)
                .patch(update_account)
                .delete(delete_account),
        )
        .route("/api/v1/admin/accounts/{id}/reset", post(reset_account))
        .route("/api/v1/admin/accounts/{id}/enable", post(enable_account))
        .route("/api/v1/admin/accounts/{id}/disable", post(disable_account))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route(
            "/api/v1/groups/{id}",
            get(get_group).patch(update_group).delete(delete_group),
        )
        .route("/api/v1/api-keys", get(list_keys).post(create_key))
        .route(
            "/api/v1/api-keys/{id}",
            get(get_key).patch(update_key).delete(revoke_key),
        )
        .route("/api/v1/admin/users", get(list_users).post(create_user))
        .route(
            "/api/v1/admin/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/api/v1/admin/tenants", get(list_tenants))
        .route(
            "/api/v1/admin/tenants/{id}",
            axum::routing::patch(update_tenant),
        )
        .route("/api/v1/api-keys/{id}/limits", get(key_limits))
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/usage/rejections", get(rejections))
        .route("/api/v1/statements", get(statement))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/admin/audit", get(audit))
        .route("/api/v1/status", get(crate::ops::status))
        .route("/api/v1/openapi.json", get(super::openapi::serve))
        .merge(super::notifications::router())
        .route("/api/v1/{*rest}", axum::routing::any(not_found))
}

/// `page` and `limit` of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Page number, from 1 (default 1).
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 10).
    limit: Option<i64>,
}

impl Paging {
    fn req(&self) -> Result<PageReq, AdminError> {
        Ok(PageReq::parse(self.page, self.limit)?)
    }
}

fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// The answer of a change that returns no object.
#[derive(Debug, Serialize, ToSchema)]
pub struct OkMessage {
    /// Always `true`.
    ok: bool,
    /// What was done.
    message: String,
}

pub(super) fn ok_message(m: &str) -> Json<OkMessage> {
    Json(OkMessage {
        ok: true,
        message: m.to_owned(),
    })
}

// ------------------------------------------------------------------ accounts

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AccountFilter {
    /// Page number, from 1 (default 1).
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 10).
    limit: Option<i64>,
    /// Only accounts of this platform type.
    platform_type: Option<PlatformType>,
    /// Only accounts in this group.
    group_id: Option<i64>,
    /// Only accounts in this health state (`healthy`, `rate_limited`, …).
    status: Option<String>,
}

/// Lists upstream accounts with their live status.
#[utoipa::path(
    get, path = "/api/v1/admin/accounts", tag = "accounts",
    params(AccountFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of accounts", body = Page<AccountView>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    )
)]
pub(super) async fn list_accounts(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(f): Query<AccountFilter>,
) -> Res<Page<AccountView>> {
    let page = PageReq::parse(f.page, f.limit)?;
    Ok(Json(
        s.services
            .list_accounts(&a, f.platform_type, f.group_id, f.status.as_deref(), page)
            .await?,
    ))
}

/// `POST /api/v1/admin/accounts` body: the seed's fields plus ours.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAccountBody {
    /// Unique name.
    name: String,
    /// `claude` (a subscription token, sent as Bearer) or `claude_console` (an API
    /// key, sent as `x-api-key`; the default).
    platform_type: Option<PlatformType>,
    /// Upstream base URL (default `https://api.anthropic.com`).
    request_url: Option<String>,
    /// The upstream credential; stored sealed, never shown again.
    secret_key: String,
    /// Group to put the account in.
    group_id: Option<i64>,
    /// Priority tier, lower first (default 0).
    priority: Option<i64>,
    /// Weight within the tier (default 1).
    weight: Option<i64>,
    /// Proxy URL (`http`, `https` or `socks5`).
    proxy: Option<String>,
    /// Most concurrent requests (0 = unlimited).
    concurrency: Option<i64>,
    /// Whether scheduled (default true).
    enabled: Option<bool>,
}

/// Adds an upstream account.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts", tag = "accounts",
    request_body = CreateAccountBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The account", body = AccountView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn create_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<CreateAccountBody>,
) -> Result<Response, AdminError> {
    let v = s
        .services
        .create_account(
            &a,
            CreateAccount {
                name: b.name,
                platform_type: b.platform_type,
                request_url: b.request_url,
                secret_key: b.secret_key,
                group_id: b.group_id,
                group: None,
                priority: b.priority,
                weight: b.weight,
                proxy: b.proxy,
                concurrency: b.concurrency,
                enabled: b.enabled,
                refresh_token: None,
                expires_at: None,
            },
        )
        .await?;
    Ok(created(v))
}

/// One account.
#[utoipa::path(
    get, path = "/api/v1/admin/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn get_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.get_account(&a, &id).await?))
}

/// `PATCH /api/v1/admin/accounts/{id}` body: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateAccountBody {
    /// New name.
    name: Option<String>,
    /// New platform type.
    platform_type: Option<PlatformType>,
    /// New upstream base URL.
    request_url: Option<String>,
    /// New upstream credential.
    secret_key: Option<String>,
    /// New group; `null` takes the account out of its group.
    #[serde(default, deserialize_with = "nullable")]
    group_id: Option<Option<i64>>,
    /// New priority tier.
    priority: Option<i64>,
    /// New weight.
    weight: Option<i64>,
    /// New proxy URL; `null` removes the proxy.
    #[serde(default, deserialize_with = "nullable")]
    proxy: Option<Option<String>>,
    /// New concurrency limit.
    concurrency: Option<i64>,
    /// Schedule the account or not.
    enabled: Option<bool>,
}

/// Changes an account.
#[utoipa::path(
    patch, path = "/api/v1/admin/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    request_body = UpdateAccountBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed account", body = AccountView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn update_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
    Body(b): Body<UpdateAccountBody>,
) -> Res<AccountView> {
    let u = UpdateAccount {
        name: b.name,
        platform_type: b.platform_type,
        request_url: b.request_url,
        secret_key: b.secret_key,
        group_id: b.group_id,
        priority: b.priority,
        weight: b.weight,
        proxy: b.proxy,
        concurrency: b.concurrency,
        enabled: b.enabled,
    };
    Ok(Json(s.services.update_account(&a, &id, u).await?))
}

/// Removes an account.
#[utoipa::path(
    delete, path = "/api/v1/admin/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed", body = OkMessage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn delete_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<OkMessage> {
    s.services.delete_account(&a, &id).await?;
    Ok(ok_message("account removed"))
}

/// Clears an account's health state (back to healthy).
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{id}/reset", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn reset_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.reset_account(&a, &id).await?))
}

/// Schedules an account again.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{id}/enable", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn enable_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.set_account_enabled(&a, &id, true).await?))
}

/// Stops scheduling an account.
#[utoipa::path(
    post, path = "/api/v1/admin/accounts/{id}/disable", tag = "accounts",
    params(("id" = String, Path, description = "Account id (`acc_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn disable_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.set_account_enabled(&a, &id, false).await?))
}

// ------------------------------------------------------------------ groups

/// Lists account groups (every user may read them, to pick one for a key).
#[utoipa::path(
    get, path = "/api/v1/groups", tag = "groups",
    params(Paging),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of groups", body = Page<Group>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
    )
)]
pub(super) async fn list_groups(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(p): Query<Paging>,
) -> Res<Page<Group>> {
    Ok(Json(s.services.list_groups(&a, p.req()?).await?))
}

/// `POST /api/v1/groups` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupBody {
    /// Unique name.
    name: String,
    /// Free text.
    #[serde(default)]
    remark: String,
}

/// Creates an account group.
#[utoipa::path(
    post, path = "/api/v1/groups", tag = "groups",
    request_body = GroupBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The group", body = Group),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn create_group(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<GroupBody>,
) -> Result<Response, AdminError> {
    Ok(created(
        s.services.create_group(&a, &b.name, &b.remark).await?,
    ))
}

/// One group.
#[utoipa::path(
    get, path = "/api/v1/groups/{id}", tag = "groups",
    params(("id" = i64, Path, description = "Group id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The group", body = Group),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn get_group(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<i64>,
) -> Res<Group> {
    Ok(Json(s.services.get_group(&a, id).await?))
}

/// `PATCH /api/v1/groups/{id}` body: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupPatch {
    /// New name (renamed on its accounts and keys too).
    name: Option<String>,
    /// New remark.
    remark: Option<String>,
}

/// Renames a group or changes its remark.
#[utoipa::path(
    patch, path = "/api/v1/groups/{id}", tag = "groups",
    params(("id" = i64, Path, description = "Group id")),
    request_body = GroupPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed group", body = Group),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn update_group(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<i64>,
    Body(b): Body<GroupPatch>,
) -> Res<Group> {
    Ok(Json(
        s.services
            .update_group(&a, id, b.name.as_deref(), b.remark.as_deref())
            .await?,
    ))
}

/// Deletes a group that no account or key uses.
#[utoipa::path(
    delete, path = "/api/v1/groups/{id}", tag = "groups",
    params(("id" = i64, Path, description = "Group id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = OkMessage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn delete_group(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<i64>,
) -> Res<OkMessage> {
    s.services.delete_group(&a, id).await?;
    Ok(ok_message("group deleted"))
}

// ------------------------------------------------------------------ keys

/// A key as the API shows it: never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Id (`key_…`).
    id: String,
    /// Display name.
    name: String,
    /// `prefix…last4`.
    key: String,
    /// The user who owns the key.
    user_id: Option<String>,
    /// Tenant billed for the key.
    tenant: String,
    /// Account group the key is served by; none = accounts without a group.
    group: Option<String>,
    /// Disabled keys are refused.
    enabled: bool,
    /// Revoked keys are refused for good.
    revoked: bool,
    /// When revoked.
    revoked_at: Option<DateTime<Utc>>,
    /// When the key stops working.
    expires_at: Option<DateTime<Utc>>,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// The key's limits (absent fields are not limited).
    limits: crate::limits::KeyLimits,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            key: k.display(),
            id: k.id.to_string(),
            name: k.name,
            user_id: k.user_id,
            tenant: k.tenant.to_string(),
            group: k.group,
            enabled: k.enabled,
            revoked: k.revoked_at.is_some(),
            revoked_at: k.revoked_at,
            expires_at: k.expires_at,
            created_at: k.created_at,
            limits: k.limits,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct KeyFilterQuery {
    /// Page number, from 1 (default 1).
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 10).
    limit: Option<i64>,
    /// Only this user's keys (administrators; a user sees only their own).
    user_id: Option<String>,
    /// Only this tenant's keys (administrators).
    tenant: Option<String>,
    /// List revoked keys too.
    #[serde(default)]
    include_revoked: bool,
}

/// Lists keys: a user's own, or any for an administrator.
#[utoipa::path(
    get, path = "/api/v1/api-keys", tag = "keys",
    params(KeyFilterQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of keys", body = Page<KeyView>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
    )
)]
pub(super) async fn list_keys(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<KeyFilterQuery>,
) -> Res<Page<KeyView>> {
    let page = PageReq::parse(q.page, q.limit)?;
    let p = s
        .services
        .list_keys(&a, q.user_id, q.tenant, q.include_revoked, page)
        .await?;
    Ok(Json(Page {
        items: p.items.into_iter().map(KeyView::from).collect(),
        total: p.total,
        page: p.page,
        limit: p.limit,
    }))
}

/// `POST /api/v1/api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKeyBody {
    /// Display name.
    name: String,
    /// Owner (administrators; a user's key is their own).
    user_id: Option<String>,
    /// Account group the key is served by.
    group_id: Option<i64>,
    /// Expiry: RFC 3339, or `YYYY-MM-DD HH:MM:SS` in the billing zone.
    expires_at: Option<String>,
}

/// A new key: the secret, shown this once, and the key as listed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CreatedKey {
    /// The key itself (`sk-…`); it is stored hashed and never shown again.
    key: String,
    /// The key as listings show it.
    api_key: KeyView,
}

/// Issues a key.
#[utoipa::path(
    post, path = "/api/v1/api-keys", tag = "keys",
    request_body = CreateKeyBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The key, with its secret shown this once", body = CreatedKey),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn create_key(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<CreateKeyBody>,
) -> Result<Response, AdminError> {
    let group = s.services.group_name_of(b.group_id).await?;
    let (key, secret) = s
        .services
        .create_key(
            &a,
            CreateKey {
                name: b.name,
                user_id: b.user_id,
                tenant: None,
                group,
                expires_at: b.expires_at,
            },
        )
        .await?;
    Ok(created(CreatedKey {
        key: secret.expose().to_owned(),
        api_key: KeyView::from(key),
    }))
}

/// One key.
#[utoipa::path(
    get, path = "/api/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn get_key(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<KeyView> {
    Ok(Json(s.services.get_key(&a, &id).await?.into()))
}

/// `PATCH /api/v1/api-keys/{id}` body: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateKeyBody {
    /// New name.
    name: Option<String>,
    /// New group; `null` = accounts without a group.
    #[serde(default, deserialize_with = "nullable")]
    group_id: Option<Option<i64>>,
    /// New expiry; `null` = never.
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    /// Enable or disable.
    enabled: Option<bool>,
    /// Model patterns (`claude-sonnet-*`); `null` or `[]` = every model (admin).
    #[serde(default, deserialize_with = "nullable")]
    allowed_models: Option<Option<Vec<String>>>,
    /// Requests per minute; `null` = unlimited (admin).
    #[serde(default, deserialize_with = "nullable")]
    rpm: Option<Option<u32>>,
    /// Requests in flight at once; `null` = unlimited (admin).
    #[serde(default, deserialize_with = "nullable")]
    max_concurrency: Option<Option<u32>>,
    /// USD per calendar day in BILLING_TIMEZONE (a decimal string or number); `null` = none.
    #[serde(default, deserialize_with = "crate::limits::usd_nullable")]
    #[schema(value_type = Option<String>)]
    daily_budget_usd: Option<Option<rust_decimal::Decimal>>,
    /// USD per calendar week; `null` = none.
    #[serde(default, deserialize_with = "crate::limits::usd_nullable")]
    #[schema(value_type = Option<String>)]
    weekly_budget_usd: Option<Option<rust_decimal::Decimal>>,
    /// USD per calendar month; `null` = none.
    #[serde(default, deserialize_with = "crate::limits::usd_nullable")]
    #[schema(value_type = Option<String>)]
    monthly_budget_usd: Option<Option<rust_decimal::Decimal>>,
    /// USD over the key's life; `null` = none.
    #[serde(default, deserialize_with = "crate::limits::usd_nullable")]
    #[schema(value_type = Option<String>)]
    total_budget_usd: Option<Option<rust_decimal::Decimal>>,
    /// Client address ranges (CIDR); `null` or `[]` = anywhere (admin).
    #[serde(default, deserialize_with = "nullable")]
    allowed_ips: Option<Option<Vec<String>>>,
}

/// Changes a key.
#[utoipa::path(
    patch, path = "/api/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    request_body = UpdateKeyBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed key", body = KeyView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn update_key(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
    Body(b): Body<UpdateKeyBody>,
) -> Res<KeyView> {
    // Visibility first, so a stranger's key id reads as not found before any
    // validation of the body says anything about it.
    let mut k = s.services.get_key(&a, &id).await?;
    let limits = crate::limits::LimitsPatch {
        allowed_models: b.allowed_models,
        rpm: b.rpm,
        max_concurrency: b.max_concurrency,
        daily_budget_usd: b.daily_budget_usd,
        weekly_budget_usd: b.weekly_budget_usd,
        monthly_budget_usd: b.monthly_budget_usd,
        total_budget_usd: b.total_budget_usd,
        allowed_ips: b.allowed_ips,
    };
    let plain =
        b.name.is_some() || b.group_id.is_some() || b.expires_at.is_some() || b.enabled.is_some();
    if plain || limits.is_empty() {
        let group = match b.group_id {
            None => None,
            Some(g) => Some(s.services.group_name_of(g).await?),
        };
        k = s
            .services
            .update_key(
                &a,
                &id,
                b.name.as_deref(),
                group.as_ref().map(|g| g.as_deref()),
                b.expires_at.as_ref().map(|e| e.as_deref()),
                b.enabled,
            )
            .await?;
    }
    if !limits.is_empty() {
        k = s.services.set_key_limits(&a, &id, &limits).await?;
    }
    Ok(Json(k.into()))
}

/// Revokes a key for good.
#[utoipa::path(
    delete, path = "/api/v1/api-keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The revoked key", body = KeyView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn revoke_key(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<KeyView> {
    Ok(Json(s.services.revoke_key(&a, &id).await?.into()))
}

// ------------------------------------------------------------------ users

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UserFilter {
    /// Page number, from 1 (default 1).
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 10).
    limit: Option<i64>,
    /// Only this tenant's users.
    tenant: Option<String>,
}

/// Lists users.
#[utoipa::path(
    get, path = "/api/v1/admin/users", tag = "users",
    params(UserFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of users", body = Page<User>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    )
)]
pub(super) async fn list_users(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<UserFilter>,
) -> Res<Page<User>> {
    let page = PageReq::parse(q.page, q.limit)?;
    Ok(Json(
        s.services.list_users(&a, q.tenant.as_deref(), page).await?,
    ))
}

/// `POST /api/v1/admin/users` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUserBody {
    /// Unique login name.
    username: String,
    /// Unique e-mail address.
    email: String,
    /// 8 to 256 characters.
    password: String,
    /// Role (default `user`).
    role: Option<Role>,
    /// Tenant (default: a new tenant named after the user).
    tenant: Option<String>,
}

/// Creates a user.
#[utoipa::path(
    post, path = "/api/v1/admin/users", tag = "users",
    request_body = CreateUserBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The user", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn create_user(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<CreateUserBody>,
) -> Result<Response, AdminError> {
    let u = s
        .services
        .create_user(
            &a,
            CreateUser {
                username: b.username,
                email: b.email,
                password: b.password,
                role: b.role,
                tenant: b.tenant,
            },
        )
        .await?;
    Ok(created(u))
}

/// One user.
#[utoipa::path(
    get, path = "/api/v1/admin/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id (`usr_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn get_user(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<User> {
    if !a.is_admin() {
        return Err(
            crate::services::ServiceError::Forbidden("administrator role required".into()).into(),
        );
    }
    s.services
        .users
        .get(&id)
        .await
        .map_err(crate::services::ServiceError::from)?
        .map(Json)
        .ok_or_else(|| AdminError::not_found("user not found"))
}

/// `PATCH /api/v1/admin/users/{id}` body: absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUserBody {
    /// New e-mail address.
    email: Option<String>,
    /// New role (the last enabled administrator cannot lose it).
    role: Option<Role>,
    /// Enable or disable; a disabled user's tokens and keys stop working.
    enabled: Option<bool>,
    /// Move to another tenant.
    tenant: Option<String>,
    /// New password; every token issued before stops working.
    password: Option<String>,
}

/// Changes a user.
#[utoipa::path(
    patch, path = "/api/v1/admin/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id (`usr_…`)")),
    request_body = UpdateUserBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed user", body = User),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn update_user(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
    Body(b): Body<UpdateUserBody>,
) -> Res<User> {
    Ok(Json(
        s.services
            .update_user(
                &a,
                &id,
                UserChange {
                    email: b.email,
                    role: b.role,
                    enabled: b.enabled,
                    tenant: b.tenant,
                    password: b.password,
                },
            )
            .await?,
    ))
}

/// Deletes a user and revokes their keys.
#[utoipa::path(
    delete, path = "/api/v1/admin/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id (`usr_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = OkMessage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub(super) async fn delete_user(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<OkMessage> {
    s.services.delete_user(&a, &id).await?;
    Ok(ok_message("user deleted; their keys are revoked"))
}

/// Lists tenants.
#[utoipa::path(
    get, path = "/api/v1/admin/tenants", tag = "users",
    params(Paging),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of tenants", body = Page<Tenant>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    )
)]
pub(super) async fn list_tenants(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(p): Query<Paging>,
) -> Res<Page<Tenant>> {
    Ok(Json(s.services.list_tenants(&a, p.req()?).await?))
}

/// `PATCH /api/v1/admin/tenants/{id}` body: absent fields stay, `null` clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantPatch {
    /// USD per calendar month for all the tenant's keys together (decimal string or
    /// number); `null` = none.
    #[serde(default, deserialize_with = "crate::limits::usd_nullable")]
    #[schema(value_type = Option<String>)]
    monthly_budget_usd: Option<Option<rust_decimal::Decimal>>,
    /// IANA zone of the tenant's budget month; `null` = `BILLING_TIMEZONE`.
    #[serde(default, deserialize_with = "nullable")]
    timezone: Option<Option<String>>,
}

/// Sets a tenant's budget and zone.
#[utoipa::path(
    patch, path = "/api/v1/admin/tenants/{id}", tag = "users",
    params(("id" = String, Path, description = "Tenant id")),
    request_body = TenantPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The changed tenant", body = Tenant),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn update_tenant(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
    Body(b): Body<TenantPatch>,
) -> Res<Tenant> {
    Ok(Json(
        s.services
            .update_tenant(&a, &id, b.monthly_budget_usd, b.timezone)
            .await?,
    ))
}

/// Every limit of a key with its window's usage, what is reserved, what remains and
/// when it resets.
#[utoipa::path(
    get, path = "/api/v1/api-keys/{id}/limits", tag = "keys",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The key's limits as they stand", body = [crate::limits::engine::LimitState]),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn key_limits(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<Vec<crate::limits::engine::LimitState>> {
    let key = s.services.get_key(&a, &id).await?;
    let tenant = match s.services.users.tenant(key.tenant.as_str()).await {
        Ok(t) => t,
        Err(e) => return Err(crate::services::ServiceError::from(e).into()),
    };
    let budget = tenant.and_then(|t| {
        t.monthly_budget_usd
            .map(|b| crate::limits::engine::TenantBudget {
                tenant: t.id.to_string(),
                monthly_budget_usd: b,
                tz: t.timezone.and_then(|z| z.parse().ok()),
            })
    });
    let report = s
        .limiter
        .report(&key, &key.limits, budget.as_ref(), Utc::now())
        .await
        .map_err(crate::services::ServiceError::from)?;
    Ok(Json(report))
}

// ------------------------------------------------------------------ reads

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageParams {
    /// First day `YYYY-MM-DD` (default: 29 days before `to`).
    from: Option<String>,
    /// Last day `YYYY-MM-DD` (default: today in `tz`).
    to: Option<String>,
    /// `hour` (a range of at most 31 days), `day` (default), `month`, `year` or
    /// `total`; hours and days are those of `tz`.
    granularity: Option<String>,
    /// Comma list of `tenant`, `key`, `account`, `model`.
    group_by: Option<String>,
    /// `UTC` (default), an offset (`+08:00`) or an IANA zone.
    tz: Option<String>,
    /// Only this tenant (a user: only their own).
    tenant: Option<String>,
    /// Only this key.
    api_key: Option<String>,
    /// Only this account.
    account: Option<String>,
    /// Only this model.
    model: Option<String>,
}

/// Usage totals with exact costs, bucketed and grouped.
#[utoipa::path(
    get, path = "/api/v1/usage", tag = "reads",
    params(UsageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Usage rows", body = UsageAnswer),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn usage(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<UsageParams>,
) -> Res<UsageAnswer> {
    let q = UsageQuery {
        from: q.from,
        to: q.to,
        granularity: q.granularity,
        group_by: q.group_by,
        tz: q.tz,
        tenant: q.tenant,
        api_key: q.api_key,
        account: q.account,
        model: q.model,
    };
    Ok(Json(s.services.usage(&a, q).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectionParams {
    /// First day `YYYY-MM-DD` (default: 29 days before `to`).
    from: Option<String>,
    /// Last day `YYYY-MM-DD` (default: today in `tz`).
    to: Option<String>,
    /// `UTC` (default), an offset (`+08:00`) or an IANA zone: the days are its days.
    tz: Option<String>,
    /// Only this tenant (a user: only their own).
    tenant: Option<String>,
    /// Only this key.
    api_key: Option<String>,
}

/// Requests refused by a tenant limit (`rpm`, `max_concurrency`, a budget, …), counted
/// per limit over whole days. Read from the request log, so within its retention.
#[utoipa::path(
    get, path = "/api/v1/usage/rejections", tag = "reads",
    params(RejectionParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rejections per limit, most first", body = RejectionsAnswer),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn rejections(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<RejectionParams>,
) -> Res<RejectionsAnswer> {
    let q = RejectionQuery {
        from: q.from,
        to: q.to,
        tz: q.tz,
        tenant: q.tenant,
        api_key: q.api_key,
    };
    Ok(Json(s.services.rejections(&a, q).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StatementParams {
    /// The tenant (required for administrators; a user gets their own).
    tenant: Option<String>,
    /// `YYYY-MM`, UTC (default: this month).
    month: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// A tenant's monthly statement.
#[utoipa::path(
    get, path = "/api/v1/statements", tag = "reads",
    params(StatementParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The statement, as JSON or (`format=csv`) CSV", content(
            (crate::services::schemas::Statement = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn statement(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<StatementParams>,
) -> Result<Response, AdminError> {
    let csv = match q.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        _ => return Err(AdminError::bad_request("format must be json or csv")),
    };
    let st = s
        .services
        .statement(&a, q.tenant, q.month.as_deref())
        .await?;
    if csv {
        Ok((
            [(http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            st.to_csv(),
        )
            .into_response())
    } else {
        Ok(Json(st).into_response())
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogParams {
    /// Items, 1 to 100 (default 10).
    limit: Option<i64>,
    /// Only entries below this log position (the previous page's `next_before_position`).
    before_position: Option<u64>,
    /// Only this tenant (a user: only their own).
    tenant: Option<String>,
    /// Only this key.
    api_key: Option<String>,
    /// Only this account.
    account: Option<String>,
    /// Only this model.
    model: Option<String>,
    /// Only this outcome.
    outcome: Option<String>,
    /// Only this request id.
    request_id: Option<String>,
    /// Only requests this limit refused (`rpm`, `daily_budget_usd`, …).
    rejected_by: Option<String>,
    /// Finished at or after (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Finished before (RFC 3339).
    to: Option<DateTime<Utc>>,
}

/// A cursor-paged list (logs are append-only: pass `next_before_position` back).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Cursor<T> {
    /// Newest first.
    items: Vec<T>,
    /// Page size.
    limit: u32,
    /// Where the next page starts; none on the last page.
    next_before_position: Option<u64>,
}

fn cursor_limit(limit: Option<i64>) -> Result<u32, AdminError> {
    let l = limit.unwrap_or(10);
    if !(1..=100).contains(&l) {
        return Err(AdminError::bad_request("limit must be between 1 and 100"));
    }
    Ok(u32::try_from(l).unwrap_or(10))
}

fn short(v: Option<String>) -> Result<Option<String>, AdminError> {
    match v {
        Some(s) if s.len() > 256 => Err(AdminError::bad_request("filter value is too long")),
        other => Ok(other),
    }
}

/// The request log: metadata and usage of each request, newest first.
#[utoipa::path(
    get, path = "/api/v1/logs", tag = "reads",
    params(LogParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of requests", body = Cursor<crate::services::schemas::RequestLogEntry>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
pub(super) async fn logs(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<LogParams>,
) -> Res<Cursor<projections::read::RequestLogEntry>> {
    let limit = cursor_limit(q.limit)?;
    let filter = projections::read::RequestLogFilter {
        tenant: short(q.tenant)?,
        api_key: short(q.api_key)?,
        account: short(q.account)?,
        model: short(q.model)?,
        outcome: short(q.outcome)?,
        request_id: short(q.request_id)?,
        rejected_by: short(q.rejected_by)?,
        from_ms: q.from.map(|t| t.timestamp_millis()),
        to_ms: q.to.map(|t| t.timestamp_millis()),
        before_position: q.before_position,
    };
    let items = s.services.request_log(&a, filter, limit).await?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.position))
        .flatten();
    Ok(Json(Cursor {
        items,
        limit,
        next_before_position: next,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    /// Items, 1 to 100 (default 10).
    limit: Option<i64>,
    /// Only entries below this log position (the previous page's `next_before_position`).
    before_position: Option<u64>,
    /// `admin.action` or `auth.failed`.
    kind: Option<String>,
    /// Only this actor (a user id, or `cli`).
    actor: Option<String>,
    /// At or after (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Before (RFC 3339).
    to: Option<DateTime<Utc>>,
}

/// The audit log: administrative actions and authentication failures, newest first.
#[utoipa::path(
    get, path = "/api/v1/admin/audit", tag = "reads",
    params(AuditParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of audit entries", body = Cursor<crate::services::schemas::AuditEntry>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    )
)]
pub(super) async fn audit(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<AuditParams>,
) -> Res<Cursor<projections::read::AuditEntry>> {
    let limit = cursor_limit(q.limit)?;
    let filter = projections::read::AuditFilter {
        kind: short(q.kind)?,
        actor: short(q.actor)?,
        from_ms: q.from.map(|t| t.timestamp_millis()),
        to_ms: q.to.map(|t| t.timestamp_millis()),
        before_position: q.before_position,
    };
    let items = s.services.audit_log(&a, filter, limit).await?;
    let next = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.position))
        .flatten();
    Ok(Json(Cursor {
        items,
        limit,
        next_before_position: next,
    }))
}
