//! The mock upstream over real HTTP: auth rules, SSE framing, usage, scripts, log, OAuth.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions unwrap too"
)]

use std::time::Duration;

use bench::mock::{
    expected_usage, pkce_challenge, MockConfig, MockUpstream, RateLimitMode, SseFraming, Step,
    CLAUDE_CODE_CLIENT_ID,
};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const KEY_A: &str = "sk-ant-api03-account-a";
const KEY_B: &str = "sk-ant-api03-account-b";
const OAUTH: &str = "sk-ant-oat01-subscription";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    frames: Vec<Bytes>,
    /// The body ended with an error (connection aborted mid-body).
    aborted: bool,
}

impl Reply {
    fn body(&self) -> Vec<u8> {
        self.frames.concat()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request; `Err` when the connection failed before a response head.
async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    let mut aborted = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    frames.push(d);
                }
            }
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        frames,
        aborted,
    })
}

async fn post_messages(mock: &MockUpstream, key_header: (&str, &str), body: &Value) -> Reply {
    send(
        Method::POST,
        &format!("{}/v1/messages?beta=true", mock.base_url()),
        &[
            key_header,
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(body).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("request failed: {e}"))
}

fn simple(stream: bool) -> Value {
    json!({"model":"claude-sonnet-4-6","max_tokens":256,"stream":stream,
           "messages":[{"role":"user","content":"Hello"}]})
}

#[tokio::test]
async fn auth_accepts_api_keys_in_either_header_and_rejects_others() {
    let mock = MockUpstream::start().await;
    let body = simple(false);
    let ok = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(ok.status, 200);
    assert!(ok.header("request-id").unwrap().starts_with("req_"));
    assert!(ok.header("anthropic-organization-id").is_some());
    assert!(ok.header("anthropic-ratelimit-requests-limit").is_some());
    assert!(ok.header("anthropic-ratelimit-unified-status").is_none());

    let bearer = post_messages(&mock, ("authorization", &format!("Bearer {KEY_A}")), &body).await;
    assert_eq!(bearer.status, 200);

    let bad = post_messages(&mock, ("x-api-key", "sk-other"), &body).await;
    assert_eq!(bad.status, 401);
    let err = bad.json();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "authentication_error");
    assert_eq!(
        err["request_id"].as_str(),
        bad.header("request-id"),
        "error body carries the request id"
    );

    let oauth_no_beta =
        post_messages(&mock, ("authorization", &format!("Bearer {OAUTH}")), &body).await;
    assert_eq!(oauth_no_beta.status, 401);
    assert_eq!(
        oauth_no_beta.json()["error"]["message"],
        "OAuth authentication is currently not supported."
    );

    let oauth = send(
        Method::POST,
        &format!("{}/v1/messages", mock.base_url()),
        &[
            ("authorization", &format!("Bearer {OAUTH}")),
            ("anthropic-beta", "claude-code-20250219, oauth-2025-04-20"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(oauth.status, 200);
    assert_eq!(
        oauth.header("anthropic-ratelimit-unified-status"),
        Some("allowed")
    );
    assert!(oauth.header("anthropic-ratelimit-requests-limit").is_none());

    mock.set_rate_limit_mode(KEY_B, RateLimitMode::Unified);
    let b = post_messages(&mock, ("x-api-key", KEY_B), &body).await;
    assert!(b.header("anthropic-ratelimit-unified-reset").is_some());
}

#[tokio::test]
async fn version_rules() {
    let mock = MockUpstream::start().await;
    let url = format!("{}/v1/messages", mock.base_url());
    let body = serde_json::to_vec(&json!({"model":"m","max_tokens":5,"temperature":0.5,
        "messages":[{"role":"user","content":"x"}]}))
    .unwrap();
    let missing = send(
        Method::POST,
        &url,
        &[("x-api-key", KEY_A), ("content-type", "application/json")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 400);
    let old = send(
        Method::POST,
        &url,
        &[
            ("x-api-key", KEY_A),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(old.status, 200);
    let new = send(
        Method::POST,
        &url,
        &[
            ("x-api-key", KEY_A),
            ("anthropic-version", "2026-10-21"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
    .unwrap();
    assert_eq!(new.status, 400);
    assert!(new.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("temperature:"));
}

#[tokio::test]
async fn stream_bytes_equal_the_transcript_and_usage_is_deterministic() {
    let mock = MockUpstream::start().await;
    let body = json!({"model":"claude-opus-4-7","max_tokens":256,"stream":true,
        "system":[{"type":"text","text":"s".repeat(800),"cache_control":{"type":"ephemeral","ttl":"1h"}}],
        "messages":[{"role":"user","content":"Hello"}],
        "tools":[{"name":"lookup","input_schema":{"type":"object"}}],
        "thinking":{"type":"adaptive"}});
    let reply = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let transcript = mock.sse_transcript(&body);
    assert_eq!(reply.body(), transcript.concat());
    assert_eq!(transcript, bench::mock::sse_transcript(&body));
    // The mock's usage math for this body: system is a 1h write on the first turn.
    let u = expected_usage(&body);
    // tools come first in the cache prefix, so the tool definition is in the 1h segment.
    let tool_tokens = serde_json::to_string(&body["tools"][0])
        .unwrap()
        .len()
        .div_ceil(4);
    assert_eq!(u.cache_creation_1h, 200 + tool_tokens as u64);
    let text = String::from_utf8(reply.body()).unwrap();
    assert!(text.contains(&format!(
        "\"ephemeral_1h_input_tokens\":{}",
        u.cache_creation_1h
    )));
    assert!(!reply.aborted);

    // Non-streaming answer carries the same final usage.
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let r = post_messages(&mock, ("x-api-key", KEY_A), &plain).await;
    let v = r.json();
    assert_eq!(
        v["usage"]["output_tokens"].as_u64().unwrap(),
        u.output_tokens
    );
    assert_eq!(r.body(), mock.message_body(&plain).to_vec());
}

#[tokio::test]
async fn restated_usage_can_be_switched_on() {
    let mock = MockUpstream::start().await;
    mock.set_restate_usage(true);
    let body = simple(true);
    let reply = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(reply.body(), mock.sse_transcript(&body).concat());
    let text = String::from_utf8(reply.body()).unwrap();
    let delta_line = text
        .lines()
        .find(|l| l.starts_with("data: {\"type\":\"message_delta\""))
        .unwrap();
    let delta: Value = serde_json::from_str(&delta_line["data: ".len()..]).unwrap();
    assert_eq!(
        delta["usage"]["input_tokens"].as_u64().unwrap(),
        expected_usage(&body).input_tokens
    );
}

#[tokio::test]
async fn framing_changes_the_wire_bytes_to_what_the_transcript_says() {
    let mock = MockUpstream::start().await;
    let body = simple(true);
    let plain = mock.sse_transcript(&body);
    mock.set_sse_framing(SseFraming::all());
    let reply = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    let shaped = mock.sse_transcript(&body);
    assert_eq!(reply.body(), shaped.concat());
    assert_ne!(shaped.concat(), plain.concat());
    let text = String::from_utf8(reply.body()).unwrap();
    assert!(text.starts_with(": ") && text.contains("\r\n"), "{text:?}");
    assert!(
        reply.frames.len() < shaped.len() * 3,
        "several pieces share a chunk"
    );
    // The same events, once comments and CR are gone.
    let lf = text.replace("\r\n", "\n");
    let events: String = lf
        .split_inclusive('\n')
        .filter(|l| !l.starts_with(':'))
        .collect::<String>()
        .trim_start_matches('\n')
        .to_owned();
    assert_eq!(events.as_bytes(), plain.concat());
}

#[tokio::test]
async fn a_web_search_request_is_answered_with_searches_and_their_usage() {
    let mock = MockUpstream::start().await;
    let body = json!({"model":"claude-sonnet-4-6","max_tokens":256,"stream":false,
        "messages":[{"role":"user","content":"What happened today?"}],
        "tools":[{"type":"web_search_20250305","name":"web_search","max_uses":3}]});
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    let v = r.json();
    let u = expected_usage(&body);
    assert_eq!(u.web_search_requests, 3);
    assert_eq!(v["usage"]["server_tool_use"]["web_search_requests"], 3);
    assert_eq!(v["usage"]["server_tool_use"]["web_fetch_requests"], 0);
    assert_eq!(v["usage"]["input_tokens"].as_u64().unwrap(), u.input_tokens);
    mock.set_service_tier("batch");
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r.json()["usage"]["service_tier"], "batch");
}

#[tokio::test]
async fn a_429_carries_the_rejected_rate_limit_headers() {
    let mock = MockUpstream::start().await;
    let body = simple(false);
    let before = chrono::Utc::now().timestamp();
    mock.script(KEY_A, [Step::rate_limited(120)]);
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    let reset = chrono::DateTime::parse_from_rfc3339(
        r.header("anthropic-ratelimit-requests-reset").unwrap(),
    )
    .unwrap()
    .timestamp();
    assert!((before + 119..=before + 122).contains(&reset), "{reset}");
    assert_eq!(r.header("retry-after"), Some("120"));
    assert!(r.header("anthropic-ratelimit-unified-status").is_none());

    // A subscription: the binding claim, its reset, its window rejected; others not.
    mock.set_rate_limit_mode(KEY_B, RateLimitMode::Unified);
    let reset = u64::try_from(before).unwrap() + 7_200;
    mock.script(KEY_B, [Step::claim_rejected("seven_day", reset)]);
    let r = post_messages(&mock, ("x-api-key", KEY_B), &body).await;
    assert_eq!(r.status, 429);
    let h = |name: &str| r.header(&format!("anthropic-ratelimit-unified-{name}"));
    assert_eq!(h("status"), Some("rejected"));
    assert_eq!(h("representative-claim"), Some("seven_day"));
    assert_eq!(h("reset"), Some(reset.to_string().as_str()));
    assert_eq!(h("7d-status"), Some("rejected"));
    assert_eq!(h("7d-reset"), Some(reset.to_string().as_str()));
    assert_eq!(h("5h-status"), Some("allowed"));
    assert_ne!(h("5h-reset"), Some(reset.to_string().as_str()));
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((7_190..=7_200).contains(&retry), "{retry}");
    // A plain 429 on a subscription: the five-hour claim, reset at retry-after.
    mock.script(KEY_B, [Step::rate_limited(30)]);
    let r = post_messages(&mock, ("x-api-key", KEY_B), &body).await;
    let h = |name: &str| r.header(&format!("anthropic-ratelimit-unified-{name}"));
    assert_eq!(h("status"), Some("rejected"));
    assert_eq!(h("representative-claim"), Some("five_hour"));
    let reset: i64 = h("reset").unwrap().parse().unwrap();
    assert!((before + 29..=before + 32).contains(&reset), "{reset}");
    // Switched off, a 429 carries the healthy family as before.
    mock.set_realistic_rate_limits(false);
    mock.script(KEY_B, [Step::rate_limited(30)]);
    let r = post_messages(&mock, ("x-api-key", KEY_B), &body).await;
    assert_eq!(
        r.header("anthropic-ratelimit-unified-status"),
        Some("allowed")
    );
    // Successes never carry the rejected state.
    mock.set_realistic_rate_limits(true);
    let ok = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(ok.status, 200);
    assert_ne!(
        ok.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
}

#[tokio::test]
async fn scripts_are_per_credential_and_fifo() {
    let mock = MockUpstream::start().await;
    mock.script(
        KEY_A,
        [
            Step::rate_limited(30).with_header("x-should-retry", "true"),
            Step::overloaded(),
        ],
    );
    let body = simple(false);
    let r1 = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r1.status, 429);
    assert_eq!(r1.header("retry-after"), Some("30"));
    assert_eq!(r1.header("x-should-retry"), Some("true"));
    assert_eq!(r1.json()["error"]["type"], "rate_limit_error");
    let rb = post_messages(&mock, ("x-api-key", KEY_B), &body).await;
    assert_eq!(rb.status, 200, "account B is not affected by A's script");
    let r2 = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r2.status.as_u16(), 529);
    let r3 = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r3.status, 200, "empty FIFO falls back to Ok");

    mock.set_default(KEY_B, Step::server_error());
    assert_eq!(
        post_messages(&mock, ("x-api-key", KEY_B), &body)
            .await
            .status,
        500
    );
    mock.clear_default(KEY_B);
    assert_eq!(
        post_messages(&mock, ("x-api-key", KEY_B), &body)
            .await
            .status,
        200
    );

    let log = mock.requests_for(KEY_A);
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].query.as_deref(), Some("beta=true"));
    assert_eq!(log[0].body, serde_json::to_vec(&body).unwrap());
}

#[tokio::test]
async fn mid_stream_failures() {
    let mock = MockUpstream::start().await;
    let body = simple(true);
    let full = mock.sse_transcript(&body);

    mock.script(
        KEY_A,
        [Step::MidStreamError {
            after_events: 3,
            error_type: "overloaded_error".into(),
        }],
    );
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    let text = String::from_utf8(r.body()).unwrap();
    assert!(text.starts_with(std::str::from_utf8(&full[..3].concat()).unwrap()));
    assert!(text.contains(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\""
    ));
    assert!(!text.contains("message_stop"));

    mock.script(KEY_A, [Step::Drop { after_events: 2 }]);
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert!(r.aborted, "the body must end in an error, not cleanly");
    assert_eq!(r.body(), full[..2].concat());

    mock.script(
        KEY_A,
        [Step::Stall {
            after_events: 4,
            duration: Duration::from_millis(50),
        }],
    );
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r.body(), full.concat(), "a stall ends with the full stream");

    mock.script(KEY_A, [Step::Reset]);
    let err = send(
        Method::POST,
        &format!("{}/v1/messages", mock.base_url()),
        &[
            ("x-api-key", KEY_A),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert!(err.is_err(), "reset gives a connection error");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mock = MockUpstream::start_with(MockConfig {
        max_body_bytes: 1024,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut body = simple(false);
    body["messages"][0]["content"] = json!("x".repeat(2000));
    let r = post_messages(&mock, ("x-api-key", KEY_A), &body).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["type"], "request_too_large");
}

#[tokio::test]
async fn models_count_tokens_and_hello() {
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let auth = [("x-api-key", KEY_A), ("anthropic-version", "2023-06-01")];
    let list = send(
        Method::GET,
        &format!("{base}/v1/models?limit=2"),
        &auth,
        vec![],
    )
    .await
    .unwrap();
    let v = list.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["has_more"], true);
    let one = send(
        Method::GET,
        &format!("{base}/v1/models/claude-sonnet-4-6"),
        &auth,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(one.json()["id"], "claude-sonnet-4-6");
    let hello = send(Method::HEAD, &format!("{base}/api/hello"), &[], vec![])
        .await
        .unwrap();
    assert_eq!(hello.status, 200);

    let body = json!({"model":"m","messages":[{"role":"user","content":"Hello"}]});
    let count = send(
        Method::POST,
        &format!("{base}/v1/messages/count_tokens?beta=true"),
        &[
            ("x-api-key", KEY_A),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        count.json()["input_tokens"].as_u64().unwrap(),
        bench::mock::prompt_tokens(&body)
    );
    mock.wait_for_requests(4, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn oauth_token_exchange_and_refresh() {
    let mock = MockUpstream::start().await;
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    mock.register_oauth_code("abc", &pkce_challenge(verifier));
    let url = format!("{}/v1/oauth/token", mock.base_url());
    let ct = [("content-type", "application/json")];
    let r = send(
        Method::POST,
        &url,
        &ct,
        serde_json::to_vec(
            &json!({"grant_type":"authorization_code","code":"abc","state":"s",
            "client_id":CLAUDE_CODE_CLIENT_ID,"code_verifier":verifier,
            "redirect_uri":"https://platform.claude.com/oauth/code/callback"}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let tokens = r.json();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let r2 = send(
        Method::POST,
        &url,
        &ct,
        serde_json::to_vec(
            &json!({"grant_type":"refresh_token","refresh_token":refresh,
            "client_id":CLAUDE_CODE_CLIENT_ID}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r2.status, 200);
    let access = r2.json()["access_token"].as_str().unwrap().to_owned();
    let profile = send(
        Method::GET,
        &format!("{}/api/oauth/profile", mock.base_url()),
        &[("authorization", &format!("Bearer {access}"))],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        profile.json()["organization"]["organization_type"],
        "claude_max"
    );
}

#[tokio::test]
async fn fast_mode_serves_prerendered_answers() {
    let mock = MockUpstream::start_with(MockConfig::fast()).await.unwrap();
    let r = post_messages(&mock, ("x-api-key", KEY_A), &simple(true)).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body()).unwrap();
    assert!(text.starts_with("event: message_start\n"));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    let plain = post_messages(&mock, ("x-api-key", KEY_A), &simple(false)).await;
    assert_eq!(plain.json()["usage"]["cache_read_input_tokens"], 18000);
}
