//! Billing end to end: the real relay, projectors on, in front of the mock upstream.
//! Each case sends requests and then asserts the priced usage-ledger rows (tenant, key,
//! account, model, attempt, every token kind, server-tool uses, tier, completeness, unit
//! prices, cost to the nanodollar, and that there are no others) and the tenant's
//! statement. Every case runs twice: embedded (SQLite log and read models) and scale
//! (JetStream log, PostgreSQL read models).
//!
//! Expected costs are computed here from the mock's documented usage rules
//! (`bench::mock::expected_usage`) and the shipped table's unit prices written out
//! below, not with the relay's pricing code.

use crate::admin::PgDb;
use crate::*;
use bench::mock::{
    expected_usage, CacheSplit, EventGate, MockConfig, MockUpstream, MockUsage, SseFraming, Step,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::Row;

/// `claude-sonnet-4-6` in `projections/prices/anthropic.json`, in nanodollars per token:
/// input $3, output $15, cache read $0.30, 5-minute write $3.75 (1.25 × input), 1-hour
/// write $6 (2 × input) per million tokens.
const SONNET_46_NANOS: [i64; 5] = [3_000, 15_000, 300, 3_750, 6_000];
/// The same unit prices as the ledger stores them (USD per million tokens).
const SONNET_46_UNITS: [&str; 5] = ["3", "15", "0.3", "3.75", "6"];
/// Halved by the batch tier.
const SONNET_46_BATCH_UNITS: [&str; 5] = ["1.5", "7.5", "0.15", "1.875", "3"];
/// One web search: $10 per 1,000 searches.
const WEB_SEARCH_NANOS: i64 = 10_000_000;
const MODEL: &str = "claude-sonnet-4-6";
/// The tenant every case bills.
const TENANT: &str = "acme";

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// SQLite log and read models.
    Embedded,
    /// JetStream log, PostgreSQL read models.
    Scale,
}

macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn on_sqlite() {
                    super::$case(super::Backend::Embedded).await;
                }
                #[tokio::test]
                async fn on_postgres_and_jetstream() {
                    super::$case(super::Backend::Scale).await;
                }
            }
        )*
    };
}

on_both!(
    a_faithfully_framed_stream_with_restated_usage_is_billed,
    a_non_streaming_answer_is_billed,
    cache_writes_of_both_lifetimes_and_reads_are_billed_apart,
    failover_bills_each_attempt_to_the_account_that_made_it,
    a_client_that_leaves_is_billed_for_the_drained_stream,
    a_client_that_leaves_under_stop_is_billed_for_what_was_seen,
    an_upstream_cut_mid_stream_is_billed_for_what_was_seen,
    web_searches_are_billed_per_use_on_their_own_statement_line,
    a_batch_tier_answer_is_billed_at_half_price,
    an_unnamed_stream_with_only_the_one_hour_split_is_billed,
    writes_without_a_split_are_billed_as_five_minute_writes,
);

/// A relay with projectors on, its stores, and the admin's token.
struct Stack {
    app: TestApp,
    admin: String,
    pg: Option<PgDb>,
    _nats: Option<nats::testing::NatsServer>,
}

impl Stack {
    /// Starts a relay on `backend` with the settings billing depends on spelled out.
    async fn start(backend: Backend, policy: &str) -> Stack {
        let secret = "j".repeat(40);
        let flags = [
            "--projectors",
            "on",
            "--disconnect-policy",
            policy,
            "--max-attempts",
            "3",
            "--sse-keepalive-ms",
            "0",
            "--jwt-secret",
            secret.as_str(),
        ];
        let (app, pg, nats) = match backend {
            Backend::Embedded => (spawn_app(&flags).await, None, None),
            Backend::Scale => {
                let pg = PgDb::new().await;
                let nats = nats::testing::NatsServer::start().await;
                let app = spawn_app_with(Some(pg.url.clone()), Some(nats.url()), &flags).await;
                (app, Some(pg), Some(nats))
            }
        };
        let admin = app.login("admin", ADMIN_PASSWORD).await;
        Stack {
            app,
            admin,
            pg,
            _nats: nats,
        }
    }

    /// A key of `tenant`: the secret and the key id.
    async fn key(&self, tenant: &str) -> (String, String) {
        let (key, secret) = self
            .app
            .state
            .keys
            .create(relay::keys::NewKey {
                name: format!("{tenant}-key"),
                tenant: TenantId::parse(tenant).unwrap(),
                group: None,
                expires_at: None,
                user_id: None,
            })
            .await
            .unwrap();
        (secret.expose().to_owned(), key.id.to_string())
    }

