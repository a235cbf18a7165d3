//! What the relay reads from a client request: the credential, and from the body only
//! `model`, `stream` and the Claude Code session id. The body bytes themselves are
//! forwarded untouched; parsing borrows from them.

use crate::error::ApiError;
use http::HeaderMap;
use serde::Deserialize;
use std::borrow::Cow;

/// The client credential: `x-api-key` wins over `Authorization: Bearer`, as upstream
/// does. Empty when neither is present.
pub fn credential(headers: &HeaderMap) -> &str {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let k = k.trim();
        if !k.is_empty() {
            return k;
        }
    }
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let v = v.trim();
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| v[7..].trim())
        })
        .unwrap_or("")
}

/// The part of a presented key that may be recorded: at most 12 characters, and never
/// more than a third of a short key.
pub fn loggable_prefix(presented: &str) -> Option<String> {
    let n = presented.chars().count();
    if n == 0 {
        return None;
    }
    Some(presented.chars().take(12.min(n / 3)).collect())
}

/// The fields of a Messages / count_tokens body the relay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    /// `model`.
    pub model: Cow<'a, str>,
    /// `stream` (false when absent).
    pub stream: bool,
    /// The Claude Code session id from `metadata.user_id`, if any.
    pub session: Option<String>,
    /// `max_tokens`, when present (budgets reserve it at the output price).
    pub max_tokens: Option<u64>,
    /// The most web searches the request allows (budgets reserve them at the per-search
    /// price): the sum of the web search tools' `max_uses`, [`UNCAPPED_USES`] for one
    /// without it; 0 without a web search tool.
    pub max_searches: u64,
    /// Input tokens the server tools may add (search results, fetched pages), which the
    /// body does not show: [`TOKENS_PER_SEARCH`] per allowed search, and per allowed
    /// fetch its tool's `max_content_tokens` or [`TOKENS_PER_FETCH`].
    pub tool_input_tokens: u64,
}

/// Uses reserved for a server tool without `max_uses` (upstream sets no cap; a longer
/// run settles to its true cost after the fact).
pub const UNCAPPED_USES: u64 = 10;
/// Input tokens reserved per allowed web search (its results), an estimate.
pub const TOKENS_PER_SEARCH: u64 = 5_000;
/// Input tokens reserved per allowed web fetch without `max_content_tokens`.
pub const TOKENS_PER_FETCH: u64 = 10_000;

/// Longest `model` accepted; anything longer is refused before it is sent or recorded.
pub const MAX_MODEL_LEN: usize = 256;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    messages: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    metadata: Option<Metadata<'a>>,
    #[serde(default, borrow)]
    tools: Option<Vec<ToolHead<'a>>>,
}

/// A tool definition, as far as budgets care: its type and `max_uses`.
#[derive(Deserialize)]
struct ToolHead<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    max_uses: Option<u64>,
    #[serde(default)]
    max_content_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(default, borrow)]
    user_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UserIdJson<'a> {
    #[serde(default, borrow)]
    session_id: Option<Cow<'a, str>>,
}

/// Longest session id honoured for stickiness.
const MAX_SESSION_LEN: usize = 200;

/// Parses the body. The whole document is validated (serde_json checks it to the end),
/// so malformed JSON is refused before anything is forwarded.
pub fn parse_body(body: &[u8]) -> Result<RequestInfo<'_>, ApiError> {
    // serde would read a struct from a JSON array too; the Messages API takes an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "request body must be a JSON object",
        ));
    }
    let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::invalid_request(format!("invalid request body: {e}"))
        } else {
            ApiError::invalid_request(format!("request body is not valid JSON: {e}"))
        }
    })?;
    let model = head
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid_request("model: Field required"))?;
    if head.messages.is_none() {
        return Err(ApiError::invalid_request("messages: Field required"));
    }
    if model.len() > MAX_MODEL_LEN {
        return Err(ApiError::invalid_request(format!(
            "model: must be at most {MAX_MODEL_LEN} characters"
        )));
    }
    let session = head
        .metadata
        .and_then(|m| m.user_id)
        .and_then(|u| session_from_user_id(&u));
    let (mut max_searches, mut tool_input_tokens) = (0u64, 0u64);
    for t in head.tools.iter().flatten() {
        let kind = t.kind.as_deref().unwrap_or_default();
        let uses = t.max_uses.unwrap_or(UNCAPPED_USES);
        let per_use = if kind.starts_with("web_search") {
            max_searches = max_searches.saturating_add(uses);
            TOKENS_PER_SEARCH
        } else if kind.starts_with("web_fetch") {
            t.max_content_tokens.unwrap_or(TOKENS_PER_FETCH)
        } else {
            continue;
        };
        tool_input_tokens = tool_input_tokens.saturating_add(uses.saturating_mul(per_use));
    }
    Ok(RequestInfo {
        model,
        stream: head.stream.unwrap_or(false),
        session,
        max_tokens: head.max_tokens,
        max_searches,
        tool_input_tokens,
    })
}

