//! Failover before the first byte, health transitions, stickiness, "no account".

use crate::*;
use bench::mock::{MockUpstream, Step};
use schema::{Completeness, HealthReason, HealthState, Outcome, RoutingReason};
use std::time::Duration;

#[tokio::test]
async fn fails_over_on_429_529_and_5xx_with_one_usage_event_per_attempt() {
    let mock = MockUpstream::start().await;
    // One failure per account is enough evidence here: this test is about failover.
    let app = spawn_app(&["--max-attempts", "4", "--server-error-strikes", "1"]).await;
    let a = app
        .add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    let b = app
        .add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    let c = app
        .add_account(&mock, Acc::new("c", KEY_C).priority(2))
        .await;
    let d = app
        .add_account(&mock, Acc::new("d", "sk-ant-api03-account-d").priority(3))
        .await;
    mock.script(KEY_A, [Step::rate_limited(30)]);
    mock.script(KEY_B, [Step::overloaded()]);
    mock.script(KEY_C, [Step::server_error()]);

    let body = body(true);
    let resp = app.messages(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got, mock.sse_transcript(&body).concat());
    let creds: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| r.credential.clone().unwrap())
        .collect();
    assert_eq!(creds, [KEY_A, KEY_B, KEY_C, "sk-ant-api03-account-d"]);

    let events = app
        .wait_events("4 usages", |e| {
            usages(e).len() == 4 && finished(e).len() == 1
        })
        .await;
    let u = usages(&events);
    let per: Vec<_> = u
        .iter()
        .map(|u| (u.account.clone(), u.attempt, u.status))
        .collect();
    assert_eq!(
        per,
        [
            (a.clone(), 1, 429),
            (b.clone(), 2, 529),
            (c.clone(), 3, 500),
            (d.clone(), 4, 200)
        ]
    );
    assert!(u[3].output_tokens > 0 && u[0].output_tokens == 0);
    let f = finished(&events)[0];
    assert_eq!(f.attempts, 4);
    assert_eq!(f.outcome, Outcome::Completed);
    let r = f.routing.as_ref().unwrap();
    assert_eq!((r.account.clone(), r.reason), (d, RoutingReason::Failover));
    let h: Vec<_> = health(&events)
        .iter()
        .map(|h| (h.account.clone(), h.to, h.reason))
        .collect();
    assert_eq!(
        h,
        [
            (
                a.clone(),
                HealthState::RateLimited,
                HealthReason::RateLimited
            ),
            (b, HealthState::Overloaded, HealthReason::Overloaded),
            (c, HealthState::Degraded, HealthReason::ServerError),
        ]
    );
    let rl = health(&events)[0];
    assert_eq!(rl.evidence.retry_after_s, Some(30));
    assert_eq!(rl.evidence.status, Some(429));
    assert_eq!(rl.evidence.error_type.as_deref(), Some("rate_limit_error"));
    app.stop().await;
}

#[tokio::test]
async fn mid_stream_errors_reach_the_client_and_are_not_retried() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    app.add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    mock.script(
        KEY_A,
        [
            Step::MidStreamError {
                after_events: 3,
                error_type: "overloaded_error".into(),
            },
            Step::Drop { after_events: 3 },
        ],
    );
    let body = body(true);

    // Upstream's own error event is forwarded as is.
    let resp = app.messages(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("\"type\":\"overloaded_error\""));
    assert!(!text.contains("message_stop"));
    assert_eq!(mock.request_count(), 1, "no retry after the first byte");

    // The overload put account a in cooldown; make it usable again for the drop case.
    assert!(app.state.proxy.pool.reset(
        &app.state
            .proxy
            .pool
            .snapshot()
            .slots
            .iter()
            .find(|s| s.account.name == "a")
            .unwrap()
            .account
            .id
    ));
    let resp = app.messages(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.ends_with("\n\n"));
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last.starts_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\""
        ),
        "{last}"
    );
    assert_eq!(mock.request_count(), 2);

    let events = app
        .wait_events("2 finishes", |e| {
            finished(e).len() == 2 && usages(e).len() == 2
        })
        .await;
    for u in usages(&events) {
        assert_eq!(u.completeness, Completeness::UpstreamErrorPartial);
        assert!(u.input_tokens > 0, "message_start usage was seen");
    }
    for f in finished(&events) {
        assert_eq!(
            (f.status, f.outcome, f.attempts),
            (200, Outcome::UpstreamError, 1)
        );
    }
    let types: Vec<_> = finished(&events)
        .iter()
        .map(|f| f.error_type.clone())
        .collect();
    assert_eq!(
        types,
        [
            Some("overloaded_error".to_owned()),
            Some("api_error".to_owned())
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn when_every_attempt_fails_the_last_upstream_error_is_returned() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--max-attempts", "2"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    app.add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    app.add_account(&mock, Acc::new("c", KEY_C).priority(2))
        .await;
    mock.script(KEY_A, [Step::server_error()]);
    mock.script(KEY_B, [Step::rate_limited(5)]);
    let resp = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "5");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(mock.request_count(), 2, "bounded by --max-attempts");
    app.stop().await;
}

