//! Bearer-token authentication of admin requests, and the `/api/v1/auth/*` handlers.

use super::error::{
    AdminError, BadRequest, Body, Conflict, Forbidden, TooManyRequests, Unauthorized,
};
use super::routes::{ok_message, OkMessage};
use crate::app::AppState;
use crate::identity::User;
use crate::services::users::CreateUser;
use crate::services::Actor;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use serde::Deserialize;
use std::net::SocketAddr;
use utoipa::ToSchema;

/// The logged-in user making the request. Rejection: 40101.
pub struct Auth(pub Actor);

impl Auth {
    /// The user behind the token.
    pub fn user(&self) -> Option<&User> {
        self.0.user()
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer "))?;
    Some(v[7..].trim()).filter(|t| !t.is_empty() && t.len() <= 4096)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let Some(token) = bearer(parts) else {
            state
                .services
                .record_admin_auth_failure(client, "missing bearer token");
            return Err(AdminError::unauthenticated(
                "missing bearer token: log in at POST /api/v1/auth/login",
            ));
        };
        match state.services.authenticate_token(token).await {
            Ok(user) => Ok(Auth(Actor::User(Box::new(user)))),
            Err(e) => {
                state
                    .services
                    .record_admin_auth_failure(client, "invalid or expired token");
                Err(e.into())
            }
        }
    }
}

/// `POST /api/v1/auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /api/v1/auth/login` → `{token, expires_at, user}`.
#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    summary = "Logs in: a bearer token for the other routes",
    request_body = LoginBody,
    responses(
        (status = 200, description = "A bearer token for the other routes", body = crate::services::users::LoginResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Body(b): Body<LoginBody>,
) -> Result<Json<crate::services::users::LoginResult>, AdminError> {
    Ok(Json(
        state
            .services
            .login(&b.username, &b.password, Some(addr.ip()))
            .await?,
    ))
}

/// `POST /api/v1/auth/register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// User name.
    pub username: String,
    /// E-mail.
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /api/v1/auth/register` (only when `REGISTRATION_ENABLED=true`).
#[utoipa::path(
    post, path = "/api/v1/auth/register", tag = "auth",
    summary = "Registers a user in a tenant of their own (only when `REGISTRATION_ENABLED=true`)",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The new user, in a tenant of their own", body = User),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    Body(b): Body<RegisterBody>,
) -> Result<(http::StatusCode, Json<User>), AdminError> {
    let user = state
        .services
        .register(CreateUser {
            username: b.username,
            email: b.email,
            password: b.password,
            role: None,
            tenant: None,
        })
        .await?;
    Ok((http::StatusCode::CREATED, Json(user)))
}

/// `GET /api/v1/auth/me`.
#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    summary = "The logged-in user",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The logged-in user", body = User),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn me(auth: Auth) -> Result<Json<User>, AdminError> {
    auth.user()
        .cloned()
        .map(Json)
        .ok_or_else(|| AdminError::unauthenticated("not logged in"))
}

/// `POST /api/v1/auth/password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// The current password.
    pub old_password: String,
    /// The new one.
    pub new_password: String,
}

/// `POST /api/v1/auth/password`: changes one's own password; every token issued
/// before stops working.
#[utoipa::path(
    post, path = "/api/v1/auth/password", tag = "auth",
    summary = "Changes one's own password; every token issued before stops working",
    request_body = PasswordBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; log in again", body = OkMessage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn password(
    State(state): State<AppState>,
    auth: Auth,
    Body(b): Body<PasswordBody>,
) -> Result<Json<OkMessage>, AdminError> {
    let user = auth
        .user()
        .ok_or_else(|| AdminError::unauthenticated("not logged in"))?;
    state
        .services
        .change_own_password(user, &b.old_password, b.new_password)
        .await?;
    Ok(ok_message("password changed; log in again"))
}
