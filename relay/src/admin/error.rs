//! The admin API's error: `{"error": "<message>", "code": <int>}`, with the HTTP status
//! matching the code, and extractors whose rejections become 40001.

use crate::services::ServiceError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::{ToResponse, ToSchema};

/// An admin API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// Seed code: 40001, 40101, 40301, 40401, 40901, 42901, 50001.
    pub code: u32,
    /// What went wrong, for the client; never internal details.
    pub message: String,
    /// Seconds to wait (42901).
    pub retry_after: Option<u64>,
}

impl AdminError {
    /// 40001.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(40001, m)
    }

    /// 40101.
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(40101, m)
    }

    /// 40401.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(40401, m)
    }

    fn new(code: u32, m: impl Into<String>) -> Self {
        Self {
            code,
            message: m.into(),
            retry_after: None,
        }
    }

    /// The HTTP status of the code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(u16::try_from(self.code / 100).unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ServiceError> for AdminError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BadRequest(m) => Self::new(40001, m),
            ServiceError::Unauthenticated(m) => Self::new(40101, m),
            ServiceError::Forbidden(m) => Self::new(40301, m),
            ServiceError::NotFound(what) => Self::new(40401, format!("{what} not found")),
            ServiceError::Conflict(m) => Self::new(40901, m),
            ServiceError::Throttled(m, wait) => Self {
                retry_after: Some(wait),
                ..Self::new(42901, m)
            },
            ServiceError::Internal(_) => Self::new(50001, "internal error"),
        }
    }
}

/// The body of every admin API error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Seed code; the HTTP status is the code divided by 100.
    #[schema(example = 40001)]
    pub code: u32,
}

/// Bad input: not JSON, wrong types, unknown fields, values out of range (40001).
#[derive(ToResponse)]
pub struct BadRequest(pub ErrorBody);

/// No bearer token, or one that is expired, forged, or of a disabled user (40101).
#[derive(ToResponse)]
pub struct Unauthorized(pub ErrorBody);

/// Logged in but not allowed: the administrator role is required (40301).
#[derive(ToResponse)]
pub struct Forbidden(pub ErrorBody);

/// No such object, or one the caller may not see (40401).
#[derive(ToResponse)]
pub struct NotFound(pub ErrorBody);

/// A duplicate, or an object still in use (40901).
#[derive(ToResponse)]
pub struct Conflict(pub ErrorBody);

/// Too many failed logins; wait the seconds in `Retry-After` (42901).
#[derive(ToResponse)]
#[response(headers(("retry-after" = u64, description = "Seconds to wait")))]
pub struct TooManyRequests(pub ErrorBody);

/// Something failed on the relay's side; the detail is logged, never returned (50001).
#[derive(ToResponse)]
pub struct Internal(pub ErrorBody);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: self.message,
            code: self.code,
        };
        let mut r = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// Longest message quoted back from a rejection (a 1 MB string is not echoed).
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(300).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// A JSON body whose rejections (not JSON, wrong types, unknown fields) are 40001.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) => Err(AdminError::bad_request(clip(&e.body_text()))),
        }
    }
}

/// Query parameters whose rejections are 40001.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(AdminError::bad_request(clip(&e.body_text()))),
        }
    }
}

/// A path parameter whose rejections are 40401 (a malformed id names nothing).
pub struct Id<T>(pub T);

impl<S, T> FromRequestParts<S> for Id<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Id(v)),
            Err(_) => Err(AdminError::not_found("not found")),
        }
    }
}

/// Reads `Option<Option<T>>` so that a PATCH can tell "absent" from `null`.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(d).map(Some)
}

/// 404 in the admin shape for unknown `/api/v1/…` paths.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    AdminError::not_found(format!("no route {}", clip(uri.path()))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_their_http_status() {
        for (code, status) in [
            (40001, 400),
            (40101, 401),
            (40301, 403),
            (40401, 404),
            (40901, 409),
            (42901, 429),
            (50001, 500),
        ] {
            assert_eq!(AdminError::new(code, "x").status().as_u16(), status);
        }
    }
}
