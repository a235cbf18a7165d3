//! Given events → expect rows, one projection behaviour per test.

use crate::common::*;
use crate::each_backend;
use chrono::NaiveDate;
use ingest::EventLog;
use projections::money::nanos_to_usd;
use projections::read::{self, GroupBy, Period, UsageFilter};
use projections::Dialect as _;
use rust_decimal::Decimal;
use schema::{HealthEvidence, HealthReason, HealthState, Outcome};
use sqlx::Row;
use std::collections::BTreeMap;
use std::str::FromStr;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn nov() -> UsageFilter {
    UsageFilter {
        tenant: None,
        api_key: None,
        account: None,
        model: None,
        from_day: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        to_day: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
        period: Period::Month,
        group_by: GroupBy::default(),
        tz_offset_minutes: 0,
    }
}

async fn ledger_cost(db: &TestDb, event_id: &str) -> (i64, i64, String, String) {
    let r = sqlx::query(&db.pool.sql(
        "SELECT cost_nanos, priced_by_fallback, price_key, price_version FROM usage_ledger WHERE event_id = $1",
    ))
    .bind(event_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

each_backend!(
    the_final_usage_is_priced_with_all_five_token_kinds,
    one_hour_cache_writes_cost_twice_the_input_price,
    same_event_id_twice_counts_once,
    redelivery_out_of_order_gives_the_same_totals,
    unknown_model_is_priced_by_fallback_and_flagged,
    statement_total_equals_sum_of_event_costs,
    web_searches_are_priced_per_use_on_their_own_statement_line,
    attempts_of_unknown_usage_have_their_own_statement_line,
    account_status_follows_health_and_counts,
    request_log_joins_usage_and_prunes,
    audit_log_keeps_admin_actions_and_auth_failures,
    totals_roll_up_and_shift_by_display_offset,
    outbox_holds_one_row_per_notable_event,
    hours_are_buckets_of_the_display_offset,
    request_log_names_the_limit_that_refused_and_counts_per_limit,
);

async fn the_final_usage_is_priced_with_all_five_token_kinds(db: &TestDb) {
    // The usage event carries the final figures (e.g. 9281 input tokens restated in
    // message_delta after message_start said 2234); turning a restating stream into
    // them is the relay's part, followed end to end in relay/tests/api/billing.rs.
    let log = MemLog::new();
    let e = usage(&UsageSpec {
        tokens: [9_281, 1_200, 20_000, 3_000, 1_000],
        ..Default::default()
    });
    log.push(&e);
    catch_up(&db.pool, log).await;
    // 9281*3 + 1200*15 + 20000*0.3 + 3000*3.75 + 1000*6 = 69093 USD-per-MTok units.
    let (cost, fallback, key, version) = ledger_cost(db, &e.id.to_string()).await;
    assert_eq!(cost, 69_093_000);
    assert_eq!(nanos_to_usd(cost), d("0.069093"));
    assert_eq!(fallback, 0);
    assert_eq!(key, "claude-sonnet-4-6");
    assert_eq!(version, "anthropic-2026-10-07");
    let rows = read::usage_totals(&db.pool, &nov()).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.period, "2026-11");
    assert_eq!(
        [
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_write_5m_tokens,
            r.cache_write_1h_tokens
        ],
        [9_281, 1_200, 20_000, 3_000, 1_000]
    );
    assert_eq!(r.requests, 1);
    assert_eq!(r.cost, d("0.069093"));
}

async fn one_hour_cache_writes_cost_twice_the_input_price(db: &TestDb) {
    let log = MemLog::new();
    let one_hour = usage(&UsageSpec {
        model: "claude-opus-4-6".into(),
        tokens: [0, 0, 0, 0, 1_000_000],
        ..Default::default()
    });
    let five_min = usage(&UsageSpec {
        model: "claude-opus-4-6".into(),
        tokens: [0, 0, 0, 1_000_000, 0],
        ..Default::default()
    });
    let input = usage(&UsageSpec {
        model: "claude-opus-4-6".into(),
        tokens: [1_000_000, 0, 0, 0, 0],
        ..Default::default()
    });
    log.push_all(&[one_hour.clone(), five_min.clone(), input.clone()]);
    catch_up(&db.pool, log).await;
    let (h, ..) = ledger_cost(db, &one_hour.id.to_string()).await;
    let (m, ..) = ledger_cost(db, &five_min.id.to_string()).await;
    let (i, ..) = ledger_cost(db, &input.id.to_string()).await;
    assert_eq!(i, 5_000_000_000);
    assert_eq!(h, 2 * i);
    assert_eq!(m * 4, i * 5);
}

async fn same_event_id_twice_counts_once(db: &TestDb) {
    let log = MemLog::new();
    let u = usage(&UsageSpec::default());
    let f = finished("req_1", "acc_1", Outcome::Completed, at(2026, 11, 3, 12));
    let a = admin("key.create", at(2026, 11, 3, 12));
    // Same batch: the duplicate follows immediately.
    log.push_all(&[u.clone(), u.clone(), f.clone(), a.clone()]);
    catch_up(&db.pool, log.clone()).await;
    // A later batch: the duplicate is stored at a new position long after.
    log.push_all(&[f.clone(), u.clone(), a.clone()]);
    catch_up(&db.pool, log.clone()).await;
    assert_eq!(log.head().await.unwrap(), 7);
    let count = |t: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {t}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("usage_ledger").await, 1);
    assert_eq!(count("request_log").await, 1);
    assert_eq!(count("audit_log").await, 1);
    let rows = read::usage_totals(&db.pool, &nov()).await.unwrap();
    assert_eq!(rows[0].requests, 1);
    assert_eq!(rows[0].input_tokens, 1_000);
    let acc = read::account_status(&db.pool).await.unwrap();
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0].usage_events, 1);
    assert_eq!(acc[0].requests, 1);
    assert_eq!(acc[0].input_tokens, 1_000);
}