    /// Waits until `requests` requests have finished and the usage and request
    /// projections have applied every event logged so far.
    async fn settle(&self, requests: usize) {
        self.app
            .wait_events("requests finished", |e| finished(e).len() == requests)
            .await;
        let head = self.app.state.log.head().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let lag = projections::read::lag(
                &self.app.state.db,
                &*self.app.state.log,
                &["usage", "requests"],
            )
            .await
            .unwrap();
            if lag.iter().all(|l| l.checkpoint >= head) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "projections never caught up: {lag:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every usage-ledger row, in log order.
    async fn ledger(&self) -> Vec<(String, Billed)> {
        let rows = sqlx::query(
            "SELECT event_id, tenant, api_key, account, model, request_id, attempt, status, \
             stream, input_tokens, output_tokens, cache_read_tokens, cache_write_5m_tokens, \
             cache_write_1h_tokens, web_search_requests, web_fetch_requests, service_tier, \
             completeness, price_version, price_key, priced_by_fallback, unit_input, \
             unit_output, unit_cache_read, unit_cache_write_5m, unit_cache_write_1h, \
             cost_nanos FROM usage_ledger ORDER BY position",
        )
        .fetch_all(&self.app.state.db)
        .await
        .unwrap();
        rows.iter()
            .map(|r| {
                let s = |i: usize| r.try_get::<String, _>(i).unwrap();
                let n = |i: usize| r.try_get::<i64, _>(i).unwrap();
                let u = |i: usize| u64::try_from(n(i)).unwrap();
                (
                    s(0),
                    Billed {
                        tenant: s(1),
                        api_key: s(2),
                        account: s(3),
                        model: s(4),
                        request_id: s(5),
                        attempt: n(6),
                        status: n(7),
                        stream: n(8) == 1,
                        tokens: [u(9), u(10), u(11), u(12), u(13)],
                        web_search: u(14),
                        web_fetch: u(15),
                        service_tier: s(16),
                        completeness: s(17),
                        price_version: s(18),
                        price_key: s(19),
                        fallback: n(20) == 1,
                        units: [s(21), s(22), s(23), s(24), s(25)],
                        cost_nanos: n(26),
                    },
                )
            })
            .collect()
    }

    /// The tenant's statement for this month, from the admin API.
    async fn statement(&self, tenant: &str) -> Value {
        let month = chrono::Utc::now().format("%Y-%m");
        let (status, st) = self
            .app
            .api(
                "GET",
                &format!("/api/v1/statements?tenant={tenant}&month={month}"),
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!(status, 200, "{st}");
        st
    }

    async fn finish(self) {
        self.app.stop().await;
        if let Some(pg) = self.pg {
            pg.drop_db().await;
        }
    }
}

/// One ledger row, as the test expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Billed {
    tenant: String,
    api_key: String,
    account: String,
    model: String,
    request_id: String,
    attempt: i64,
    status: i64,
    stream: bool,
    /// Input, output, cache read, 5-minute write, 1-hour write.
    tokens: [u64; 5],
    web_search: u64,
    web_fetch: u64,
    service_tier: String,
    completeness: String,
    price_version: String,
    price_key: String,
    fallback: bool,
    units: [String; 5],
    cost_nanos: i64,
}

/// The price-table version in force today.
fn version_now() -> &'static str {
    if chrono::Utc::now().date_naive() >= chrono::NaiveDate::from_ymd_opt(2026, 10, 7).unwrap() {
        "anthropic-2026-10-07"
    } else {
        "anthropic-2024-01-01"
    }
}

fn tokens_of(u: &MockUsage) -> [u64; 5] {
    [
        u.input_tokens,
        u.output_tokens,
        u.cache_read_input_tokens,
        u.cache_creation_5m,
        u.cache_creation_1h,
    ]
}

/// What `tokens` and `searches` cost at Sonnet 4.6's prices, in nanodollars: the token
/// part (halved under batch; every per-token price is an even number of nanodollars,
/// so exactly) plus the searches, which batch does not discount.
fn cost_nanos(tokens: [u64; 5], searches: u64, batch: bool) -> i64 {
    let t: i64 = tokens
        .iter()
        .zip(SONNET_46_NANOS)
        .map(|(n, p)| i64::try_from(*n).unwrap() * p)
        .sum();
    let t = if batch { t / 2 } else { t };
    t + i64::try_from(searches).unwrap() * WEB_SEARCH_NANOS
}

