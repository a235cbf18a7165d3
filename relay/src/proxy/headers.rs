//! Header handling in both directions: pass everything through except hop-by-hop
//! headers, framing headers the relay recomputes, and the client's credential, which
//! is replaced by the account's.

use crate::accounts::{Account, AccountKind};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The beta an OAuth access token needs on every inference request.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Extra header names the `Connection` header declares hop-by-hop.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The headers sent upstream for `account`.
pub fn upstream_headers(client: &HeaderMap, account: &Account) -> HeaderMap {
    let listed = if client.contains_key(header::CONNECTION) {
        connection_listed(client)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if is_hop_by_hop(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::ACCEPT_ENCODING
            || name == header::AUTHORIZATION
            || name.as_str() == "x-api-key"
            || listed.iter().any(|l| l == name.as_str())
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // Compressed SSE could not be flushed event by event, nor tapped.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let secret = account.credential.expose();
    match account.kind {
        AccountKind::ApiKey => {
            if let Ok(mut v) = HeaderValue::from_str(secret) {
                v.set_sensitive(true);
                out.insert(HeaderName::from_static("x-api-key"), v);
            }
        }
        AccountKind::OAuth => {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {secret}")) {
                v.set_sensitive(true);
                out.insert(header::AUTHORIZATION, v);
            }
            ensure_beta(&mut out, OAUTH_BETA);
        }
    }
    out
}

/// Adds `beta` to the comma-separated `anthropic-beta` list unless it is there.
fn ensure_beta(headers: &mut HeaderMap, beta: &str) {
    let name = HeaderName::from_static("anthropic-beta");
    let present = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|b| b.trim() == beta);
    if present {
        return;
    }
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing},{beta}"),
        _ => beta.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(name, v);
    }
}

/// Copies an upstream response's headers for the client, minus hop-by-hop and
/// framing headers (the relay's server frames the body itself).
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len() + 1);
    for (name, value) in upstream {
        if is_hop_by_hop(name) || name == header::CONTENT_LENGTH {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use schema::AccountId;

    fn account(kind: AccountKind) -> Account {
        Account {
            id: AccountId::parse("acc_1").unwrap(),
            name: "a".into(),
            kind,
            base_url: "http://x".into(),
            credential: Secret::new("sk-ant-secret"),
            priority: 0,
            weight: 1,
            group: None,
            concurrency: 0,
            proxy_url: None,
            enabled: true,
            refresh_token: None,
            expires_at: None,
            created_at: chrono::DateTime::default(),
        }
    }

    fn client() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "rk-client"),
            ("authorization", "Bearer rk-client"),
            ("anthropic-version", "2023-06-01"),
            (
                "anthropic-beta",
                "claude-code-20250219,interleaved-thinking-2025-05-14",
            ),
            ("x-stainless-lang", "js"),
            ("user-agent", "claude-cli/2.1.330 (external, cli)"),
            ("x-claude-code-session-id", "s-1"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("host", "relay"),
            ("content-length", "12"),
            ("accept-encoding", "gzip, br"),
            ("te", "trailers"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn api_key_accounts_get_x_api_key_and_everything_else_passes() {
        let out = upstream_headers(&client(), &account(AccountKind::ApiKey));
        assert_eq!(out["x-api-key"], "sk-ant-secret");
        assert!(out.get("authorization").is_none());
        assert_eq!(
            out["anthropic-beta"],
            "claude-code-20250219,interleaved-thinking-2025-05-14"
        );
        assert_eq!(out["anthropic-version"], "2023-06-01");
        assert_eq!(out["x-stainless-lang"], "js");
        assert_eq!(out["user-agent"], "claude-cli/2.1.330 (external, cli)");
        assert_eq!(out["x-claude-code-session-id"], "s-1");
        assert_eq!(out["accept-encoding"], "identity");
        for gone in ["connection", "x-private", "host", "content-length", "te"] {
            assert!(out.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn oauth_accounts_get_bearer_and_the_oauth_beta_once() {
        let out = upstream_headers(&client(), &account(AccountKind::OAuth));
        assert_eq!(out["authorization"], "Bearer sk-ant-secret");
        assert!(out.get("x-api-key").is_none());
        assert_eq!(
            out["anthropic-beta"],
            "claude-code-20250219,interleaved-thinking-2025-05-14,oauth-2025-04-20"
        );
        let again = upstream_headers(&out, &account(AccountKind::OAuth));
        assert_eq!(again.get_all("anthropic-beta").iter().count(), 1);
        assert_eq!(again["anthropic-beta"], out["anthropic-beta"]);
        let bare = upstream_headers(&HeaderMap::new(), &account(AccountKind::OAuth));
        assert_eq!(bare["anthropic-beta"], "oauth-2025-04-20");
    }
}