async fn redelivery_out_of_order_gives_the_same_totals(db: &TestDb) {
    let specs: Vec<UsageSpec> = (0..6u32)
        .map(|n| UsageSpec {
            request: format!("req_{n}"),
            at: at(2026, 11, 1 + n, 10),
            tokens: [100 + u64::from(n), 10, 1_000, 0, 50],
            model: if n % 2 == 0 {
                "claude-haiku-4-5".into()
            } else {
                "claude-opus-4-6".into()
            },
            ..Default::default()
        })
        .collect();
    let events: Vec<_> = specs.iter().map(usage).collect();
    // Delivered newest first, then partly again in another order.
    let log = MemLog::new();
    let mut order: Vec<_> = events.iter().rev().cloned().collect();
    order.extend([events[2].clone(), events[0].clone(), events[5].clone()]);
    log.push_all(&order);
    catch_up(&db.pool, log).await;
    // The expected figures come from the price table directly, event by event.
    let table = prices();
    let mut expected_cost = 0i64;
    for e in &events {
        let schema::Event::UsageRecorded(u) = &e.event else {
            unreachable!()
        };
        expected_cost +=
            projections::money::usd_to_nanos(table.price_usage(e.occurred_at, u).cost).unwrap();
    }
    let mut f = nov();
    f.period = Period::Total;
    let rows = read::usage_totals(&db.pool, &f).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].requests, 6);
    assert_eq!(rows[0].input_tokens, 100 * 6 + 15);
    assert_eq!(rows[0].cache_write_1h_tokens, 300);
    assert_eq!(rows[0].cost_nanos, expected_cost);
    // Per day: one event each, in chronological buckets regardless of arrival order.
    f.period = Period::Day;
    let days: Vec<_> = read::usage_totals(&db.pool, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.period, r.requests))
        .collect();
    assert_eq!(
        days,
        (1..=6)
            .map(|n| (format!("2026-11-0{n}"), 1))
            .collect::<Vec<_>>()
    );
}