/// A dollar amount of the API (a decimal string) in nanodollars, exactly.
fn nanos(v: &Value) -> i64 {
    let usd: Decimal = v.as_str().unwrap_or_else(|| panic!("{v}")).parse().unwrap();
    let n = usd * Decimal::from(1_000_000_000);
    assert!(n.fract().is_zero(), "{usd} is finer than a nanodollar");
    n.to_i64().unwrap()
}

/// Asserts the statement of `tenant` is made of `rows` (all of one unit-price set):
/// one token line, one web-search line when there were searches, exact totals.
fn assert_statement(st: &Value, rows: &[(String, Billed)]) {
    let mut ids: Vec<String> = rows.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    let sum = |k: usize| rows.iter().map(|(_, b)| b.tokens[k]).sum::<u64>();
    let searches: u64 = rows.iter().map(|(_, b)| b.web_search).sum();
    let fetches: u64 = rows.iter().map(|(_, b)| b.web_fetch).sum();
    let total: i64 = rows.iter().map(|(_, b)| b.cost_nanos).sum();
    let search_nanos = i64::try_from(searches).unwrap() * WEB_SEARCH_NANOS;
    let lines = st["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{st:#}");
    let l = &lines[0];
    let b = &rows[0].1;
    assert_eq!(l["model"], MODEL);
    assert_eq!(l["price_version"], b.price_version.as_str());
    assert_eq!(l["price_key"], MODEL);
    assert_eq!(l["priced_by_fallback"], false);
    let units: Vec<&str> = [
        "input",
        "output",
        "cache_read",
        "cache_write_5m",
        "cache_write_1h",
    ]
    .iter()
    .map(|k| l["unit_prices"][k].as_str().unwrap())
    .collect();
    assert_eq!(units, b.units);
    assert_eq!(l["requests"], rows.len());
    for (k, name) in [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(l[name], sum(k), "{name}");
        assert_eq!(st["totals"][name], sum(k), "totals {name}");
    }
    assert_eq!(l["cost_nanos"], total - search_nanos);
    assert_eq!(nanos(&l["cost"]), total - search_nanos);
    assert_eq!(l["event_ids"], json!(ids));
    let tools = st["server_tool_lines"].as_array().unwrap();
    if searches == 0 {
        assert!(tools.is_empty(), "{st:#}");
    } else {
        let mut search_ids: Vec<String> = rows
            .iter()
            .filter(|(_, b)| b.web_search > 0)
            .map(|(id, _)| id.clone())
            .collect();
        search_ids.sort();
        assert_eq!(tools.len(), 1, "{st:#}");
        let w = &tools[0];
        assert_eq!(w["tool"], "web_search");
        assert_eq!(w["price_version"], b.price_version.as_str());
        assert_eq!(w["unit_price"], "0.01");
        assert_eq!(w["uses"], searches);
        assert_eq!(w["requests"], search_ids.len());
        assert_eq!(w["cost_nanos"], search_nanos);
        assert_eq!(w["event_ids"], json!(search_ids));
    }
    let t = &st["totals"];
    assert_eq!(t["requests"], rows.len());
    assert_eq!(t["web_search_requests"], searches);
    assert_eq!(t["web_fetch_requests"], fetches);
    assert_eq!(nanos(&t["server_tool_cost"]), search_nanos);
    assert_eq!(t["cost_nanos"], total);
    assert_eq!(nanos(&t["cost"]), total);
    assert_eq!(t["fallback_priced_events"], 0);
}

/// What one attempt is billed as.
struct Attempt {
    account: AccountId,
    request_id: String,
    attempt: i64,
    status: i64,
    stream: bool,
    usage: MockUsage,
    tier: &'static str,
    completeness: &'static str,
}

impl Attempt {
    /// A first attempt that completed with `usage`.
    fn ok(account: &AccountId, request_id: &str, stream: bool, usage: MockUsage) -> Self {
        Attempt {
            account: account.clone(),
            request_id: request_id.to_owned(),
            attempt: 1,
            status: 200,
            stream,
            usage,
            tier: "standard",
            completeness: "complete",
        }
    }