#[tokio::test]
async fn a_server_error_upstream_says_not_to_retry_is_returned_without_failover() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--max-attempts", "3"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    app.add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    app.add_account(&mock, Acc::new("c", KEY_C).priority(2))
        .await;
    mock.script(
        KEY_A,
        [Step::server_error().with_header("x-should-retry", "false")],
    );
    let resp = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_eq!(mock.request_count(), 1, "no second account was tried");
    // That 500 was about the request, not the account: a stays in service. A rate
    // limit is about the account, so the same header does not stop failover (a is
    // rate-limited; b answers).
    mock.script(
        KEY_A,
        [Step::rate_limited(5).with_header("x-should-retry", "false")],
    );
    let resp = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests_for(KEY_A).len(), 2);
    assert_eq!(mock.requests_for(KEY_B).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_cooldown_then_timed_recovery() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    // Unified headers come with subscription (OAuth) accounts.
    let token = "sk-ant-oat01-subscription";
    let mut sub = Acc::new("a", token);
    sub.kind = relay::accounts::AccountKind::OAuth;
    let a = app.add_account(&mock, sub).await;
    let reset = chrono::Utc::now().timestamp() + 2;
    mock.script(token, [Step::unified_rejected(reset as u64, 7999)]);

    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    // Now the only account is cooling down: the relay says so without asking upstream.
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 529);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=3).contains(&retry),
        "retry-after {retry} follows the unified reset, not retry-after 7999"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("upstream:"));
    assert_eq!(mock.request_count(), 1);

    // Poll until the cooldown has passed and the account serves again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.messages(&body(false)).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 529);
        assert!(
            tokio::time::Instant::now() < deadline,
            "account never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = app.wait_events("recovery", |e| health(e).len() == 2).await;
    let h = health(&events);
    assert_eq!(
        (h[0].from, h[0].to),
        (HealthState::Healthy, HealthState::RateLimited)
    );
    assert_eq!(h[0].until.unwrap().timestamp(), reset);
    assert_eq!(
        h[0].evidence.unified.get("status").map(String::as_str),
        Some("rejected")
    );
    assert_eq!(
        h[0].evidence
            .unified
            .get("representative-claim")
            .map(String::as_str),
        Some("five_hour")
    );
    assert_eq!(
        (h[1].from, h[1].to, h[1].reason),
        (
            HealthState::RateLimited,
            HealthState::Healthy,
            HealthReason::CooldownExpired
        )
    );
    assert!(h.iter().all(|h| h.account == a));
    let rejected = finished(&events)
        .iter()
        .filter(|f| f.outcome == Outcome::Rejected)
        .count();
    assert!(rejected >= 1);
    app.stop().await;
}

#[tokio::test]
async fn unauthorized_and_banned_accounts_are_taken_out() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    app.add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    app.add_account(&mock, Acc::new("c", KEY_C).priority(2))
        .await;
    mock.script(KEY_A, [Step::unauthorized()]);
    mock.script(
        KEY_B,
        [Step::error(
            403,
            "permission_error",
            "This organization has been disabled.",
        )],
    );
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let events = app.wait_events("health", |e| health(e).len() == 2).await;
    let h: Vec<_> = health(&events).iter().map(|h| (h.to, h.reason)).collect();
    assert_eq!(
        h,
        [
            (HealthState::Unauthorized, HealthReason::Unauthorized),
            (HealthState::Banned, HealthReason::Forbidden)
        ]
    );
    mock.clear_requests();
    for _ in 0..3 {
        assert_eq!(
            app.messages(&body(false)).send().await.unwrap().status(),
            200
        );
    }
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.credential.as_deref() == Some(KEY_C)));
    app.stop().await;
}

