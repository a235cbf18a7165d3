//! Pass-through: bytes, headers, usage, the other endpoints.

use crate::*;
use bench::mock::{expected_usage, MockConfig, MockUpstream};
use schema::{Completeness, Outcome, RoutingReason};

#[tokio::test]
async fn streaming_is_byte_identical_and_usage_is_overlaid() {
    let mock = MockUpstream::start_with(MockConfig {
        restate_usage: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let app = spawn_app(&[]).await;
    let acc = app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let body = body(true);

    let resp = app
        .messages(&body)
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .header("x-stainless-lang", "js")
        .header("user-agent", "claude-cli/2.1.330 (external, cli)")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(resp.headers()["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let relay_id = resp.headers()["x-relay-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(resp
        .headers()
        .get("anthropic-ratelimit-requests-limit")
        .is_some());
    let got = resp.bytes().await.unwrap();
    let want: Vec<u8> = mock.sse_transcript(&body).concat();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "client must receive exactly the upstream bytes"
    );
    assert!(String::from_utf8_lossy(&got).contains("event: ping"));

    // What upstream saw: the account's key, the client's headers, the exact body.
    let seen = mock.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.credential.as_deref(), Some(KEY_A));
    assert_eq!(r.query.as_deref(), Some("beta=true"));
    assert_eq!(
        r.header("anthropic-beta"),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );
    assert_eq!(r.header("x-stainless-lang"), Some("js"));
    assert_eq!(
        r.header("user-agent"),
        Some("claude-cli/2.1.330 (external, cli)")
    );
    assert_eq!(r.header("accept-encoding"), Some("identity"));
    assert_ne!(r.header("x-api-key"), Some(app.key.as_str()));
    assert_eq!(
        r.body,
        serde_json::to_vec(&body).unwrap(),
        "body forwarded unchanged"
    );

    let want_usage = expected_usage(&body);
    let events = app
        .wait_events("usage and finish", |e| {
            usages(e).len() == 1 && finished(e).len() == 1
        })
        .await;
    let u = usages(&events)[0];
    assert_eq!(u.account, acc);
    assert_eq!(u.attempt, 1);
    assert!(u.stream);
    assert_eq!(u.completeness, Completeness::Complete);
    assert_eq!(
        u.input_tokens, want_usage.input_tokens,
        "restated input must overlay, not add"
    );
    assert_eq!(u.output_tokens, want_usage.output_tokens);
    assert_eq!(
        u.cache_read_input_tokens,
        want_usage.cache_read_input_tokens
    );
    assert_eq!(
        u.cache_creation_5m_input_tokens,
        want_usage.cache_creation_5m
    );
    assert_eq!(
        u.cache_creation_1h_input_tokens,
        want_usage.cache_creation_1h
    );
    assert!(
        want_usage.cache_creation_1h > 0,
        "the body exercises 1h writes"
    );
    let f = finished(&events)[0];
    assert_eq!(f.outcome, Outcome::Completed);
    assert_eq!(f.status, 200);
    assert_eq!(f.attempts, 1);
    assert_eq!(f.model.as_deref(), Some("claude-sonnet-4-6"));
    assert!(f.stream);
    assert_eq!(
        f.routing.as_ref().unwrap().reason,
        RoutingReason::PriorityWeighted
    );
    assert!(f
        .upstream_request_id
        .as_deref()
        .unwrap()
        .starts_with("req_"));
    let env = events
        .iter()
        .find(|e| matches!(e.event, schema::Event::RequestFinished(_)))
        .unwrap();
    assert_eq!(env.request_id.as_deref(), Some(relay_id.as_str()));
    assert_eq!(env.tenant.as_ref().unwrap().as_str(), "tenant_a");
    app.stop().await;
}

#[tokio::test]
async fn non_streaming_passes_through_under_api_prefix_with_bearer() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let body = body(false);
    let resp = app
        .http
        .post(app.url("/api/v1/messages"))
        .bearer_auth(&app.key)
        .header("anthropic-version", "2026-10-21")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got, mock.message_body(&body));
    let r = &mock.requests()[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(
        r.header("authorization"),
        None,
        "the client's bearer key is not forwarded"
    );
    let want = expected_usage(&body);
    let events = app
        .wait_events("usage", |e| usages(e).len() == 1 && finished(e).len() == 1)
        .await;
    let u = usages(&events)[0];
    assert!(!u.stream);
    assert_eq!(u.completeness, Completeness::Complete);
    assert_eq!(finished(&events)[0].outcome, Outcome::Completed);
    assert_eq!(
        (u.input_tokens, u.output_tokens),
        (want.input_tokens, want.output_tokens)
    );
    assert_eq!(u.cache_creation_1h_input_tokens, want.cache_creation_1h);
    app.stop().await;
}

#[tokio::test]
async fn count_tokens_models_and_probes() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--metrics-token", "metrics-token-for-tests"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;

    for path in ["/api/hello", "/", "/api", "/api/api/hello"] {
        let r = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let ct = app
        .http
        .post(app.url("/v1/messages/count_tokens?beta=true"))
        .header("x-api-key", &app.key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ct.status(), 200);
    let v: serde_json::Value = ct.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);

    let models = app
        .http
        .get(app.url("/api/v1/models?limit=1000"))
        .bearer_auth(&app.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let v: serde_json::Value = models.json().await.unwrap();
    let first = v["data"][0]["id"].as_str().unwrap().to_owned();
    assert!(v.get("has_more").is_some());
    let one = app
        .http
        .get(app.url(&format!("/v1/models/{first}")))
        .header("x-api-key", &app.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let v: serde_json::Value = one.json().await.unwrap();
    assert_eq!(v["id"], first.as_str());
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.query.as_deref() == Some("limit=1000"))
            .count(),
        1
    );

    // Free endpoints record no usage, but every request is finished.
    let events = app
        .wait_events("finishes", |e| finished(e).len() == 3)
        .await;
    assert!(usages(&events).is_empty());

    // Without its token, /metrics is refused: it names every account.
    let refused = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("metrics-token-for-tests")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relay_requests_total{outcome=\"completed\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("relay_account_state{"));
    assert!(metrics.contains("relay_event_queue_depth"));
    assert!(metrics.contains("relay_overhead_seconds_count 3"));
    app.stop().await;
}

#[tokio::test]
async fn oauth_accounts_get_bearer_and_the_oauth_beta() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let mut a = Acc::new("sub", "sk-ant-oat01-subscription");
    a.kind = relay::accounts::AccountKind::OAuth;
    app.add_account(&mock, a).await;
    // No anthropic-beta from the client: the mock refuses OAuth tokens without it.
    let resp = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let r = &mock.requests()[0];
    assert_eq!(
        r.header("authorization"),
        Some("Bearer sk-ant-oat01-subscription")
    );
    assert_eq!(r.header("anthropic-beta"), Some("oauth-2025-04-20"));
    assert_eq!(r.header("x-api-key"), None);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_streams_complete_and_release_their_slots() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let mut a = Acc::new("a", KEY_A);
    a.concurrency = 20;
    app.add_account(&mock, a).await;
    let mut b = Acc::new("b", KEY_B);
    b.concurrency = 20;
    app.add_account(&mock, b).await;
    let body = body(true);
    let want = mock.sse_transcript(&body).concat();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let req = app.messages(&body);
            tokio::spawn(async move { req.send().await.unwrap().bytes().await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), want);
    }
    let events = app
        .wait_events("30 finishes", |e| {
            finished(e).len() == 30 && usages(e).len() == 30
        })
        .await;
    assert!(finished(&events)
        .iter()
        .all(|f| f.outcome == Outcome::Completed && f.attempts == 1));
    for slot in &app.state.proxy.pool.snapshot().slots {
        assert_eq!(
            slot.rt.inflight(),
            0,
            "lease leaked on {}",
            slot.account.name
        );
    }
    let r = app.http.get(app.url("/v1/files")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "not_found_error");
    app.stop().await;
}