    /// The ledger row of this attempt of `key_id` (tenant `acme`).
    fn billed(&self, key_id: &str) -> Billed {
        let tokens = tokens_of(&self.usage);
        let batch = self.tier == "batch";
        let units = if batch {
            SONNET_46_BATCH_UNITS
        } else {
            SONNET_46_UNITS
        };
        Billed {
            tenant: TENANT.to_owned(),
            api_key: key_id.to_owned(),
            account: self.account.to_string(),
            model: MODEL.to_owned(),
            request_id: self.request_id.clone(),
            attempt: self.attempt,
            status: self.status,
            stream: self.stream,
            tokens,
            web_search: self.usage.web_search_requests,
            web_fetch: self.usage.web_fetch_requests,
            service_tier: self.tier.to_owned(),
            completeness: self.completeness.to_owned(),
            price_version: version_now().to_owned(),
            price_key: MODEL.to_owned(),
            fallback: false,
            units: units.map(str::to_owned),
            cost_nanos: cost_nanos(tokens, self.usage.web_search_requests, batch),
        }
    }
}

/// A stack with account `a` on `mock` and a key of [`TENANT`].
struct Case {
    s: Stack,
    account: AccountId,
    key: String,
    key_id: String,
}

impl Case {
    async fn start(backend: Backend, policy: &str, mock: &MockUpstream) -> Case {
        let s = Stack::start(backend, policy).await;
        let account = s.app.add_account(mock, Acc::new("a", KEY_A)).await;
        let (key, key_id) = s.key(TENANT).await;
        Case {
            s,
            account,
            key,
            key_id,
        }
    }

    /// Sends `body` with the key; the relay's request id and the answer's bytes.
    async fn send(&self, body: &Value) -> (String, bytes::Bytes) {
        let resp = self
            .s
            .app
            .messages_as(&self.key, body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let rid = request_id(&resp);
        (rid, resp.bytes().await.unwrap())
    }

    /// Waits for `want.len()` requests' billing, then asserts the ledger holds exactly
    /// `want` and the statement is made of it.
    async fn assert_billed(self, requests: usize, want: &[Attempt]) {
        self.s.settle(requests).await;
        let rows = self.s.ledger().await;
        let want: Vec<Billed> = want.iter().map(|a| a.billed(&self.key_id)).collect();
        assert_eq!(
            rows.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            want
        );
        assert_statement(&self.s.statement(TENANT).await, &rows);
        self.s.finish().await;
    }
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-relay-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// A first turn that writes a 1-hour and a 5-minute cache segment.
fn two_lifetimes(stream: bool) -> Value {
    json!({
        "model": MODEL, "max_tokens": 512, "stream": stream,
        "system": [{"type": "text", "text": "Long-lived instructions. ".repeat(60),
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "A document to discuss. ".repeat(30),
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "What does it say?"}]}]
    })
}

/// What `message_start` reports: the final input side, one output token.
fn start_usage(body: &Value) -> MockUsage {
    MockUsage {
        output_tokens: 1,
        ..expected_usage(body)
    }
}