async fn unknown_model_is_priced_by_fallback_and_flagged(db: &TestDb) {
    let log = MemLog::new();
    let e = usage(&UsageSpec {
        model: "claude-opus-9-1".into(),
        tokens: [1_000_000, 0, 0, 0, 0],
        ..Default::default()
    });
    let other = usage(&UsageSpec {
        model: "mystery-model".into(),
        tokens: [1_000_000, 0, 0, 0, 0],
        ..Default::default()
    });
    log.push_all(&[e.clone(), other.clone()]);
    catch_up(&db.pool, log).await;
    let (cost, fallback, key, _) = ledger_cost(db, &e.id.to_string()).await;
    assert_eq!(fallback, 1);
    assert_eq!(key, "claude-opus-5-5");
    assert_eq!(cost, 4_000_000_000);
    let (cost, fallback, key, _) = ledger_cost(db, &other.id.to_string()).await;
    assert_eq!(fallback, 1);
    assert_eq!(key, "claude-3-opus");
    assert_eq!(cost, 15_000_000_000);
    let rows = read::usage_totals(&db.pool, &nov()).await.unwrap();
    assert_eq!(rows[0].fallback_requests, 2);
    let st = read::statement(&db.pool, "acme", "2026-11").await.unwrap();
    assert_eq!(st.totals.fallback_priced_events, 2);
    assert!(st.lines.iter().all(|l| l.priced_by_fallback));
    assert!(st.to_csv().lines().last().unwrap().contains(",true,"));
}

async fn statement_total_equals_sum_of_event_costs(db: &TestDb) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let models = [
        "claude-sonnet-4-6",
        "claude-opus-4-6",
        "claude-haiku-5-5",
        "claude-sonnet-4-5-20250929",
        "claude-3-haiku-20240307",
        "claude-unknown-x",
    ];
    let log = MemLog::new();
    let mut events = Vec::new();
    for n in 0..400u32 {
        let mut e = usage(&UsageSpec {
            model: models[n as usize % models.len()].into(),
            request: format!("req_{n}"),
            tokens: [
                rng.gen_range(0..300_000),
                rng.gen_range(0..9_999),
                rng.gen_range(0..99_999),
                rng.gen_range(0..9_999),
                rng.gen_range(0..9_999),
            ],
            at: at(2026, 11, 1 + n % 30, n % 24),
            ..Default::default()
        });
        if let schema::Event::UsageRecorded(u) = &mut e.event {
            // Odd counts under the batch discount produce sub-nanodollar amounts.
            if n % 3 == 0 {
                u.service_tier = Some("batch".into());
            }
            if n % 5 == 0 {
                u.inference_geo = Some("us".into());
            }
            if n % 7 == 0 {
                u.speed = Some("fast".into());
            }
        }
        events.push(e);
    }
    // Noise that must not appear: another tenant, and the next month.
    events.push(usage(&UsageSpec {
        tenant: "globex",
        ..Default::default()
    }));
    events.push(usage(&UsageSpec {
        at: at(2026, 12, 1, 0),
        ..Default::default()
    }));
    log.push_all(&events);
    catch_up(&db.pool, log).await;

    let st = read::statement(&db.pool, "acme", "2026-11").await.unwrap();
    let ledger: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_id, cost_nanos FROM usage_ledger WHERE tenant = 'acme' AND day LIKE '2026-11-%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ledger.len(), 400);
    let sum: Decimal = ledger.iter().map(|(_, c)| nanos_to_usd(*c)).sum();
    assert_eq!(st.totals.cost, sum);
    assert_eq!(st.totals.cost.to_string(), sum.to_string());
    let line_sum: Decimal = st.lines.iter().map(|l| l.cost).sum();
    assert_eq!(line_sum, st.totals.cost);
    // Every event appears in exactly one line, and each event's stored cost is the
    // table's exact price rounded to the nanodollar.
    let mut traced: BTreeMap<String, usize> = BTreeMap::new();
    for l in &st.lines {
        for id in &l.event_ids {
            *traced.entry(id.clone()).or_default() += 1;
        }
    }
    assert_eq!(traced.len(), 400);
    assert!(traced.values().all(|&n| n == 1));
    let table = prices();
    let by_id: BTreeMap<String, i64> = ledger.into_iter().collect();
    let mut exact_sum = Decimal::ZERO;
    for e in events.iter().take(400) {
        let schema::Event::UsageRecorded(u) = &e.event else {
            unreachable!()
        };
        let p = table.price_usage(e.occurred_at, u);
        exact_sum += p.cost;
        assert_eq!(
            by_id[&e.id.to_string()],
            projections::money::usd_to_nanos(p.cost).unwrap()
        );
    }
    // Rounding per event moves the total by less than half a nanodollar per event.
    assert!((exact_sum - st.totals.cost).abs() <= Decimal::new(200, 9));
    assert_eq!(st.totals.requests, 400);
    assert!(st.lines.iter().any(|l| l.price_key.contains('>')));
    let csv = st.to_csv();
    assert_eq!(csv.lines().count(), st.lines.len() + 2);
    assert!(csv
        .lines()
        .last()
        .unwrap()
        .contains(&st.totals.cost.to_string()));
}