/// The session id inside `metadata.user_id`: a JSON string
/// `{"device_id":…,"session_id":…}` (Claude Code ≥ 2.1.78) or the legacy
/// `user_<hex>_account_<uuid>_session_<uuid>`.
pub fn session_from_user_id(user_id: &str) -> Option<String> {
    let s = user_id.trim();
    let found = if s.starts_with('{') {
        serde_json::from_str::<UserIdJson<'_>>(s)
            .ok()
            .and_then(|u| u.session_id)
            .map(Cow::into_owned)
    } else {
        s.rfind("_session_")
            .map(|i| s[i + "_session_".len()..].to_owned())
    };
    found.filter(|v| !v.is_empty() && v.len() <= MAX_SESSION_LEN)
}

/// The session id from the `X-Claude-Code-Session-Id` header, if sane.
pub fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-claude-code-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_SESSION_LEN)
}

/// Whether the content type is JSON (`application/json`, any parameters).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credential_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), "");
        h.insert("authorization", HeaderValue::from_static("Bearer rk-abc"));
        assert_eq!(credential(&h), "rk-abc");
        h.insert("x-api-key", HeaderValue::from_static("rk-xyz"));
        assert_eq!(credential(&h), "rk-xyz");
        assert_eq!(
            loggable_prefix("rk-0123456789abcdefghijklmnopqrstuvwxyz0123").as_deref(),
            Some("rk-012345678")
        );
        assert_eq!(loggable_prefix("short").as_deref(), Some("s"));
    }

    #[test]
    fn body_fields_and_sessions() {
        let uid = r#"{\"device_id\":\"abc\",\"account_uuid\":\"\",\"session_id\":\"3f1c-uuid\"}"#;
        let body = format!(
            r#"{{"model":"claude-x","max_tokens":5,"stream":true,"messages":[],"metadata":{{"user_id":"{uid}"}},"unknown":[1,2]}}"#
        );
        let info = parse_body(body.as_bytes()).unwrap();
        assert_eq!(info.model, "claude-x");
        assert!(info.stream);
        assert_eq!(info.session.as_deref(), Some("3f1c-uuid"));

        let legacy =
            br#"{"model":"m","messages":[],"metadata":{"user_id":"user_ab12_account_0000_session_9e9e-1"}}"#;
        assert_eq!(
            parse_body(legacy).unwrap().session.as_deref(),
            Some("9e9e-1")
        );
        assert!(!parse_body(legacy).unwrap().stream);
    }

    #[test]
    fn web_search_tools_bound_the_searches() {
        let searches = |tools: &str| {
            let body = format!(r#"{{"model":"m","messages":[],"tools":{tools}}}"#);
            parse_body(body.as_bytes()).map(|i| (i.max_searches, i.tool_input_tokens))
        };
        assert_eq!(searches("[]").unwrap(), (0, 0));
        let custom = r#"{"name":"get","input_schema":{"type":"object","properties":{"type":{"type":"string"}}}}"#;
        assert_eq!(searches(&format!("[{custom}]")).unwrap(), (0, 0));
        assert_eq!(
            searches(r#"[{"type":"web_search_20250305","name":"web_search","max_uses":3},{"type":"web_fetch_20250910","name":"web_fetch","max_uses":2,"max_content_tokens":700}]"#).unwrap(),
            (3, 3 * TOKENS_PER_SEARCH + 2 * 700)
        );
        assert_eq!(
            searches(r#"[{"type":"web_fetch_20250910","name":"web_fetch"}]"#).unwrap(),
            (0, UNCAPPED_USES * TOKENS_PER_FETCH)
        );
        assert_eq!(
            searches(&format!(
                r#"[{custom},{{"type":"web_search_20260209","name":"web_search"}}]"#
            ))
            .unwrap(),
            (UNCAPPED_USES, UNCAPPED_USES * TOKENS_PER_SEARCH)
        );
        assert!(searches(r#"[{"type":"web_search_20250305","max_uses":"many"}]"#).is_err());
        let plain = parse_body(br#"{"model":"m","messages":[]}"#).unwrap();
        assert_eq!((plain.max_searches, plain.tool_input_tokens), (0, 0));
    }

    #[test]
    fn bad_bodies_are_invalid_requests() {
        for bad in [
            &b"{not json"[..],
            b"{\"max_tokens\":1}",
            b"[1,2]",
            b"[\"claude-sonnet-4-5\"]",
            b"{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1}",
            b"{\"model\":5}",
            b"{\"model\":\"m\"} trailing",
            b"",
        ] {
            let e = parse_body(bad).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{}", String::from_utf8_lossy(bad));
            assert_eq!(e.error_type, "invalid_request_error");
        }
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
    }
}
