//! HTTP fuzzing of the client surface (`/v1/*`), the counterpart of the schemathesis
//! run on the admin API: generated requests (arbitrary JSON, Messages-shaped bodies
//! with wrong types and sizes, raw bytes, odd headers, methods and paths) against a
//! relay with one healthy account on the mock. No answer may be a server error, every
//! error is in Anthropic's shape, and afterwards the account still serves.

use crate::*;
use bench::mock::MockUpstream;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Map, Value};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        (0usize..300_000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A Messages-shaped body: each field right, wrong or missing, plus stray fields.
fn messages_body() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        Just(json!("claude-sonnet-4-5")),
        Just(json!("claude-haiku-4-5")),
        Just(json!("")),
        "[a-z0-9.-]{1,40}".prop_map(Value::String),
        (250usize..300).prop_map(|n| Value::String("m".repeat(n))),
        any_json(),
    ];
    let max_tokens = prop_oneof![
        (1u64..100_000).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any_json(),
    ];
    let content = prop_oneof![
        ".{0,60}".prop_map(Value::String),
        Just(json!([{"type": "text", "text": "hello"}])),
        Just(
            json!([{"type": "text", "text": "cached", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        ),
        Just(
            json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}])
        ),
        any_json(),
    ];
    let message = (
        prop_oneof![Just(json!("user")), Just(json!("assistant")), any_json()],
        content,
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    let messages = prop_oneof![
        proptest::collection::vec(message, 0..4).prop_map(Value::Array),
        any_json(),
    ];
    let tools = prop_oneof![
        Just(json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}])),
        Just(json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": "many"}])),
        Just(json!([{"name": "get", "input_schema": {"type": "object"}}])),
        any_json(),
    ];
    (
        proptest::option::of(model),
        proptest::option::of(max_tokens),
        proptest::option::of(messages),
        proptest::option::of(prop_oneof![any::<bool>().prop_map(Value::Bool), any_json()]),
        proptest::option::of(tools),
        proptest::option::of(any_json()),
        proptest::collection::btree_map("[a-z_]{1,10}", any_json(), 0..3),
    )
        .prop_map(
            |(model, max_tokens, messages, stream, tools, metadata, extra)| {
                let mut o: Map<String, Value> = extra.into_iter().collect();
                for (k, v) in [
                    ("model", model),
                    ("max_tokens", max_tokens),
                    ("messages", messages),
                    ("stream", stream),
                    ("tools", tools),
                    ("metadata", metadata),
                ] {
                    if let Some(v) = v {
                        o.insert(k.to_owned(), v);
                    }
                }
                Value::Object(o)
            },
        )
}

/// What goes on the wire.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    version: Option<String>,
    beta: Option<String>,
    key: KeyChoice,
}

#[derive(Debug, Clone, Copy)]
enum KeyChoice {
    Valid,
    Wrong,
    Missing,
}

fn case() -> impl Strategy<Value = Case> {
    let valid = (any::<bool>(), ".{0,40}", 1u64..4096).prop_map(|(stream, text, max_tokens)| {
        serde_json::to_vec(&json!({
            "model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": text}]
        }))
        .unwrap_or_default()
    });
    let body = prop_oneof![
        4 => valid,
        6 => messages_body().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => any_json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        1 => Just(b"{\"model\": \"claude-sonnet-4-5\", \"messages\": [".to_vec()),
    ];
    let path = prop_oneof![
        8 => Just("/v1/messages".to_owned()),
        3 => Just("/v1/messages/count_tokens".to_owned()),
        1 => Just("/v1/messages?beta=true".to_owned()),
        1 => Just("/v1/models".to_owned()),
        1 => "/v1/[a-z/%.]{0,20}".prop_map(|s| s),
    ];
    let method =
        prop_oneof![8 => Just("POST"), 1 => Just("GET"), 1 => Just("PUT"), 1 => Just("DELETE")];
    (
        method,
        path,
        body,
        prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ],
        prop_oneof![
            6 => Just(Some("2023-06-01".to_owned())),
            1 => Just(None),
            1 => "[ -~]{0,20}".prop_map(Some),
        ],
        prop_oneof![
            6 => Just(None),
            1 => Just(Some("prompt-caching-2024-07-31".to_owned())),
            1 => "[ -~]{0,60}".prop_map(Some),
        ],
        Just(KeyChoice::Valid),
    )
        .prop_map(
            |(method, path, body, content_type, version, beta, key)| Case {
                method,
                path,
                body,
                content_type,
                version,
                beta,
                key,
            },
        )
}

/// Anthropic's error shape: `{"type":"error","error":{"type":…,"message":…}}`.
fn is_anthropic_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v["type"] == "error" && v["error"]["type"].is_string() && v["error"]["message"].is_string()
    })
}

#[tokio::test]
async fn the_client_surface_answers_any_request_without_a_server_error() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let account = app.add_account(&mock, Acc::new("a", KEY_A)).await;
    // A fixed seed: the same 1,000 cases on every run, so a failure reproduces.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = case();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for i in 0..1000 {
        let mut c = strategy.new_tree(&mut runner).unwrap().current();
        // The first 40 without a valid key: fewer than the 60 failed authentications a
        // minute after which an address is throttled (429) before any lookup.
        if i < 40 {
            c.key = if i % 2 == 0 {
                KeyChoice::Wrong
            } else {
                KeyChoice::Missing
            };
        }
        let mut req = app
            .http
            .request(c.method.parse().unwrap(), app.url(&c.path))
            .body(c.body.clone());
        if let Some(t) = c.content_type {
            req = req.header("content-type", t);
        }
        if let Some(v) = &c.version {
            req = req.header("anthropic-version", v.as_str());
        }
        if let Some(b) = &c.beta {
            req = req.header("anthropic-beta", b.as_str());
        }
        req = match c.key {
            KeyChoice::Valid => req.header("x-api-key", &app.key),
            KeyChoice::Wrong => req.header("x-api-key", "rk-not-a-key-of-this-relay"),
            KeyChoice::Missing => req,
        };
        let Ok(resp) = req.send().await else {
            // reqwest refuses some generated header values itself; nothing was sent.
            continue;
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        *statuses.entry(status).or_default() += 1;
        let shown = || {
            format!(
                "{} {} ({} body bytes, key {:?}): {status} {}",
                c.method,
                c.path,
                c.body.len(),
                c.key,
                String::from_utf8_lossy(&bytes[..bytes.len().min(400)])
            )
        };
        assert!(status < 500, "server error for {}", shown());
        if status >= 400 {
            assert!(
                is_anthropic_error(&bytes),
                "not Anthropic's shape: {}",
                shown()
            );
        }
    }
    eprintln!("statuses: {statuses:?}");
    // The fuzz went through the checks and reached upstream too.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 10,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 10,
        "{statuses:?}"
    );
    // Nothing a client sent took the account out of service.
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let snap = app.state.proxy.pool.snapshot();
    let slot = snap.slots.iter().find(|s| s.account.id == account).unwrap();
    assert_eq!(slot.rt.health().state, schema::HealthState::Healthy);
    app.stop().await;
}
