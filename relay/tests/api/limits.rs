//! Tenant limits that hold: concurrency, rpm, budgets, models and addresses, answered
//! in Anthropic's shape, recorded as rejections, and shown by the limits endpoint.

use crate::admin::PgDb;
use crate::*;
use bench::mock::{MockConfig, MockUpstream, Step};
use serde_json::{json, Value};

/// A relay with one account on `mock`, the admin's token, and a key with `limits`.
async fn limited(app: &TestApp, mock: &MockUpstream, limits: Value) -> (String, String, String) {
    app.add_account(mock, Acc::new("a", KEY_A)).await;
    let admin = app.login("admin", ADMIN_PASSWORD).await;
    let (status, created) = app
        .api(
            "POST",
            "/api/v1/api-keys",
            Some(&admin),
            Some(json!({"name": "limited"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["api_key"]["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let (status, patched) = app
        .api(
            "PATCH",
            &format!("/api/v1/api-keys/{id}"),
            Some(&admin),
            Some(limits),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    (admin, id, key)
}

async fn wait_until(
    what: &str,
    mut cond: impl FnMut() -> futures::future::BoxFuture<'static, bool>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn concurrency_is_capped_and_every_permit_comes_back() {
    let mock = MockUpstream::start_with(MockConfig {
        first_byte_delay: Duration::from_millis(800),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let app = spawn_app(&["--disconnect-policy", "stop"]).await;
    let (admin, id, key) = limited(&app, &mock, json!({"max_concurrency": 3})).await;
    let sends = (0..50).map(|_| app.messages_as(&key, &body(true)).send());
    let answers = futures::future::join_all(sends).await;
    let mut ok = 0;
    for r in answers {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => {
                assert_eq!(r.headers()["x-relay-concurrency-limit"], "3");
                r.bytes().await.unwrap();
                ok += 1;
            }
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                let b: Value = r.json().await.unwrap();
                assert_eq!(b["error"]["type"], "rate_limit_error");
                assert!(
                    b["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("max_concurrency"),
                    "{b}"
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(mock.request_count(), 3, "the mock saw more than 3 requests");

    // Permits come back on every exit path: a client that leaves mid-stream, an
    // upstream error, an upstream refusal.
    mock.script(
        KEY_A,
        [
            Step::server_error().with_header("x-should-retry", "false"),
            Step::unauthorized(),
        ],
    );
    for _ in 0..2 {
        let r = app.messages_as(&key, &body(false)).send().await.unwrap();
        assert!(
            r.status().is_server_error() || r.status() == 401,
            "{}",
            r.status()
        );
    }
    let r = app.messages_as(&key, &body(true)).send().await.unwrap();
    drop(r);
    let state = app.state.clone();
    let kid = id.clone();
    wait_until("every permit back", move || {
        let state = state.clone();
        let kid = kid.clone();
        Box::pin(async move { state.limiter.in_flight(&kid) == 0 })
    })
    .await;
    let (status, limits) = app
        .api(
            "GET",
            &format!("/api/v1/api-keys/{id}/limits"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{limits}");
    let conc = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "max_concurrency")
        .unwrap()
        .clone();
    assert_eq!(
        (conc["value"].as_str(), conc["used"].as_str()),
        (Some("3"), Some("0")),
        "{conc}"
    );
}

#[tokio::test]
async fn rpm_lets_ten_through_and_tells_the_rest_when_to_come_back() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let (_, _, key) = limited(&app, &mock, json!({"rpm": 10})).await;
    let sends = (0..30).map(|_| app.messages_as(&key, &body(false)).send());
    let mut codes = std::collections::BTreeMap::new();
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        if r.status() == 429 {
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=7).contains(&wait), "retry-after {wait}");
        }
        *codes.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&200), Some(&10), "{codes:?}");
    assert_eq!(codes.get(&429), Some(&20), "{codes:?}");
    let events = app
        .wait_events("20 rejections", |ev| {
            finished(ev)
                .iter()
                .filter(|f| f.rejected_by.as_deref() == Some("rpm"))
                .count()
                == 20
        })
        .await;
    assert!(finished(&events)
        .iter()
        .filter(|f| f.rejected_by.is_some())
        .all(|f| f.outcome == schema::Outcome::Rejected));
}

#[tokio::test]
async fn models_and_addresses_are_refused_with_their_own_message() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let (admin, id, key) =
        limited(&app, &mock, json!({"allowed_models": ["claude-haiku-*"]})).await;
    let r = app.messages_as(&key, &body(false)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["type"], "permission_error");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not use model"),
        "{b}"
    );
    let mut haiku = body(false);
    haiku["model"] = json!("claude-haiku-4-5");
    assert_eq!(
        app.messages_as(&key, &haiku).send().await.unwrap().status(),
        200
    );
    let (status, _) = app
        .api(
            "PATCH",
            &format!("/api/v1/api-keys/{id}"),
            Some(&admin),
            Some(json!({"allowed_models": null, "allowed_ips": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(status, 200);
    // Within the key cache's lifetime.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let b: Value = loop {
        let r = app.messages_as(&key, &body(false)).send().await.unwrap();
        if r.status() == 403 {
            break r.json().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new limit never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may not be used from 127.0.0.1"),
        "{b}"
    );
    // Bad limits are refused, naming the field.
    for bad in [
        json!({"rpm": 0}),
        json!({"allowed_ips": ["300.0.0.1"]}),
        json!({"daily_budget_usd": "-1"}),
        json!({"daily_budget_usd": "abc"}),
        json!({"monthly_budget_usd": 1e30}),
    ] {
        let (status, r) = app
            .api(
                "PATCH",
                &format!("/api/v1/api-keys/{id}"),
                Some(&admin),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {r}");
    }
}

/// Sends requests one after another until the budget refuses one; returns how many
/// were served.
async fn spend_until_refused(app: &TestApp, key: &str) -> usize {
    let mut served = 0;
    loop {
        let r = app.messages_as(key, &body(false)).send().await.unwrap();
        match r.status().as_u16() {
            200 => served += 1,
            402 => {
                let b: Value = r.json().await.unwrap();
                assert_eq!(b["error"]["type"], "billing_error");
                assert!(
                    b["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("total_budget_usd exhausted"),
                    "{b}"
                );
                return served;
            }
            s => panic!("unexpected {s}"),
        }
        assert!(served < 500, "the budget never ran out");
    }
}

/// The key's cost in the usage ledger once it holds `requests` requests.
async fn ledger_cost(app: &TestApp, admin: &str, id: &str, requests: u64) -> rust_decimal::Decimal {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, usage) = app
            .api(
                "GET",
                &format!("/api/v1/usage?granularity=total&api_key={id}&from=2020-01-01"),
                Some(admin),
                None,
            )
            .await;
        if usage["items"][0]["requests"].as_u64() == Some(requests) {
            return usage["items"][0]["cost"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ledger never caught up: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn total_cost(app: &TestApp, token: &str, key_id: &str) -> Value {
    let (_, usage) = app
        .api(
            "GET",
            &format!("/api/v1/usage?granularity=total&api_key={key_id}&from=2020-01-01"),
            Some(token),
            None,
        )
        .await;
    usage["items"][0]["cost"].clone()
}

#[tokio::test]
async fn a_total_budget_holds_under_concurrency_and_agrees_with_the_usage_api() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--projectors", "on"]).await;
    let budget = "0.25";
    let (admin, id, key) = limited(&app, &mock, json!({"total_budget_usd": budget})).await;
    // 100 at once: the reservations in flight stop the burst at the budget.
    let sends = (0..100).map(|_| app.messages_as(&key, &body(false)).send());
    let mut ok = 0;
    for r in futures::future::join_all(sends).await {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => {
                let left: rust_decimal::Decimal = r.headers()["x-relay-budget-remaining-usd"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(left >= rust_decimal::Decimal::ZERO);
                ok += 1;
            }
            402 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert!(ok > 0 && ok < 100, "{ok} of 100 served");
    // Then one at a time until refused: settled costs free what they did not use.
    ok += spend_until_refused(&app, &key).await;
    let budget: rust_decimal::Decimal = budget.parse().unwrap();
    // The ledger has every served request.
    let spent = ledger_cost(&app, &admin, &id, ok as u64).await;
    assert!(spent <= budget, "spent {spent} of a {budget} budget");
    let (_, limits) = app
        .api(
            "GET",
            &format!("/api/v1/api-keys/{id}/limits"),
            Some(&admin),
            None,
        )
        .await;
    let total = limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["limit"] == "total_budget_usd")
        .unwrap()
        .clone();
    let used: rust_decimal::Decimal = total["used"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        used, spent,
        "the limits endpoint and the usage API disagree: {total}"
    );
    assert_eq!(
        total_cost(&app, &admin, &id)
            .await
            .as_str()
            .unwrap()
            .parse::<rust_decimal::Decimal>()
            .unwrap(),
        used
    );
    eprintln!("served {ok}; spent {spent} of {budget}");
    // Crossing 50 % and 80 % was announced once each, with the key on the event.
    let events = app
        .wait_events("threshold events", |ev| {
            ev.iter()
                .filter(|e| matches!(&e.event, schema::Event::AdminAction(a) if a.action == "budget.threshold_crossed"))
                .count()
                >= 2
        })
        .await;
    let crossed: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            schema::Event::AdminAction(a) if a.action == "budget.threshold_crossed" => {
                assert_eq!(e.api_key.as_ref().map(|k| k.to_string()), Some(id.clone()));
                Some(a.summary.clone())
            }
            _ => None,
        })
        .collect();
    for pct in ["50%", "80%"] {
        assert_eq!(
            crossed
                .iter()
                .filter(|s| s.contains(&format!("passed {pct}")))
                .count(),
            1,
            "{crossed:?}"
        );
    }
}

#[tokio::test]
async fn a_daily_budget_resets_at_midnight_in_the_zone_across_a_dst_change() {
    let app = spawn_app(&["--billing-timezone", "America/New_York"]).await;
    let key = app.state.keys.list_all().await.unwrap().remove(0);
    let limits = relay::limits::KeyLimits {
        daily_budget_usd: Some("0.015".parse().unwrap()),
        ..Default::default()
    };
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let admit = |now: chrono::DateTime<chrono::Utc>, id: &'static str| {
        let app = &app;
        let key = key.clone();
        let limits = limits.clone();
        async move {
            app.state
                .limiter
                .admit(
                    &key,
                    &limits,
                    None,
                    Some("claude-sonnet-4-5"),
                    None,
                    10_000_000,
                    id,
                    now,
                )
                .await
        }
    };
    // 1 November 2026 is 25 hours long in New York (clocks fall back at 02:00 EDT).
    // 23:59 EST on 31 October is 03:59 UTC on 1 November; the day ends at 04:00 UTC.
    let first = admit(at("2026-11-01T03:59:00Z"), "req_1")
        .await
        .expect("room at first");
    let second = admit(at("2026-11-01T03:59:30Z"), "req_2")
        .await
        .err()
        .expect("the day is full");
    assert_eq!(second.limit, relay::limits::LimitName::DailyBudget);
    assert!(
        second.message.contains("daily_budget_usd exhausted"),
        "{}",
        second.message
    );
    // 00:00:30 EDT on 1 November: a new day, a new window.
    let third = admit(at("2026-11-01T04:00:30Z"), "req_3")
        .await
        .expect("a new day");
    // The long day still ends at local midnight: 05:00 UTC on 2 November.
    let fourth = admit(at("2026-11-02T04:30:00Z"), "req_4")
        .await
        .err()
        .expect("the 25-hour day is full");
    assert_eq!(fourth.limit, relay::limits::LimitName::DailyBudget);
    let fifth = admit(at("2026-11-02T05:00:30Z"), "req_5")
        .await
        .expect("the next day");
    drop((first, third, fifth));
}

#[tokio::test]
async fn two_relays_share_a_budget_and_a_concurrency_cap() {
    let db = PgDb::new().await;
    two_relays_share(&db.url).await;
    db.drop_db().await;
}

/// The same on MariaDB: the lease transactions lock a row with `SELECT … FOR UPDATE`
/// there too.
#[tokio::test]
async fn two_relays_share_a_budget_and_a_concurrency_cap_on_mariadb() {
    let db = crate::MyDb::new().await;
    two_relays_share(&db.url).await;
}

#[expect(clippy::print_stderr, reason = "reports what the run served")]
async fn two_relays_share(db_url: &str) {
    let mock = MockUpstream::start_with(MockConfig {
        first_byte_delay: Duration::from_millis(500),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    // Scale mode: one database, one JetStream stream; A also runs the projectors.
    let nats = nats::testing::NatsServer::start().await;
    let secret = "s".repeat(40);
    let flags = ["--jwt-secret", secret.as_str(), "--projectors", "on"];
    let a = spawn_app_with(Some(db_url.to_owned()), Some(nats.url()), &flags).await;
    let b = spawn_app_with(
        Some(db_url.to_owned()),
        Some(nats.url()),
        &["--jwt-secret", secret.as_str()],
    )
    .await;
    let (admin, id, key) = limited(
        &a,
        &mock,
        json!({"max_concurrency": 4, "total_budget_usd": "0.06"}),
    )
    .await;
    relay::proxy::reload_accounts(&b.state).await.unwrap();
    // 40 at once, half on each relay: at most 4 reach upstream together.
    let sends = (0..20)
        .map(|_| a.messages_as(&key, &body(false)).send())
        .chain((0..20).map(|_| b.messages_as(&key, &body(false)).send()));
    let ok = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|r| r.as_ref().unwrap().status() == 200)
        .count();
    assert!(
        (1..=4).contains(&ok),
        "{ok} served at once with max_concurrency 4"
    );
    assert!(mock.request_count() <= 4);
    // Then both relays spend the rest, one request at a time each, alternating.
    let mut served = ok;
    let mut refused = [false, false];
    while !(refused[0] && refused[1]) {
        for (i, app) in [&a, &b].into_iter().enumerate() {
            if refused[i] {
                continue;
            }
            match app
                .messages_as(&key, &body(false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
            {
                200 => served += 1,
                402 => refused[i] = true,
                429 => {}
                s => panic!("unexpected {s}"),
            }
        }
        assert!(served < 500);
    }
    let spent = ledger_cost(&a, &admin, &id, served as u64).await;
    let budget: rust_decimal::Decimal = "0.06".parse().unwrap();
    assert!(spent <= budget, "two relays spent {spent} of {budget}");
    eprintln!("two relays served {served}; spent {spent} of {budget}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_limit_changed_on_one_relay_holds_on_the_other_within_a_second() {
    let db = PgDb::new().await;
    let mock = MockUpstream::start().await;
    let secret = "s".repeat(40);
    let flags = ["--jwt-secret", secret.as_str()];
    let a = spawn_app_on(Some(db.url.clone()), &flags).await;
    let b = spawn_app_on(Some(db.url.clone()), &flags).await;
    let (admin, id, key) = limited(&a, &mock, json!({"rpm": 1000})).await;
    relay::proxy::reload_accounts(&b.state).await.unwrap();
    assert_eq!(
        b.messages_as(&key, &body(false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = a
        .api(
            "PATCH",
            &format!("/api/v1/api-keys/{id}"),
            Some(&admin),
            Some(json!({"allowed_models": ["claude-haiku-*"]})),
        )
        .await;
    assert_eq!(status, 200);
    let changed = std::time::Instant::now();
    loop {
        let s = b
            .messages_as(&key, &body(false))
            .send()
            .await
            .unwrap()
            .status();
        if s == 403 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "relay B never applied the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = changed.elapsed();
    eprintln!("a limit change reached the other relay after {took:?}");
    // The key cache's lifetime bounds it: under a second plus one lookup.
    assert!(relay::keys::CACHE_TTL < Duration::from_secs(1));
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_limit_far_from_reached_refuses_nothing_under_concurrency() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    let (_, _, key) = limited(
        &app,
        &mock,
        json!({"max_concurrency": 100000, "rpm": 1000000, "total_budget_usd": "1000000"}),
    )
    .await;
    for _ in 0..3 {
        let sends = (0..64).map(|_| app.messages_as(&key, &body(false)).send());
        for r in futures::future::join_all(sends).await {
            assert_eq!(
                r.unwrap().status(),
                200,
                "a limit nowhere near reached refused a request"
            );
        }
    }
}

/// Web searches are billed per use on top of tokens ($0.01 each): a burst of requests
/// that each allow two searches must not overspend a budget that their tokens alone
/// would fit many times over. The reservation holds the searches too.
#[tokio::test]
async fn a_budget_reserves_the_web_searches_a_request_allows() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--projectors", "on"]).await;
    let budget: rust_decimal::Decimal = "0.20".parse().unwrap();
    let (admin, id, key) =
        limited(&app, &mock, json!({"total_budget_usd": budget.to_string()})).await;
    let searching = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": "What is new today?"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    });
    assert_eq!(
        bench::mock::expected_usage(&searching).web_search_requests,
        2
    );
    let sends = (0..20).map(|_| app.messages_as(&key, &searching).send());
    let mut ok = 0u64;
    for r in futures::future::join_all(sends).await {
        match r.unwrap().status().as_u16() {
            200 => ok += 1,
            402 => {}
            s => panic!("unexpected {s}"),
        }
    }
    // Each costs about $0.03 (two searches and their results' tokens) and reserves
    // about $0.08: two fit in $0.20 at once (more as earlier ones settle). Reserving
    // tokens alone (under $0.001 each) would let all 20 through, $0.58.
    assert!(ok < 20, "{ok} of 20 served");
    // Then one at a time until refused.
    loop {
        let r = app.messages_as(&key, &searching).send().await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            402 => break,
            s => panic!("unexpected {s}"),
        }
        assert!(ok < 20, "the budget never ran out");
    }
    let spent = ledger_cost(&app, &admin, &id, ok).await;
    assert!(
        spent <= budget && ok >= 2,
        "spent {spent} of a {budget} budget in {ok} requests"
    );
}

/// The largest limits a key may have (100 model patterns of 128 characters, 100 IPv6
/// ranges) are stored, read back, enforced and audited on MariaDB, where text columns
/// are bounded: 28 KB of JSON and a longer audit summary.
#[tokio::test]
async fn the_largest_limits_a_key_may_have_round_trip_on_mariadb() {
    let db = crate::MyDb::new().await;
    let mock = MockUpstream::start().await;
    let app = spawn_app_on(Some(db.url.clone()), &["--projectors", "on"]).await;
    let models: Vec<String> = (0..100)
        .map(|i| format!("claude-{i:03}-{}", "x".repeat(117)))
        .collect();
    assert!(models.iter().all(|m| m.len() == 128));
    let ips: Vec<String> = (0..100)
        .map(|i| format!("2001:0db8:{i:04x}:ffff:ffff:ffff:ffff:ff00/120"))
        .collect();
    let limits = json!({"allowed_models": models, "allowed_ips": ips});
    let (admin, id, key) = limited(&app, &mock, limits).await;
    let (status, got) = app
        .api("GET", &format!("/api/v1/api-keys/{id}"), Some(&admin), None)
        .await;
    assert_eq!(status, 200, "{got}");
    let stored = &got["limits"];
    assert_eq!(
        stored["allowed_models"].as_array().unwrap().len(),
        100,
        "{got}"
    );
    assert_eq!(stored["allowed_models"][99], models[99].as_str());
    assert_eq!(stored["allowed_ips"].as_array().unwrap().len(), 100);
    // Enforced: the test client's address is in none of the ranges.
    let r = app.messages_as(&key, &body(false)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // Audited in full, through the projection into the MariaDB read model.
    wait_until("the audit entry of the change", || {
        let (app_addr, admin, http) = (app.addr, admin.clone(), app.http.clone());
        let needle = models[99][..40].to_owned();
        Box::pin(async move {
            let r = http
                .get(format!("http://{app_addr}/api/v1/admin/audit?limit=100"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let audit: Value = r.json().await.unwrap();
            audit["items"].as_array().unwrap().iter().any(|e| {
                e["summary"]
                    .as_str()
                    .is_some_and(|s| s.len() > 12_000 && s.contains(&needle))
            })
        })
    })
    .await;
    app.stop().await;
}
