//! Client authentication and request validation: Anthropic-shaped 4xx, nothing
//! forwarded.

use crate::*;
use bench::mock::MockUpstream;
use projections::Dialect as _;
use schema::{AuthFailureReason, Event, Outcome};

async fn assert_error(resp: reqwest::Response, status: u16, error_type: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert!(resp.headers().get("x-relay-request-id").is_some());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], error_type, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(v["request_id"].as_str().unwrap().starts_with("req_relay_"));
    v
}

#[tokio::test]
async fn bad_credentials_are_refused_and_audited() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let b = serde_json::to_vec(&body(false)).unwrap();
    let post = || {
        app.http
            .post(app.url("/v1/messages"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(b.clone())
    };
    assert_error(post().send().await.unwrap(), 401, "authentication_error").await;
    let bogus = "rk-bogus-0123456789abcdefghijklmnopqrstuvwxyz";
    assert_error(
        post().header("x-api-key", bogus).send().await.unwrap(),
        401,
        "authentication_error",
    )
    .await;
    assert_error(
        post().bearer_auth(bogus).send().await.unwrap(),
        401,
        "authentication_error",
    )
    .await;

    // A disabled key stops working.
    let keys = app.state.keys.list_all().await.unwrap();
    app.state
        .keys
        .set_enabled(&keys[0].id, false)
        .await
        .unwrap();
    assert_error(
        post().header("x-api-key", &app.key).send().await.unwrap(),
        401,
        "authentication_error",
    )
    .await;
    assert_eq!(mock.request_count(), 0);

    let events = app
        .wait_events("auth failures", |e| {
            e.iter()
                .filter(|e| matches!(e.event, Event::AuthFailed(_)))
                .count()
                == 3
        })
        .await;
    let fails: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::AuthFailed(a) => Some(a),
            _ => None,
        })
        .collect();
    // Aggregated per address and reason: the second unknown key is counted, not
    // recorded again.
    let reasons: Vec<_> = fails.iter().map(|a| a.reason).collect();
    assert_eq!(
        reasons,
        [
            AuthFailureReason::Missing,
            AuthFailureReason::Unknown,
            AuthFailureReason::Disabled
        ]
    );
    assert!(fails.iter().all(|a| a.failures_in_window == Some(1)));
    for a in &fails {
        assert_eq!(a.endpoint, "/v1/messages");
        if let Some(p) = &a.key_prefix {
            assert!(p.chars().count() <= 12);
        }
        assert_eq!(a.client_addr.as_deref(), Some("127.0.0.1"));
    }
    assert_eq!(fails[1].key_prefix.as_deref(), Some(&bogus[..12]));
    // No event anywhere carries a whole key.
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(bogus) && !all.contains(&app.key));
    assert!(finished(&events).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_forwarded() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--max-body-bytes", "4096"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let post = |ct: &str, body: Vec<u8>| {
        app.http
            .post(app.url("/v1/messages"))
            .header("x-api-key", &app.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", ct)
            .body(body)
    };
    let json = "application/json";
    assert_error(
        post(json, b"{\"model\": \"x\", ".to_vec())
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request_error",
    )
    .await;
    let v = assert_error(
        post(json, br#"{"max_tokens":5,"messages":[]}"#.to_vec())
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request_error",
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("model"));
    assert_error(
        post(json, br#"{"model":"m","stream":"yes"}"#.to_vec())
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request_error",
    )
    .await;
    let big = format!(
        r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    assert_error(
        post(json, big.clone().into_bytes()).send().await.unwrap(),
        413,
        "request_too_large",
    )
    .await;
    // Chunked upload without a content-length: the limit still applies while reading.
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let chunked = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", &app.key)
        .header("content-type", json)
        .body(reqwest::Body::wrap_stream(stream));
    assert_error(chunked.send().await.unwrap(), 413, "request_too_large").await;
    assert_error(
        post("text/plain", serde_json::to_vec(&body(false)).unwrap())
            .send()
            .await
            .unwrap(),
        415,
        "invalid_request_error",
    )
    .await;
    assert_eq!(mock.request_count(), 0, "nothing reaches upstream");
    let events = app
        .wait_events("rejections", |e| finished(e).len() == 6)
        .await;
    for f in finished(&events) {
        assert_eq!((f.outcome, f.attempts), (Outcome::Rejected, 0));
    }
    assert!(usages(&events).is_empty());
    app.stop().await;
}

/// Large requests (images, long contexts) pass: the limit is MAX_BODY_BYTES (32 MiB by
/// default), not a framework default.
#[tokio::test]
async fn bodies_above_framework_defaults_are_accepted() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let mut b = body(false);
    b["messages"][0]["content"] = serde_json::Value::String("x".repeat(3 * 1024 * 1024));
    let r = app.messages(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        mock.requests()[0].body.len(),
        serde_json::to_vec(&b).unwrap().len()
    );
    app.stop().await;
}

#[tokio::test]
async fn keys_hashed_before_keyed_hashing_still_work_and_are_rehashed_on_first_use() {
    use sqlx::Row;
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let old = "sk-relay-legacy-key-stored-as-plain-sha256-0123456789";
    sqlx::query(&app.state.db.sql(
        "INSERT INTO api_keys (id, name, tenant, key_hash, key_prefix, enabled, created_at_ms) \
         VALUES ('key_legacy', 'legacy', 'tenant_a', $1, 'sk-relay-leg', 1, 0)",
    ))
    .bind(relay::crypto::legacy_hash_key(old))
    .execute(&app.state.db)
    .await
    .unwrap();
    let r = app.messages_as(old, &body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let stored: String = sqlx::query("SELECT key_hash FROM api_keys WHERE id = 'key_legacy'")
        .fetch_one(&app.state.db)
        .await
        .unwrap()
        .get("key_hash");
    assert!(
        stored.starts_with(relay::crypto::KEYED_HASH_PREFIX),
        "{stored}"
    );
    assert_ne!(stored, relay::crypto::legacy_hash_key(old));
    // Every stored hash is keyed: none is the key's plain SHA-256.
    let plain = relay::crypto::legacy_hash_key(&app.key);
    let n: i64 = sqlx::query(
        &app.state
            .db
            .sql("SELECT COUNT(*) AS n FROM api_keys WHERE key_hash = $1"),
    )
    .bind(plain)
    .fetch_one(&app.state.db)
    .await
    .unwrap()
    .get("n");
    assert_eq!(n, 0);
    // And it keeps working after the move.
    let r = app.messages_as(old, &body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
