//! Stream timing: event-by-event forwarding, keepalives during upstream silence, client
//! disconnects.

use crate::*;
use bench::mock::{expected_usage, MockUpstream, Step};
use schema::{Completeness, Outcome};
use std::time::Duration;

#[tokio::test]
async fn keepalive_comments_fill_upstream_silence_at_event_boundaries() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--sse-keepalive-ms", "100"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    mock.script(
        KEY_A,
        [Step::Stall {
            after_events: 3,
            duration: Duration::from_millis(700),
        }],
    );
    let body = body(true);
    let resp = app.messages(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    let keepalives = text.matches(": keepalive\n\n").count();
    assert!(
        keepalives >= 2,
        "expected keepalives during a 700 ms silence, got {keepalives}"
    );
    // Without the comments the stream is exactly upstream's; and they sit between events.
    let want = String::from_utf8(mock.sse_transcript(&body).concat()).unwrap();
    assert_eq!(text.replace(": keepalive\n\n", ""), want);
    for (i, _) in text.match_indices(": keepalive") {
        assert!(
            i == 0 || text[..i].ends_with("\n\n"),
            "keepalive inside an event at {i}"
        );
    }
    let events = app.wait_events("usage", |e| usages(e).len() == 1).await;
    assert_eq!(usages(&events)[0].completeness, Completeness::Complete);
    app.stop().await;
}

#[tokio::test]
async fn upstream_idle_timeout_ends_the_stream_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[
        "--upstream-idle-timeout-secs",
        "1",
        "--sse-keepalive-ms",
        "0",
    ])
    .await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    mock.script(
        KEY_A,
        [Step::Stall {
            after_events: 3,
            duration: Duration::from_secs(5),
        }],
    );
    let resp = app.messages(&body(true)).send().await.unwrap();
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.ends_with("\n\n"));
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\n"), "{last}");
    assert!(last.contains("idle timeout"));
    let events = app.wait_events("finish", |e| finished(e).len() == 1).await;
    assert_eq!(finished(&events)[0].outcome, Outcome::UpstreamError);
    app.stop().await;
}

/// Lets the mock send `message_start` only, reads it, and leaves.
async fn disconnect_after_first_chunk(
    app: &TestApp,
    gate: &bench::mock::EventGate,
    body: &serde_json::Value,
) {
    gate.release(1);
    let mut resp = app.messages(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("event: message_start"));
    drop(resp);
}

#[tokio::test]
async fn client_disconnect_drains_upstream_for_the_final_usage() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--sse-keepalive-ms", "0"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let gate = mock.gate_events();
    let body = body(true);
    disconnect_after_first_chunk(&app, &gate, &body).await;
    // The rest of the stream leaves upstream only once the relay drains it.
    let drains = &app.state.proxy.metrics.drains;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while drains.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no drain started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.release(mock.sse_transcript(&body).len());
    let events = app
        .wait_events("drained usage", |e| {
            usages(e).len() == 1 && finished(e).len() == 1
        })
        .await;
    let u = usages(&events)[0];
    assert_eq!(u.completeness, Completeness::ClientDisconnectedDrained);
    assert_eq!(
        u.output_tokens,
        expected_usage(&body).output_tokens,
        "final usage captured"
    );
    assert_eq!(finished(&events)[0].outcome, Outcome::ClientDisconnected);
    app.stop().await;
}

#[tokio::test]
async fn client_disconnect_with_stop_policy_records_partial_usage() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&["--disconnect-policy", "stop", "--sse-keepalive-ms", "0"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    // Upstream holds everything after message_start: the usage can only be what was seen.
    let gate = mock.gate_events();
    let body = body(true);
    disconnect_after_first_chunk(&app, &gate, &body).await;
    let events = app
        .wait_events("partial usage", |e| usages(e).len() == 1)
        .await;
    let u = usages(&events)[0];
    assert_eq!(u.completeness, Completeness::ClientDisconnectedPartial);
    assert_eq!(
        u.input_tokens,
        expected_usage(&body).input_tokens,
        "message_start usage kept"
    );
    assert!(u.output_tokens < expected_usage(&body).output_tokens);
    app.stop().await;
}

/// A client that gives up while a non-streaming answer is still being generated does
/// not cancel the upstream exchange: its usage is recorded.
#[tokio::test]
async fn client_leaving_before_the_response_head_still_records_usage() {
    let mock = MockUpstream::start().await;
    let app = spawn_app(&[]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    mock.script(KEY_A, [Step::SlowFirstByte(Duration::from_millis(500))]);
    let body = body(false);
    let r = app
        .messages(&body)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    let events = app
        .wait_events("usage", |e| usages(e).len() == 1 && finished(e).len() == 1)
        .await;
    let u = usages(&events)[0];
    assert_eq!(u.output_tokens, expected_usage(&body).output_tokens);
    assert_eq!(u.completeness, Completeness::ClientDisconnectedDrained);
    assert_eq!(finished(&events)[0].outcome, Outcome::ClientDisconnected);
    app.stop().await;
}

/// The relay forwards each upstream event as soon as it has it: the mock writes event
/// k + 1 only after the client has read event k in full through the relay, so a relay
/// that waited for more bytes (a write buffer, coalescing, compression) would never get
/// them and the read would hang.
#[tokio::test]
async fn each_event_reaches_the_client_before_upstream_sends_the_next() {
    let mock = MockUpstream::start().await;
    let gate = mock.gate_events();
    let app = spawn_app(&["--sse-keepalive-ms", "0"]).await;
    app.add_account(&mock, Acc::new("a", KEY_A)).await;
    let body = body(true);
    let transcript = mock.sse_transcript(&body);
    // message_start may be what the relay waits for before answering the head.
    gate.release(1);
    let mut resp = app.messages(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = Vec::new();
    for k in 0..transcript.len() {
        let want = transcript[..=k].concat();
        while received.len() < want.len() {
            // Only a guard against hanging forever: the assertion is the order.
            let chunk = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "event {k} not forwarded while upstream held event {}",
                        k + 1
                    )
                })
                .unwrap()
                .expect("the stream ended early");
            received.extend_from_slice(&chunk);
        }
        assert_eq!(
            String::from_utf8_lossy(&received),
            String::from_utf8_lossy(&want),
            "the client has exactly events 0..={k}"
        );
        assert_eq!(
            gate.passed(),
            k + 1,
            "upstream has not sent event {}",
            k + 1
        );
        gate.release(1);
    }
    assert!(
        resp.chunk().await.unwrap().is_none(),
        "nothing after message_stop"
    );
    app.stop().await;
}