#[tokio::test]
async fn sticky_sessions_hold_and_rebind_after_failover() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    for (n, k) in [("a", KEY_A), ("b", KEY_B), ("c", KEY_C)] {
        app.add_account(&mock, Acc::new(n, k)).await;
    }
    let creds = |m: &MockUpstream| -> Vec<String> {
        m.requests()
            .iter()
            .map(|r| r.credential.clone().unwrap())
            .collect()
    };

    // Header form.
    for _ in 0..8 {
        let r = app
            .messages(&body(false))
            .header("x-claude-code-session-id", "sess-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let c = creds(&mock);
    assert!(
        c.iter().all(|x| *x == c[0]),
        "one session, one account: {c:?}"
    );
    let bound = c[0].clone();

    // metadata.user_id JSON-string form.
    mock.clear_requests();
    let mut b = body(false);
    b["metadata"] = serde_json::json!({"user_id": "{\"device_id\":\"d\",\"account_uuid\":\"\",\"session_id\":\"sess-2\"}"});
    for _ in 0..8 {
        assert_eq!(app.messages(&b).send().await.unwrap().status(), 200);
    }
    let c2 = creds(&mock);
    assert!(c2.iter().all(|x| *x == c2[0]), "{c2:?}");

    // The bound account fails: the session moves and stays on the new account.
    mock.clear_requests();
    mock.script(&bound, [Step::overloaded()]);
    for _ in 0..5 {
        let r = app
            .messages(&body(false))
            .header("x-claude-code-session-id", "sess-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let c3 = creds(&mock);
    assert_eq!(c3[0], bound);
    assert!(c3[1..].iter().all(|x| *x == c3[1] && *x != bound), "{c3:?}");
    let events = app
        .wait_events("finishes", |e| finished(e).len() == 21)
        .await;
    let sticky = finished(&events)
        .iter()
        .filter(|f| f.routing.as_ref().unwrap().reason == RoutingReason::StickySession)
        .count();
    assert!(sticky >= 7 + 7 + 4 - 1, "sticky hits recorded: {sticky}");
    app.stop().await;
}

#[tokio::test]
async fn no_account_and_busy_answers_say_whose_limit() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--sse-keepalive-ms", "0"]).await;
    // Only a grouped account: the group-less key has nothing.
    let mut g = Acc::new("g", KEY_A);
    g.group = Some("vip");
    g.concurrency = 1;
    app.add_account(&mock, g).await;
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("relay:"));
    assert_eq!(mock.request_count(), 0);

    // A vip key; hold its single slot with a slow stream, then ask again.
    let (_, vip) = app
        .state
        .keys
        .create(relay::keys::NewKey {
            name: "vip".into(),
            tenant: schema::TenantId::parse("tenant_b").unwrap(),
            group: Some("vip".into()),
            expires_at: None,
            user_id: None,
        })
        .await
        .unwrap();
    // The mock holds the stream after its first event until the gate opens.
    let gate = mock.gate_events();
    gate.release(1);
    let mut slow = app
        .messages_as(vip.expose(), &body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let _first = slow.chunk().await.unwrap();
    let r = app
        .messages_as(vip.expose(), &body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrency"),
        "{v}"
    );
    gate.release(1_000);
    while slow.chunk().await.unwrap().is_some() {}
    // The slot is free again once the stream ended.
    let r = app
        .messages_as(vip.expose(), &body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

/// Health recorded by another relay (an event in the shared log) is adopted; this
/// relay's own events are not re-applied.
#[tokio::test]
async fn health_events_from_the_log_are_folded_in() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let a = app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let now = chrono::Utc::now();
    let other_relay = |to: HealthState, reason: HealthReason, until| {
        schema::Envelope::new(
            uuid::Uuid::now_v7(),
            chrono::Utc::now(),
            schema::Event::AccountHealthChanged(schema::AccountHealthChanged {
                account: a.clone(),
                from: HealthState::Healthy,
                to,
                reason,
                until,
                evidence: Default::default(),
            }),
        )
    };
    app.state
        .log
        .append(&other_relay(
            HealthState::RateLimited,
            HealthReason::RateLimited,
            Some(now + chrono::TimeDelta::seconds(600)),
        ))
        .await
        .unwrap();
    wait_health(&app, &a, HealthState::RateLimited).await;
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 529);
    assert_eq!(mock.request_count(), 0);
    // An administrator's reset elsewhere brings it back.
    app.state
        .log
        .append(&other_relay(
            HealthState::Healthy,
            HealthReason::ManualReset,
            None,
        ))
        .await
        .unwrap();
    wait_health(&app, &a, HealthState::Healthy).await;
    assert_eq!(
        app.messages(&body(false)).send().await.unwrap().status(),
        200
    );
    // Only the relay's own observations were published: none here.
    let events = app.events().await;
    assert_eq!(
        health(&events).len(),
        2,
        "the two appended by the other relay"
    );
    app.stop().await;
}

/// An `account.*` admin action makes the pool reload at once.
#[tokio::test]
async fn account_admin_actions_trigger_a_reload() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.state
        .accounts
        .add(relay::accounts::NewAccount {
            name: "late".into(),
            kind: relay::accounts::AccountKind::ApiKey,
            base_url: mock.base_url(),
            credential: relay::crypto::Secret::new(KEY_A),
            priority: 0,
            weight: 1,
            group: None,
            concurrency: 0,
            proxy_url: None,
        })
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    app.state.publisher.publish(schema::Envelope::new(
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        schema::Event::AdminAction(schema::AdminAction {
            actor: "cli".into(),
            action: "account.add".into(),
            target: "account:late".into(),
            summary: "added".into(),
        }),
    ));
    loop {
        if !app.state.proxy.pool.snapshot().slots.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() < relay::proxy::tasks::RELOAD_EVERY,
        "reloaded by the admin event, not the periodic timer"
    );
    assert_eq!(
        app.messages(&body(false)).send().await.unwrap().status(),
        200
    );
    app.stop().await;
}

async fn wait_health(app: &TestApp, id: &schema::AccountId, want: HealthState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snap = app.state.proxy.pool.snapshot();
        let slot = snap.slots.iter().find(|s| &s.account.id == id).unwrap();
        if slot.rt.health().state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The overload cooldown comes from the configuration.
#[tokio::test]
async fn overload_cooldown_is_configurable_and_recovers() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--overload-cooldown-secs", "1"]).await;
    let a = app.add_account(&mock, Acc::new("a", KEY_A)).await;
    mock.script(KEY_A, [Step::overloaded()]);
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 529, "the only account's answer, verbatim");
    let events = app
        .wait_events("overloaded", |e| health(e).len() == 1)
        .await;
    let h = health(&events)[0];
    assert_eq!(
        (h.to, h.reason),
        (HealthState::Overloaded, HealthReason::Overloaded)
    );
    let cooldown = h.until.unwrap()
        - events
            .iter()
            .find(|e| matches!(e.event, schema::Event::AccountHealthChanged(_)))
            .unwrap()
            .occurred_at;
    assert!(
        cooldown <= chrono::TimeDelta::milliseconds(1100),
        "{cooldown}"
    );
    assert!(h.account == a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.messages(&body(false)).send().await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        mock.request_count(),
        2,
        "no upstream traffic during the cooldown"
    );
    app.stop().await;
}

