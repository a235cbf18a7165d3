//! The relay against the mock's faithful modes: SSE as the API may frame it (CRLF, `:`
//! comments, events split across frames, several events per frame), server-tool usage
//! restated in `message_delta`, and 429s carrying the rate-limit headers in their
//! rejected state, for subscription (unified) and API-key (standard) accounts.

use crate::*;
use bench::mock::{expected_usage, MockUpstream, SseFraming, Step};
use schema::{HealthReason, HealthState};
use serde_json::json;

/// The usage event's counts as the mock's usage type, for one comparison.
fn counted(u: &schema::UsageRecorded) -> bench::mock::MockUsage {
    bench::mock::MockUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
        cache_creation_5m: u.cache_creation_5m_input_tokens,
        cache_creation_1h: u.cache_creation_1h_input_tokens,
        web_search_requests: u.server_tool_use.web_search_requests,
        web_fetch_requests: u.server_tool_use.web_fetch_requests,
    }
}

#[tokio::test]
async fn every_sse_framing_passes_through_unchanged_and_is_counted_exactly() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--sse-keepalive-ms", "0"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let body = body(true);
    let framings = [
        SseFraming {
            crlf: true,
            ..SseFraming::default()
        },
        SseFraming {
            comments: true,
            ..SseFraming::default()
        },
        SseFraming {
            split: true,
            ..SseFraming::default()
        },
        SseFraming {
            coalesce: true,
            ..SseFraming::default()
        },
        SseFraming::all(),
    ];
    // Each framing with the usage stated once, then restated in message_delta.
    let mut n = 0;
    for restate in [false, true] {
        mock.set_restate_usage(restate);
        for framing in framings {
            mock.set_sse_framing(framing);
            let resp = app.messages(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let got = resp.bytes().await.unwrap();
            assert_eq!(
                got,
                mock.sse_transcript(&body).concat(),
                "{framing:?}, restated {restate}"
            );
            n += 1;
            let events = app
                .wait_events("usage", |e| usages(e).len() == n && finished(e).len() == n)
                .await;
            let u = usages(&events)[n - 1];
            assert_eq!(
                counted(u),
                expected_usage(&body),
                "{framing:?}, restated {restate}"
            );
            assert_eq!(u.completeness, schema::Completeness::Complete);
            assert_eq!(u.model, "claude-sonnet-4-6");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn server_tool_uses_reported_in_message_delta_are_counted() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--sse-keepalive-ms", "0"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let mut body = json!({
        "model": "claude-opus-4-7", "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Find and read the release notes."}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
                  {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 2},
                  {"name": "notes", "input_schema": {"type": "object"}}]
    });
    let want = expected_usage(&body);
    assert_eq!((want.web_search_requests, want.web_fetch_requests), (3, 2));
    for (i, stream) in [true, false].into_iter().enumerate() {
        body["stream"] = json!(stream);
        let resp = app.messages(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        if stream {
            // message_start knew nothing of the searches; message_delta restates it all.
            assert!(text.contains("\"server_tool_use\":{\"web_search_requests\":3"));
            assert!(!text.contains("\"web_search_requests\":0"));
        }
        let events = app.wait_events("usage", |e| usages(e).len() == i + 1).await;
        let u = usages(&events)[i];
        assert_eq!(counted(u), want, "stream {stream}");
        assert!(
            u.input_tokens > want.before_server_tools().input_tokens,
            "the results' tokens are billed"
        );
    }
    app.stop().await;
}

/// An OAuth (subscription) account.
fn subscription<'a>(name: &'a str, token: &'a str) -> Acc<'a> {
    let mut a = Acc::new(name, token);
    a.kind = relay::accounts::AccountKind::OAuth;
    a
}