/// `usage` with `searches` web searches and `fetches` web fetches.
fn searching(
    spec: &UsageSpec,
    searches: u64,
    fetches: u64,
    tier: Option<&str>,
) -> schema::Envelope {
    let mut e = usage(spec);
    if let schema::Event::UsageRecorded(u) = &mut e.event {
        u.server_tool_use = schema::ServerToolUse {
            web_search_requests: searches,
            web_fetch_requests: fetches,
        };
        u.service_tier = tier.map(Into::into);
    }
    e
}

async fn web_searches_are_priced_per_use_on_their_own_statement_line(db: &TestDb) {
    let log = MemLog::new();
    // 1000*3 + 500*15 = 10500 µUSD of tokens, plus 3 searches at $0.01.
    let three = searching(&UsageSpec::default(), 3, 1, None);
    // Under the batch discount the tokens halve (5250 µUSD), the searches do not.
    let batch = searching(
        &UsageSpec {
            request: "req_2".into(),
            ..Default::default()
        },
        2,
        0,
        Some("batch"),
    );
    // Fetches alone cost nothing per use.
    let fetch = searching(
        &UsageSpec {
            request: "req_3".into(),
            ..Default::default()
        },
        0,
        4,
        None,
    );
    log.push_all(&[three.clone(), batch.clone(), fetch.clone()]);
    catch_up(&db.pool, log).await;
    assert_eq!(ledger_cost(db, &three.id.to_string()).await.0, 40_500_000);
    assert_eq!(ledger_cost(db, &batch.id.to_string()).await.0, 25_250_000);
    assert_eq!(ledger_cost(db, &fetch.id.to_string()).await.0, 10_500_000);
    // Totals and budgets see the searches.
    let rows = read::usage_totals(&db.pool, &nov()).await.unwrap();
    assert_eq!(rows[0].cost, d("0.07625"));

    let st = read::statement(&db.pool, "acme", "2026-11").await.unwrap();
    assert_eq!(st.server_tool_lines.len(), 1, "{st:#?}");
    let w = &st.server_tool_lines[0];
    assert_eq!(w.tool, "web_search");
    assert_eq!(w.price_version, "anthropic-2026-10-07");
    assert_eq!(w.unit_price, d("0.01"));
    assert_eq!((w.requests, w.uses), (2, 5));
    assert_eq!(w.cost, d("0.05"));
    let mut ids = vec![three.id.to_string(), batch.id.to_string()];
    ids.sort();
    assert_eq!(w.event_ids, ids);
    // The token lines carry the tokens only; together the lines make the total.
    let tokens: Decimal = st.lines.iter().map(|l| l.cost).sum();
    assert_eq!(tokens, d("0.02625"));
    assert_eq!(tokens + w.cost, st.totals.cost);
    assert_eq!(st.totals.cost, d("0.07625"));
    assert_eq!(st.totals.server_tool_cost, d("0.05"));
    assert_eq!(
        (st.totals.web_search_requests, st.totals.web_fetch_requests),
        (5, 5)
    );
    let csv = st.to_csv();
    let row = csv
        .lines()
        .find(|l| l.starts_with("acme,2026-11,web_search,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(
        row.ends_with(&format!("0.050000000,{},5,0.01", ids.join(" "))),
        "{row}"
    );
    assert!(csv.lines().last().unwrap().ends_with(",5,"), "{csv}");
}

async fn attempts_of_unknown_usage_have_their_own_statement_line(db: &TestDb) {
    let log = MemLog::new();
    let known = usage(&UsageSpec::default());
    let mut lost = usage(&UsageSpec {
        request: "req_lost".into(),
        tokens: [0, 0, 0, 0, 0],
        ..Default::default()
    });
    if let schema::Event::UsageRecorded(u) = &mut lost.event {
        u.completeness = schema::Completeness::Unknown;
        u.status = 0;
    }
    log.push_all(&[known.clone(), lost.clone(), lost.clone()]);
    catch_up(&db.pool, log).await;
    let st = read::statement(&db.pool, "acme", "2026-11").await.unwrap();
    assert_eq!(st.unknown_usage_lines.len(), 1, "{st:#?}");
    let u = &st.unknown_usage_lines[0];
    assert_eq!(u.attempts, 1, "a duplicate counts once");
    assert_eq!(u.event_ids, vec![lost.id.to_string()]);
    assert_eq!(st.totals.unknown_usage_attempts, 1);
    // Priced lines and totals hold the known usage only.
    assert_eq!(st.totals.requests, 1);
    assert_eq!(st.lines.len(), 1);
    assert_eq!(st.lines[0].event_ids, vec![known.id.to_string()]);
    assert_eq!(st.totals.cost, st.lines[0].cost);
    let csv = st.to_csv();
    assert!(
        csv.lines()
            .any(|l| l.contains(",unknown_usage,") && l.contains(&lost.id.to_string())),
        "{csv}"
    );
}

async fn account_status_follows_health_and_counts(db: &TestDb) {
    let log = MemLog::new();
    let t0 = at(2026, 11, 3, 12);
    let mut unified = BTreeMap::new();
    unified.insert("5h-utilization".to_owned(), "0.93".to_owned());
    unified.insert("status".to_owned(), "rejected".to_owned());
    let limited = health(
        "acc_1",
        HealthState::Healthy,
        HealthState::RateLimited,
        HealthReason::RateLimited,
        t0,
        HealthEvidence {
            status: Some(429),
            retry_after_s: Some(60),
            error_type: Some("rate_limit_error".into()),
            message: Some("Number of request tokens has exceeded your limit".into()),
            unified,
        },
    );
    let recovered = health(
        "acc_1",
        HealthState::RateLimited,
        HealthState::Healthy,
        HealthReason::CooldownExpired,
        t0 + chrono::Duration::seconds(61),
        HealthEvidence::default(),
    );
    log.push_all(&[
        usage(&UsageSpec::default()),
        finished("req_1", "acc_1", Outcome::Completed, t0),
        finished("req_2", "acc_1", Outcome::UpstreamError, t0),
        limited.clone(),
        finished("req_3", "acc_2", Outcome::Completed, t0),
    ]);
    catch_up(&db.pool, log.clone()).await;
    let s = read::account_status(&db.pool).await.unwrap();
    assert_eq!(s.len(), 2);
    let a = &s[0];
    assert_eq!(a.account, "acc_1");
    assert_eq!(a.state, "rate_limited");
    assert_eq!(a.reason, "rate_limited");
    assert_eq!(a.until, Some(t0 + chrono::Duration::seconds(60)));
    let err = a.last_error.as_ref().unwrap();
    assert_eq!(err.status, Some(429));
    assert_eq!(err.error_type.as_deref(), Some("rate_limit_error"));
    assert_eq!(
        a.unified.get("5h-utilization").map(String::as_str),
        Some("0.93")
    );
    assert_eq!((a.requests, a.errors, a.usage_events), (2, 1, 1));
    assert_eq!(a.input_tokens, 1_000);
    assert_eq!(s[1].account, "acc_2");
    assert_eq!(s[1].state, "healthy");
    // Recovery, then a late duplicate of the rate-limit change: the state must not
    // roll back and the change must not count twice.
    log.push_all(&[recovered, limited]);
    catch_up(&db.pool, log).await;
    let a = &read::account_status(&db.pool).await.unwrap()[0];
    assert_eq!(a.state, "healthy");
    assert_eq!(a.reason, "cooldown_expired");
    assert_eq!(a.until, None);
    assert_eq!(a.health_changes, 2);
    // The last error and unified headers stay from the rate-limit evidence.
    assert_eq!(a.last_error.as_ref().unwrap().status, Some(429));
    assert!(a.unified.contains_key("status"));
}

async fn request_log_joins_usage_and_prunes(db: &TestDb) {
    let log = MemLog::new();
    let t0 = at(2026, 11, 3, 12);
    // Usage of attempt 1 arrives before the request finishes, attempt 2 after.
    let u1 = usage(&UsageSpec {
        request: "req_9".into(),
        tokens: [100, 10, 0, 0, 0],
        ..Default::default()
    });
    let f = finished("req_9", "acc_2", Outcome::Completed, t0);
    let u2 = usage(&UsageSpec {
        request: "req_9".into(),
        account: "acc_2",
        tokens: [200, 20, 5, 0, 0],
        ..Default::default()
    });
    let old = finished(
        "req_old",
        "acc_1",
        Outcome::UpstreamError,
        at(2026, 1, 1, 0),
    );
    log.push_all(&[u1, f.clone(), old]);
    catch_up(&db.pool, log.clone()).await;
    log.push(&u2);
    catch_up(&db.pool, log).await;
    let all = read::request_log(&db.pool, &Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let e = &all[0];
    assert_eq!(e.request_id, "req_9");
    assert_eq!(e.event_id, f.id.to_string());
    assert_eq!(e.account, "acc_2");
    assert_eq!(e.outcome, "completed");
    assert_eq!(e.routing_reason, "priority_weighted");
    assert_eq!(e.ttfb_us, Some(40_000));
    assert_eq!(
        (e.usage_events, e.input_tokens, e.output_tokens),
        (2, 300, 30)
    );
    assert_eq!(e.cache_read_tokens, 5);
    assert!(e.cost > Decimal::ZERO);
    assert_eq!(all[1].request_id, "req_old");
    assert_eq!(all[1].usage_events, 0);
    let only = read::request_log(
        &db.pool,
        &read::RequestLogFilter {
            outcome: Some("upstream_error".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!(only.len(), 1);
    let pruned =
        projections::requests::prune_request_log(&db.pool, at(2026, 6, 1, 0).timestamp_millis())
            .await
            .unwrap();
    assert_eq!(pruned, 1);
    let left = read::request_log(&db.pool, &Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].request_id, "req_9");
}

async fn audit_log_keeps_admin_actions_and_auth_failures(db: &TestDb) {
    let log = MemLog::new();
    let a = admin("account.reset", at(2026, 11, 3, 12));
    let f = auth_failed(at(2026, 11, 3, 13));
    log.push_all(&[
        a.clone(),
        usage(&UsageSpec::default()),
        f.clone(),
        a.clone(),
    ]);
    catch_up(&db.pool, log).await;
    let all = read::audit_log(&db.pool, &Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].kind, "auth.failed");
    assert_eq!(all[0].reason, "unknown");
    assert_eq!(all[0].key_prefix, "sk-relay-abc");
    assert_eq!(all[1].kind, "admin.action");
    assert_eq!(all[1].action, "account.reset");
    assert_eq!(all[1].actor, "cli");
    let admins = read::audit_log(
        &db.pool,
        &read::AuditFilter {
            kind: Some("admin.action".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!(admins.len(), 1);
    assert_eq!(admins[0].event_id, a.id.to_string());
}

async fn totals_roll_up_and_shift_by_display_offset(db: &TestDb) {
    let log = MemLog::new();
    let late = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, 30, 23, 30, 0).unwrap();
    log.push_all(&[
        usage(&UsageSpec {
            at: late,
            ..Default::default()
        }),
        usage(&UsageSpec {
            at: at(2026, 11, 2, 8),
            key: "key_b",
            ..Default::default()
        }),
        usage(&UsageSpec {
            at: at(2025, 5, 2, 8),
            model: "claude-haiku-4-5".into(),
            ..Default::default()
        }),
    ]);
    catch_up(&db.pool, log).await;
    let mut f = nov();
    f.from_day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    f.to_day = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
    f.period = Period::Year;
    let years: Vec<_> = read::usage_totals(&db.pool, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.period, r.requests))
        .collect();
    assert_eq!(years, vec![("2025".into(), 1), ("2026".into(), 2)]);
    f.period = Period::Month;
    f.group_by = GroupBy {
        api_key: true,
        ..Default::default()
    };
    let months: Vec<_> = read::usage_totals(&db.pool, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.period, r.api_key.unwrap_or_default(), r.requests))
        .collect();
    assert_eq!(
        months,
        vec![
            ("2025-05".into(), "key_a".into(), 1),
            ("2026-11".into(), "key_a".into(), 1),
            ("2026-11".into(), "key_b".into(), 1)
        ]
    );
    // At UTC+1 the 23:30 event belongs to December 1st.
    f.tz_offset_minutes = 60;
    f.group_by = GroupBy::default();
    let shifted: Vec<_> = read::usage_totals(&db.pool, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.period, r.requests))
        .collect();
    assert_eq!(
        shifted,
        vec![
            ("2025-05".into(), 1),
            ("2026-11".into(), 1),
            ("2026-12".into(), 1)
        ]
    );
    // The offset read and the UTC read agree on the cost of the same events.
    f.period = Period::Total;
    let a = read::usage_totals(&db.pool, &f).await.unwrap();
    f.tz_offset_minutes = 0;
    let b = read::usage_totals(&db.pool, &f).await.unwrap();
    assert_eq!(a[0].cost_nanos, b[0].cost_nanos);
    // Filters.
    f.api_key = Some("key_b".into());
    let only_b = read::usage_totals(&db.pool, &f).await.unwrap();
    assert_eq!(only_b[0].requests, 1);
}

async fn outbox_holds_one_row_per_notable_event(db: &TestDb) {
    let log = MemLog::new();
    let limited = health(
        "acc_1",
        HealthState::Healthy,
        HealthState::RateLimited,
        HealthReason::RateLimited,
        at(2026, 11, 3, 12),
        HealthEvidence::default(),
    );
    let overloaded = health(
        "acc_1",
        HealthState::Healthy,
        HealthState::Overloaded,
        HealthReason::Overloaded,
        at(2026, 11, 3, 12),
        HealthEvidence::default(),
    );
    let budget = admin("budget.threshold_crossed", at(2026, 11, 3, 13));
    // A duplicate published again after the dedup window arrives at a new position.
    log.push_all(&[
        limited.clone(),
        overloaded,
        usage(&UsageSpec::default()),
        budget.clone(),
        limited.clone(),
        admin("key.create", at(2026, 11, 3, 14)),
    ]);
    catch_up(&db.pool, log).await;
    let rows =
        sqlx::query("SELECT event_id, kind, audience FROM notification_outbox ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            (
                limited.id.to_string(),
                "account.rate_limited".into(),
                "operator".into()
            ),
            (
                budget.id.to_string(),
                "budget.threshold_crossed".into(),
                "tenant".into()
            ),
        ]
    );
}