async fn a_faithfully_framed_stream_with_restated_usage_is_billed(backend: Backend) {
    // CRLF, comments, split and coalesced frames, usage restated in message_delta.
    let mock = MockUpstream::start_with(MockConfig {
        restate_usage: true,
        sse_framing: SseFraming::all(),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let c = Case::start(backend, "drain", &mock).await;
    // A follow-up turn: uncached input, output, cache reads and a 1-hour write (the
    // 5-minute kind has its own case: one answer writes one lifetime after reads).
    let mut body = two_lifetimes(true);
    body["messages"] = json!([
        {"role": "user", "content": [{"type": "text", "text": "Earlier question. ".repeat(20),
                                      "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "Earlier answer."},
        {"role": "user", "content": [{"type": "text", "text": "Next question. ".repeat(20),
                                      "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                                     {"type": "text", "text": "Go on."}]}
    ]);
    let usage = expected_usage(&body);
    let [input, output, read, w5, w1] = tokens_of(&usage);
    assert!(
        input > 0 && output > 0 && read > 0 && w1 > 0 && w5 == 0,
        "{usage:?}"
    );
    let (rid, bytes) = c.send(&body).await;
    assert_eq!(bytes, mock.sse_transcript(&body).concat());
    let want = Attempt::ok(&c.account, &rid, true, usage);
    c.assert_billed(1, &[want]).await;
}

async fn a_non_streaming_answer_is_billed(backend: Backend) {
    let mock = MockUpstream::start().await;
    let c = Case::start(backend, "drain", &mock).await;
    let body = body(false);
    let (rid, bytes) = c.send(&body).await;
    assert_eq!(bytes, mock.message_body(&body));
    let want = Attempt::ok(&c.account, &rid, false, expected_usage(&body));
    c.assert_billed(1, &[want]).await;
}

async fn cache_writes_of_both_lifetimes_and_reads_are_billed_apart(backend: Backend) {
    let mock = MockUpstream::start().await;
    let c = Case::start(backend, "drain", &mock).await;
    // First turn: a 1-hour write (system) and a 5-minute write (the document).
    let first = two_lifetimes(true);
    let u1 = expected_usage(&first);
    assert!(u1.cache_creation_1h > 0 && u1.cache_creation_5m > 0);
    // The follow-up reads both segments back and writes its own, for an hour.
    let mut second = first.clone();
    second["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": "It says hello."}),
        json!({"role": "user", "content": [{"type": "text", "text": "And then? ".repeat(10),
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}),
    ]);
    let u2 = expected_usage(&second);
    assert!(u2.cache_read_input_tokens > 0 && u2.cache_creation_1h > 0);
    let (r1, _) = c.send(&first).await;
    let (r2, _) = c.send(&second).await;
    let want = [
        Attempt::ok(&c.account, &r1, true, u1),
        Attempt::ok(&c.account, &r2, true, u2),
    ];
    c.assert_billed(2, &want).await;
}

async fn failover_bills_each_attempt_to_the_account_that_made_it(backend: Backend) {
    let mock = MockUpstream::start().await;
    let s = Stack::start(backend, "drain").await;
    let a = s
        .app
        .add_account(&mock, Acc::new("a", KEY_A).priority(0))
        .await;
    let b = s
        .app
        .add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    let c = s
        .app
        .add_account(&mock, Acc::new("c", KEY_C).priority(2))
        .await;
    mock.script(KEY_A, [Step::rate_limited(30)]);
    mock.script(KEY_B, [Step::overloaded()]);
    let (key, key_id) = s.key(TENANT).await;
    let c = Case {
        s,
        account: c,
        key,
        key_id,
    };
    let body = body(true);
    let (rid, _) = c.send(&body).await;
    // Per account, as the usage API shows it: the refusals reported no usage.
    c.s.settle(1).await;
    let (status, usage) =
        c.s.app
            .api(
                "GET",
                &format!("/api/v1/usage?granularity=total&group_by=account&tenant={TENANT}"),
                Some(&c.s.admin),
                None,
            )
            .await;
    assert_eq!(status, 200, "{usage}");
    let per: Vec<(String, u64, i64)> = usage["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let account = r["account"].as_str().unwrap().to_owned();
            (account, r["requests"].as_u64().unwrap(), nanos(&r["cost"]))
        })
        .collect();
    let served = cost_nanos(tokens_of(&expected_usage(&body)), 0, false);
    let mut want = vec![
        (a.to_string(), 1, 0),
        (b.to_string(), 1, 0),
        (c.account.to_string(), 1, served),
    ];
    want.sort();
    assert_eq!(per, want);
    // One row per attempt, each on the account that made it.
    let refused = |account, attempt, status| Attempt {
        attempt,
        status,
        tier: "",
        ..Attempt::ok(account, &rid, true, MockUsage::default())
    };
    let answered = Attempt {
        attempt: 3,
        ..Attempt::ok(&c.account, &rid, true, expected_usage(&body))
    };
    let want = [refused(&a, 1, 429), refused(&b, 2, 529), answered];
    c.assert_billed(1, &want).await;
}

/// Sends a stream whose events the mock holds back, reads `message_start`, and leaves.
async fn leave_after_message_start(c: &Case, gate: &EventGate, body: &Value) -> String {
    gate.release(1);
    let mut resp = c.s.app.messages_as(&c.key, body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"event: message_start"), "{first:?}");
    drop(resp);
    rid
}

async fn a_client_that_leaves_is_billed_for_the_drained_stream(backend: Backend) {
    let mock = MockUpstream::start().await;
    let gate = mock.gate_events();
    let c = Case::start(backend, "drain", &mock).await;
    let body = body(true);
    let rid = leave_after_message_start(&c, &gate, &body).await;
    // Upstream sends the rest only once the relay drains it for the final usage.
    let drains = &c.s.app.state.proxy.metrics.drains;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while drains.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never drained"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.release(mock.sse_transcript(&body).len());
    let want = Attempt {
        completeness: "client_disconnected_drained",
        ..Attempt::ok(&c.account, &rid, true, expected_usage(&body))
    };
    c.assert_billed(1, &[want]).await;
}

async fn a_client_that_leaves_under_stop_is_billed_for_what_was_seen(backend: Backend) {
    let mock = MockUpstream::start().await;
    let gate = mock.gate_events();
    let c = Case::start(backend, "stop", &mock).await;
    let body = body(true);
    let rid = leave_after_message_start(&c, &gate, &body).await;
    let want = Attempt {
        completeness: "client_disconnected_partial",
        ..Attempt::ok(&c.account, &rid, true, start_usage(&body))
    };
    c.assert_billed(1, &[want]).await;
}

async fn an_upstream_cut_mid_stream_is_billed_for_what_was_seen(backend: Backend) {
    let mock = MockUpstream::start().await;
    let c = Case::start(backend, "drain", &mock).await;
    mock.script(KEY_A, [Step::Drop { after_events: 5 }]);
    let body = body(true);
    let (rid, bytes) = c.send(&body).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("event: error\n"), "{text}");
    let want = Attempt {
        completeness: "upstream_error_partial",
        ..Attempt::ok(&c.account, &rid, true, start_usage(&body))
    };
    c.assert_billed(1, &[want]).await;
}

async fn web_searches_are_billed_per_use_on_their_own_statement_line(backend: Backend) {
    let mock = MockUpstream::start().await;
    let c = Case::start(backend, "drain", &mock).await;
    let body = json!({
        "model": MODEL, "max_tokens": 1024, "stream": true,
        "messages": [{"role": "user", "content": "What changed in the news today?"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
                  {"type": "web_fetch_20250910", "name": "web_fetch"}]
    });
    let usage = expected_usage(&body);
    assert_eq!(
        (usage.web_search_requests, usage.web_fetch_requests),
        (2, 1)
    );
    let (rid, _) = c.send(&body).await;
    let want = Attempt::ok(&c.account, &rid, true, usage);
    c.assert_billed(1, &[want]).await;
}

async fn a_batch_tier_answer_is_billed_at_half_price(backend: Backend) {
    let mock = MockUpstream::start().await;
    mock.set_service_tier("batch");
    let c = Case::start(backend, "drain", &mock).await;
    let body = body(false);
    let (rid, _) = c.send(&body).await;
    let want = Attempt {
        tier: "batch",
        ..Attempt::ok(&c.account, &rid, false, expected_usage(&body))
    };
    c.assert_billed(1, &[want]).await;
}

async fn an_unnamed_stream_with_only_the_one_hour_split_is_billed(backend: Backend) {
    // Events without `event:` lines, three frames per chunk, usage restated in
    // `message_delta`, and a `cache_creation` that names the 1-hour writes only: the
    // rest of the total are 5-minute writes.
    let mock = MockUpstream::start_with(MockConfig {
        restate_usage: true,
        sse_framing: SseFraming {
            unnamed: true,
            coalesce: true,
            ..SseFraming::default()
        },
        cache_split: CacheSplit::OneHourOnly,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let c = Case::start(backend, "drain", &mock).await;
    let body = two_lifetimes(true);
    let usage = expected_usage(&body);
    assert!(usage.cache_creation_5m > 0 && usage.cache_creation_1h > 0);
    let (rid, bytes) = c.send(&body).await;
    assert_eq!(bytes, mock.sse_transcript(&body).concat());
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("event:") && !text.contains("ephemeral_5m"),
        "{text}"
    );
    let want = Attempt::ok(&c.account, &rid, true, usage);
    c.assert_billed(1, &[want]).await;
}

async fn writes_without_a_split_are_billed_as_five_minute_writes(backend: Backend) {
    // Only `cache_creation_input_tokens`: the documented default lifetime, 5 minutes.
    let mock = MockUpstream::start_with(MockConfig {
        cache_split: CacheSplit::Absent,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let c = Case::start(backend, "drain", &mock).await;
    let mut want = Vec::new();
    for stream in [true, false] {
        let body = two_lifetimes(stream);
        let (rid, bytes) = c.send(&body).await;
        assert!(!String::from_utf8_lossy(&bytes).contains("cache_creation\""));
        let usage = expected_usage(&body);
        let billed = MockUsage {
            cache_creation_5m: usage.cache_creation_5m + usage.cache_creation_1h,
            cache_creation_1h: 0,
            ..usage
        };
        assert!(usage.cache_creation_1h > 0 && billed.cache_creation_5m > usage.cache_creation_5m);
        want.push(Attempt::ok(&c.account, &rid, stream, billed));
    }
    c.assert_billed(2, &want).await;
}