#[tokio::test]
async fn an_oauth_429_cools_the_account_down_until_the_rejected_claims_reset() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[
        "--rate-limit-max-cooldown-secs",
        "21600",
        "--max-attempts",
        "2",
    ])
    .await;
    let sub = app
        .add_account(&mock, subscription("sub", "sk-ant-oat01-sub").priority(0))
        .await;
    app.add_account(&mock, Acc::new("b", KEY_B).priority(1))
        .await;
    // The weekly window binds and resets in two hours; the five-hour window is fine and
    // resets later than that, so only the representative claim gives the right end.
    let reset = chrono::Utc::now().timestamp() + 2 * 3600;
    mock.script(
        "sk-ant-oat01-sub",
        [Step::claim_rejected(
            "seven_day",
            u64::try_from(reset).unwrap(),
        )],
    );
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200, "failed over to b");
    let events = app.wait_events("cooldown", |e| !health(e).is_empty()).await;
    let h = health(&events);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].account, sub);
    assert_eq!(
        (h[0].from, h[0].to, h[0].reason),
        (
            HealthState::Healthy,
            HealthState::RateLimited,
            HealthReason::RateLimited
        )
    );
    assert_eq!(h[0].until.unwrap().timestamp(), reset);
    let unified = &h[0].evidence.unified;
    assert_eq!(unified.get("status").map(String::as_str), Some("rejected"));
    assert_eq!(
        unified.get("representative-claim").map(String::as_str),
        Some("seven_day")
    );
    let five_hour_reset: i64 = unified["5h-reset"].parse().unwrap();
    assert!(five_hour_reset > reset, "the other window resets later");
    // While it cools down, requests go to b without asking the subscription.
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.requests_for("sk-ant-oat01-sub").len(), 1);
    app.stop().await;
}

/// A relay whose only account, `acc`, answers its next request with
/// `Step::rate_limited(secs)`: the 429's headers as the client got them, the account's
/// health change, and the time (epoch seconds) just before the request.
async fn rate_limited_once(
    acc: Acc<'_>,
    secs: u64,
) -> (
    reqwest::header::HeaderMap,
    schema::AccountHealthChanged,
    i64,
) {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[
        "--rate-limit-max-cooldown-secs",
        "21600",
        "--max-attempts",
        "1",
    ])
    .await;
    let id = app.add_account(&mock, acc.clone()).await;
    let before = chrono::Utc::now().timestamp();
    mock.script(acc.credential, [Step::rate_limited(secs)]);
    let r = app.messages(&body(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let events = app.wait_events("cooldown", |e| !health(e).is_empty()).await;
    let h = health(&events)[0].clone();
    assert_eq!((&h.account, h.to), (&id, HealthState::RateLimited));
    app.stop().await;
    (r.headers().clone(), h, before)
}

#[tokio::test]
async fn a_plain_oauth_429_cools_down_until_its_five_hour_reset_not_a_healthy_one() {
    let (headers, h, before) = rate_limited_once(subscription("sub", "sk-ant-oat01-sub"), 90).await;
    assert_eq!(
        headers["anthropic-ratelimit-unified-status"], "rejected",
        "the client sees upstream's headers"
    );
    assert_eq!(
        h.evidence
            .unified
            .get("representative-claim")
            .map(String::as_str),
        Some("five_hour")
    );
    let until = h.until.unwrap().timestamp();
    assert!(
        (before + 89..=before + 92).contains(&until),
        "cooldown ends at the rejected window's reset, {} s away",
        until - before
    );
}

#[tokio::test]
async fn an_api_key_429_with_nothing_remaining_cools_down_for_its_retry_after() {
    let (headers, h, before) = rate_limited_once(Acc::new("a", KEY_A), 45).await;
    assert_eq!(headers["retry-after"], "45");
    assert_eq!(headers["anthropic-ratelimit-requests-remaining"], "0");
    assert!(headers.get("anthropic-ratelimit-unified-status").is_none());
    assert!(h.evidence.unified.is_empty(), "{:?}", h.evidence);
    let until = h.until.unwrap().timestamp();
    assert!(
        (before + 44..=before + 47).contains(&until),
        "{}",
        until - before
    );
}