async fn hours_are_buckets_of_the_display_offset(db: &TestDb) {
    let log = MemLog::new();
    let t =
        |d, h, m| chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, d, h, m, 0).unwrap();
    log.push_all(&[
        usage(&UsageSpec {
            at: t(2, 8, 5),
            ..Default::default()
        }),
        usage(&UsageSpec {
            at: t(2, 8, 55),
            key: "key_b",
            ..Default::default()
        }),
        usage(&UsageSpec {
            at: t(2, 9, 0),
            ..Default::default()
        }),
        // 23:30 UTC on the 2nd: the 3rd at UTC+1, outside a one-day UTC range.
        usage(&UsageSpec {
            at: t(2, 23, 30),
            ..Default::default()
        }),
    ]);
    catch_up(&db.pool, log).await;
    let mut f = nov();
    f.from_day = NaiveDate::from_ymd_opt(2026, 11, 2).unwrap();
    f.to_day = f.from_day;
    f.period = Period::Hour;
    let hours = |rows: Vec<read::UsageRow>| -> Vec<(String, u64)> {
        rows.into_iter().map(|r| (r.period, r.requests)).collect()
    };
    assert_eq!(
        hours(read::usage_totals(&db.pool, &f).await.unwrap()),
        vec![
            ("2026-11-02T08:00".into(), 2),
            ("2026-11-02T09:00".into(), 1),
            ("2026-11-02T23:00".into(), 1)
        ]
    );
    // At UTC+5:30 hours are local: 08:05 UTC is 13:35, 08:55 UTC is 14:25; the range
    // is the local day, which 23:30 UTC (05:00 on the 3rd) has left.
    f.tz_offset_minutes = 330;
    assert_eq!(
        hours(read::usage_totals(&db.pool, &f).await.unwrap()),
        vec![
            ("2026-11-02T13:00".into(), 1),
            ("2026-11-02T14:00".into(), 2)
        ]
    );
    // Grouping and filters work per hour as per day.
    f.tz_offset_minutes = 0;
    f.group_by = GroupBy {
        api_key: true,
        ..Default::default()
    };
    f.api_key = Some("key_b".into());
    let only_b: Vec<_> = read::usage_totals(&db.pool, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.period, r.api_key.unwrap_or_default(), r.requests))
        .collect();
    assert_eq!(only_b, vec![("2026-11-02T08:00".into(), "key_b".into(), 1)]);
    // The hours of a day add up to the day read from the totals table.
    f.api_key = None;
    f.group_by = GroupBy::default();
    let hourly = read::usage_totals(&db.pool, &f).await.unwrap();
    f.period = Period::Day;
    let daily = read::usage_totals(&db.pool, &f).await.unwrap();
    assert_eq!(daily.len(), 1);
    assert_eq!(
        hourly.iter().map(|r| r.cost_nanos).sum::<i64>(),
        daily[0].cost_nanos
    );
    assert_eq!(
        hourly.iter().map(|r| r.requests).sum::<u64>(),
        daily[0].requests
    );
}