/// A connection that breaks after the request went out (before any response head) may
/// still be billed upstream: its attempt is recorded with unknown tokens, then the
/// request fails over. A connection that never opened sent nothing and records nothing.
#[tokio::test]
async fn a_reset_before_the_head_is_an_unknown_attempt_a_refused_connect_is_none() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--max-attempts", "3"]).await;
    let a = app
        .add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    let b = app
        .add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    mock.script(KEY_A, [Step::Reset]);
    let resp = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = app
        .wait_events("2 usages", |e| {
            usages(e).len() == 2 && finished(e).len() == 1
        })
        .await;
    let u = usages(&events);
    let per: Vec<_> = u
        .iter()
        .map(|u| (u.account.clone(), u.attempt, u.status, u.completeness))
        .collect();
    assert_eq!(
        per,
        [
            (a, 1, 0, Completeness::Unknown),
            (b, 2, 200, Completeness::Complete)
        ]
    );
    assert_eq!(u[0].input_tokens + u[0].output_tokens, 0);
    assert_eq!(finished(&events)[0].attempts, 2);

    // A port nobody listens on: the connect fails, nothing went upstream.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let c = app
        .add_account_at(&dead_url, Acc::new("c", KEY_C).priority(-1))
        .await;
    let resp = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = app
        .wait_events("2 requests", |e| finished(e).len() == 2)
        .await;
    let second = finished(&events)[1];
    assert_eq!(second.attempts, 2);
    let u = usages(&events);
    assert_eq!(u.len(), 3, "no usage for the attempt that never connected");
    assert!(u.iter().all(|u| u.account != c));
    assert_eq!((u[2].attempt, u[2].status), (2, 200));
    app.stop().await;
}
