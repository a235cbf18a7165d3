//! Admin API routes: accounts, groups, keys, users, tenants, and the read side.

use super::auth::{self, Auth};
use super::error::{not_found, nullable, AdminError, Body, Id, Query};
use crate::app::AppState;
use crate::groups::Group;
use crate::identity::{Role, Tenant, User};
use crate::keys::ApiKey;
use crate::services::accounts::{AccountView, CreateAccount, PlatformType, UpdateAccount};
use crate::services::keys::CreateKey;
use crate::services::reads::{UsageAnswer, UsageQuery};
use crate::services::users::{CreateUser, UserChange};
use crate::services::{Page, PageReq};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/statements", get(statement))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/admin/audit", get(audit))
        .route("/api/v1/status", get(crate::ops::status))
        .route("/api/v1/{*rest}", axum::routing::any(not_found))
}

/// `page` and `limit` of every list.
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    page: Option<i64>,
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

fn ok_message(m: &str) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "message": m }))
}

// ------------------------------------------------------------------ accounts

#[derive(Debug, Deserialize)]
struct AccountFilter {
    page: Option<i64>,
    limit: Option<i64>,
    platform_type: Option<PlatformType>,
    group_id: Option<i64>,
    status: Option<String>,
}

async fn list_accounts(
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccountBody {
    name: String,
    platform_type: Option<PlatformType>,
    request_url: Option<String>,
    secret_key: String,
    group_id: Option<i64>,
    priority: Option<i64>,
    weight: Option<i64>,
    proxy: Option<String>,
    concurrency: Option<i64>,
    enabled: Option<bool>,
}

async fn create_account(
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

async fn get_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.get_account(&a, &id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateAccountBody {
    name: Option<String>,
    platform_type: Option<PlatformType>,
    request_url: Option<String>,
    secret_key: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    group_id: Option<Option<i64>>,
    priority: Option<i64>,
    weight: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    proxy: Option<Option<String>>,
    concurrency: Option<i64>,
    enabled: Option<bool>,
}

async fn update_account(
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

async fn delete_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<serde_json::Value> {
    s.services.delete_account(&a, &id).await?;
    Ok(ok_message("account removed"))
}

async fn reset_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.reset_account(&a, &id).await?))
}

async fn enable_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.set_account_enabled(&a, &id, true).await?))
}

async fn disable_account(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<AccountView> {
    Ok(Json(s.services.set_account_enabled(&a, &id, false).await?))
}

// ------------------------------------------------------------------ groups

async fn list_groups(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(p): Query<Paging>,
) -> Res<Page<Group>> {
    Ok(Json(s.services.list_groups(&a, p.req()?).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
    #[serde(default)]
    remark: String,
}

async fn create_group(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body(b): Body<GroupBody>,
) -> Result<Response, AdminError> {
    Ok(created(
        s.services.create_group(&a, &b.name, &b.remark).await?,
    ))
}

async fn get_group(State(s): State<AppState>, Auth(a): Auth, Id(id): Id<i64>) -> Res<Group> {
    Ok(Json(s.services.get_group(&a, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupPatch {
    name: Option<String>,
    remark: Option<String>,
}

async fn update_group(
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

async fn delete_group(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<i64>,
) -> Res<serde_json::Value> {
    s.services.delete_group(&a, id).await?;
    Ok(ok_message("group deleted"))
}

// ------------------------------------------------------------------ keys

/// A key as the API shows it: never the secret.
#[derive(Debug, Serialize)]
pub struct KeyView {
    id: String,
    name: String,
    /// `prefix…last4`.
    key: String,
    user_id: Option<String>,
    tenant: String,
    group: Option<String>,
    enabled: bool,
    revoked: bool,
    revoked_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
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
        }
    }
}

#[derive(Debug, Deserialize)]
struct KeyFilterQuery {
    page: Option<i64>,
    limit: Option<i64>,
    user_id: Option<String>,
    tenant: Option<String>,
    #[serde(default)]
    include_revoked: bool,
}

async fn list_keys(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    name: String,
    user_id: Option<String>,
    group_id: Option<i64>,
    expires_at: Option<String>,
}

async fn create_key(
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
    Ok(created(serde_json::json!({
        "key": secret.expose(),
        "api_key": KeyView::from(key),
    })))
}

async fn get_key(State(s): State<AppState>, Auth(a): Auth, Id(id): Id<String>) -> Res<KeyView> {
    Ok(Json(s.services.get_key(&a, &id).await?.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKeyBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    group_id: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    enabled: Option<bool>,
}

async fn update_key(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
    Body(b): Body<UpdateKeyBody>,
) -> Res<KeyView> {
    // Visibility first, so a stranger's key id reads as not found before any
    // validation of the body says anything about it.
    s.services.get_key(&a, &id).await?;
    let group = match b.group_id {
        None => None,
        Some(g) => Some(s.services.group_name_of(g).await?),
    };
    let k = s
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
    Ok(Json(k.into()))
}

async fn revoke_key(State(s): State<AppState>, Auth(a): Auth, Id(id): Id<String>) -> Res<KeyView> {
    Ok(Json(s.services.revoke_key(&a, &id).await?.into()))
}

// ------------------------------------------------------------------ users

#[derive(Debug, Deserialize)]
struct UserFilter {
    page: Option<i64>,
    limit: Option<i64>,
    tenant: Option<String>,
}

async fn list_users(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(q): Query<UserFilter>,
) -> Res<Page<User>> {
    let page = PageReq::parse(q.page, q.limit)?;
    Ok(Json(
        s.services.list_users(&a, q.tenant.as_deref(), page).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserBody {
    username: String,
    email: String,
    password: String,
    role: Option<Role>,
    tenant: Option<String>,
}

async fn create_user(
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

async fn get_user(State(s): State<AppState>, Auth(a): Auth, Id(id): Id<String>) -> Res<User> {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUserBody {
    email: Option<String>,
    role: Option<Role>,
    enabled: Option<bool>,
    tenant: Option<String>,
    password: Option<String>,
}

async fn update_user(
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

async fn delete_user(
    State(s): State<AppState>,
    Auth(a): Auth,
    Id(id): Id<String>,
) -> Res<serde_json::Value> {
    s.services.delete_user(&a, &id).await?;
    Ok(ok_message("user deleted; their keys are revoked"))
}

async fn list_tenants(
    State(s): State<AppState>,
    Auth(a): Auth,
    Query(p): Query<Paging>,
) -> Res<Page<Tenant>> {
    Ok(Json(s.services.list_tenants(&a, p.req()?).await?))
}

// ------------------------------------------------------------------ reads

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    group_by: Option<String>,
    tz: Option<String>,
    tenant: Option<String>,
    api_key: Option<String>,
    account: Option<String>,
    model: Option<String>,
}

async fn usage(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementParams {
    tenant: Option<String>,
    month: Option<String>,
    format: Option<String>,
}

async fn statement(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    limit: Option<i64>,
    before_position: Option<u64>,
    tenant: Option<String>,
    api_key: Option<String>,
    account: Option<String>,
    model: Option<String>,
    outcome: Option<String>,
    request_id: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// A cursor-paged list (logs are append-only: pass `next_before_position` back).
#[derive(Debug, Serialize)]
struct Cursor<T> {
    items: Vec<T>,
    limit: u32,
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

async fn logs(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    limit: Option<i64>,
    before_position: Option<u64>,
    kind: Option<String>,
    actor: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

async fn audit(
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