fn refused(
    request: &str,
    tenant: &str,
    limit: Option<&str>,
    when: chrono::DateTime<chrono::Utc>,
) -> schema::Envelope {
    let mut e = finished(request, "acc_1", Outcome::Rejected, when).with_key(
        Some(schema::TenantId::parse(tenant).unwrap()),
        Some(schema::ApiKeyId::parse("key_a").unwrap()),
    );
    if let schema::Event::RequestFinished(r) = &mut e.event {
        r.status = 429;
        r.attempts = 0;
        r.routing = None;
        r.error_type = Some("rate_limit_error".into());
        r.rejected_by = limit.map(str::to_owned);
    }
    e
}

async fn request_log_names_the_limit_that_refused_and_counts_per_limit(db: &TestDb) {
    let log = MemLog::new();
    let rpm = refused("req_1", "acme", Some("rpm"), at(2026, 11, 3, 12));
    log.push_all(&[
        rpm.clone(),
        refused("req_2", "acme", Some("rpm"), at(2026, 11, 3, 13)),
        refused(
            "req_3",
            "acme",
            Some("daily_budget_usd"),
            at(2026, 11, 3, 14),
        ),
        refused("req_4", "other", Some("rpm"), at(2026, 11, 3, 14)),
        // Outside the range read below.
        refused("req_5", "acme", Some("max_concurrency"), at(2026, 11, 5, 0)),
        // Rejected, but not by a tenant limit.
        refused("req_6", "acme", None, at(2026, 11, 3, 15)),
        finished("req_7", "acc_1", Outcome::Completed, at(2026, 11, 3, 16)),
        // A duplicate at a new position counts once.
        rpm.clone(),
    ]);
    catch_up(&db.pool, log).await;
    let entry = read::request_log(
        &db.pool,
        &read::RequestLogFilter {
            request_id: Some("req_1".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!(entry.len(), 1);
    assert_eq!(entry[0].rejected_by, "rpm");
    assert_eq!(entry[0].outcome, "rejected");
    let by_rpm = read::request_log(
        &db.pool,
        &read::RequestLogFilter {
            tenant: Some("acme".into()),
            rejected_by: Some("rpm".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    let ids: Vec<_> = by_rpm.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, vec!["req_2", "req_1"]);
    let unlimited = read::request_log(
        &db.pool,
        &read::RequestLogFilter {
            request_id: Some("req_6".into()),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!(unlimited[0].rejected_by, "");
    let mut f = read::RejectionFilter {
        tenant: None,
        api_key: None,
        from_ms: at(2026, 11, 3, 0).timestamp_millis(),
        to_ms: at(2026, 11, 4, 0).timestamp_millis(),
    };
    let counts = |v: Vec<read::RejectionCount>| -> Vec<(String, u64)> {
        v.into_iter().map(|c| (c.rejected_by, c.requests)).collect()
    };
    assert_eq!(
        counts(read::rejections(&db.pool, &f).await.unwrap()),
        vec![("rpm".into(), 3), ("daily_budget_usd".into(), 1)]
    );
    f.tenant = Some("acme".into());
    assert_eq!(
        counts(read::rejections(&db.pool, &f).await.unwrap()),
        vec![("rpm".into(), 2), ("daily_budget_usd".into(), 1)]
    );
    f.tenant = Some("nobody".into());
    assert!(read::rejections(&db.pool, &f).await.unwrap().is_empty());
}
