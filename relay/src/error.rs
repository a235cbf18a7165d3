//! Errors returned to clients on `/v1/*`, in Anthropic's error shape so SDKs and
//! Claude Code react to them as they would to Anthropic's own.
//!
//! `{"type":"error","error":{"type":"…","message":"…"},"request_id":"…"}`

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// An error answer for the Messages API surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Anthropic error type (`invalid_request_error`, `authentication_error`, …).
    pub error_type: &'static str,
    /// Human-readable message; never contains internal details or secrets.
    pub message: String,
    /// Seconds the client should wait, sent as `retry-after`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An error for a bare status (framework and protocol refusals), with the error
    /// type Anthropic uses for that status.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let error_type = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        Self::new(status, error_type, message)
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401 `authentication_error`.
    pub fn authentication(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// 403 `permission_error`.
    pub fn permission(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 404 `not_found_error`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// 413 `request_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("Request exceeds the maximum allowed number of bytes ({limit})"),
        )
    }

    /// 415 for a body that is not JSON, reported as `invalid_request_error`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "content-type must be application/json",
        )
    }

    /// 402 `billing_error`: a budget is spent. SDKs and Claude Code do not retry it.
    pub fn billing(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYMENT_REQUIRED, "billing_error", message)
    }

    /// 429 `rate_limit_error`.
    pub fn rate_limited(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message);
        e.retry_after = retry_after;
        e
    }

    /// 529 `overloaded_error`.
    pub fn overloaded(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        let status = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut e = Self::new(status, "overloaded_error", message);
        e.retry_after = retry_after;
        e
    }

    /// 503 `api_error` (the relay itself cannot serve right now).
    pub fn unavailable(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", message);
        e.retry_after = retry_after;
        e
    }

    /// 500 `api_error`; the cause is logged by the caller, never sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "Internal server error",
        )
    }

    /// 502 `api_error` when the upstream could not be reached or answered garbage.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", message)
    }

    /// The JSON body, with the relay's request id when known.
    pub fn body(&self, request_id: Option<&str>) -> Bytes {
        let mut v = serde_json::json!({
            "type": "error",
            "error": { "type": self.error_type, "message": self.message },
        });
        if let Some(id) = request_id {
            v["request_id"] = serde_json::Value::String(id.to_owned());
        }
        Bytes::from(v.to_string())
    }

    /// Builds the response, tagging it with the request id.
    pub fn into_response_with_id(self, request_id: Option<&str>) -> Response {
        let mut resp = (self.status, self.body(request_id)).into_response();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            h.insert("request-id", id);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with_id(None)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error_type,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_anthropic_shape() {
        let e = ApiError::authentication("invalid x-api-key");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Some("req_1"))).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], "invalid x-api-key");
        assert_eq!(v["request_id"], "req_1");
        assert_eq!(ApiError::overloaded("x", None).status.as_u16(), 529);
    }
}
