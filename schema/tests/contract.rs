//! The event contract: JSON Schemas on disk match the types, and envelopes round-trip.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use chrono::{TimeZone, Utc};
use schema::*;
use std::path::PathBuf;
use uuid::Uuid;

fn json_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json")
}

/// Regenerate with `UPDATE_SCHEMAS=1 cargo test -p schema`.
#[test]
fn checked_in_json_schemas_match_the_types() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for (name, text) in schema::json_schema::all() {
        let path = json_dir().join(name);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != text {
            drifted.push(name);
        }
    }
    assert!(
        drifted.is_empty(),
        "JSON Schemas out of date: {drifted:?}; run UPDATE_SCHEMAS=1 cargo test -p schema"
    );
}

fn usage() -> UsageRecorded {
    UsageRecorded {
        account: AccountId::parse("acc1").unwrap(),
        attempt: 1,
        model: "claude-sonnet-4-5".into(),
        status: 200,
        stream: true,
        input_tokens: 10,
        output_tokens: 20,
        cache_read_input_tokens: 30,
        cache_creation_5m_input_tokens: 40,
        cache_creation_1h_input_tokens: 50,
        server_tool_use: ServerToolUse::default(),
        service_tier: Some("standard".into()),
        speed: None,
        inference_geo: None,
        completeness: Completeness::Complete,
    }
}

#[test]
fn envelope_is_flat_json_and_round_trips() {
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    let env = Envelope::new(Uuid::now_v7(), at, Event::UsageRecorded(usage()))
        .with_request("req_1")
        .with_key(
            Some(TenantId::parse("t1").unwrap()),
            Some(ApiKeyId::parse("k1").unwrap()),
        );
    let json: serde_json::Value = serde_json::from_slice(&env.to_json().unwrap()).unwrap();
    assert_eq!(json["type"], "usage.recorded");
    assert_eq!(json["version"], 1);
    assert_eq!(json["account"], "acc1");
    assert_eq!(json["data"]["cache_creation_1h_input_tokens"], 50);
    let back = Envelope::from_json(&env.to_json().unwrap()).unwrap();
    assert_eq!(back, env);
    assert_eq!(env.subject(), "relay.events.usage.acc1");
    assert_eq!(env.category(), Category::Usage);
}

#[test]
fn events_without_account_use_the_placeholder_token() {
    let env = Envelope::new(
        Uuid::now_v7(),
        Utc::now(),
        Event::AdminAction(AdminAction {
            actor: "cli".into(),
            action: "key.create".into(),
            target: "key:k1".into(),
            summary: "created key k1".into(),
        }),
    );
    assert_eq!(env.subject(), "relay.events.admin._");
}

#[test]
fn unknown_event_type_is_an_error_not_a_panic() {
    let bad = br#"{"id":"0190a0a0-0000-7000-8000-000000000000","version":1,"occurred_at":"2026-01-01T00:00:00Z","type":"nope","data":{}}"#;
    assert!(Envelope::from_json(bad).is_err());
}

/// One envelope of every event type, with every optional field set.
fn one_of_each() -> Vec<Envelope> {
    let at = Utc.with_ymd_and_hms(2026, 12, 2, 1, 2, 3).unwrap();
    let acc = AccountId::parse("acc1").unwrap();
    let events = vec![
        Event::RequestFinished(RequestFinished {
            endpoint: "/v1/messages".into(),
            status: 200,
            outcome: Outcome::Completed,
            model: Some("claude-sonnet-4-5".into()),
            stream: true,
            latency_us: 1234,
            ttfb_us: Some(200),
            upstream_us: Some(1000),
            attempts: 2,
            routing: Some(RoutingDecision {
                account: acc.clone(),
                reason: RoutingReason::Failover,
                priority: -1,
                weight: 3,
                eligible: 4,
                group: Some("g\"1".into()),
            }),
            error_type: Some("overloaded_error".into()),
            upstream_request_id: Some("req_up".into()),
            rejected_by: Some("rpm".into()),
        }),
        Event::UsageRecorded(usage()),
        Event::AccountHealthChanged(AccountHealthChanged {
            account: acc.clone(),
            from: HealthState::Healthy,
            to: HealthState::RateLimited,
            reason: HealthReason::RateLimited,
            until: Some(at),
            evidence: HealthEvidence {
                status: Some(429),
                retry_after_s: Some(30),
                error_type: Some("rate_limit_error".into()),
                message: Some("slow down \u{e9}\n".into()),
                unified: [("5h-status".to_string(), "rejected".to_string())].into(),
            },
        }),
        Event::AdminAction(AdminAction {
            actor: "cli".into(),
            action: "key.create".into(),
            target: "key:k1".into(),
            summary: "created key k1".into(),
        }),
        Event::AuthFailed(AuthFailed {
            reason: AuthFailureReason::Unknown,
            endpoint: "/v1/messages".into(),
            key_prefix: Some("cr_abc".into()),
            client_addr: Some("127.0.0.1".into()),
            failures_in_window: Some(10),
        }),
    ];
    events
        .into_iter()
        .map(|e| {
            Envelope::new(Uuid::now_v7(), at, e)
                .with_request("req_\\1")
                .with_key(
                    Some(TenantId::parse("t1").unwrap()),
                    Some(ApiKeyId::parse("k1").unwrap()),
                )
        })
        .collect()
}

/// `Envelope::from_json` decodes without serde's buffered flatten path; it must accept
/// and refuse exactly what the derived `Deserialize` does, and decode to the same value.
#[test]
fn from_json_agrees_with_the_derived_deserializer() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for env in one_of_each() {
        let canonical = env.to_json().unwrap();
        assert_eq!(Envelope::from_json(&canonical).unwrap(), env);
        let value: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
        let obj = value.as_object().unwrap().clone();
        // Each variant twice: `type` before `data` (the canonical order, which the
        // decoder reads in one pass) and `data` before `type` (which it buffers).
        let mut variant = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut o = obj.clone();
            f(&mut o);
            for type_first in [true, false] {
                let mut fields: Vec<_> = o.iter().collect();
                fields.sort_by_key(|(k, _)| (k.as_str() == "type") != type_first);
                let text = fields
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
                    .collect::<Vec<_>>()
                    .join(",");
                inputs.push(format!("{{{text}}}").into_bytes());
            }
        };
        variant(&|o| {
            o.insert("extra".into(), serde_json::json!({"nested": [1, 2]}));
        });
        variant(&|o| {
            o.insert("request_id".into(), serde_json::Value::Null);
            o.insert("tenant".into(), serde_json::Value::Null);
        });
        for field in [
            "id",
            "version",
            "occurred_at",
            "request_id",
            "tenant",
            "api_key",
            "account",
            "type",
            "data",
        ] {
            variant(&|o| {
                o.remove(field);
            });
            variant(&|o| {
                o.insert(field.into(), serde_json::json!(12));
            });
            variant(&|o| {
                o.insert(field.into(), serde_json::json!("x"));
            });
        }
        variant(&|o| {
            o.insert("type".into(), serde_json::json!("nope"));
        });
        variant(&|o| {
            o.insert("version".into(), serde_json::json!(70000));
        });
        variant(&|o| {
            o.insert("data".into(), serde_json::json!({}));
        });
        variant(&|o| {
            o.insert("data".into(), serde_json::json!([]));
        });
        variant(&|o| {
            o.insert("tenant".into(), serde_json::json!(""));
        });
        // Inside `data`: an unknown field, and a known one of the wrong type.
        for (key, value) in [
            ("zzz", serde_json::json!(1)),
            ("endpoint", serde_json::json!(5)),
        ] {
            variant(&|o| {
                if let Some(data) = o.get_mut("data").and_then(|d| d.as_object_mut()) {
                    data.insert(key.into(), value.clone());
                }
            });
        }
        inputs.push(canonical.clone());
        // The type spelled with an escape.
        let escaped = String::from_utf8(canonical.clone()).unwrap().replacen(
            &format!("\"{}\"", env.event.type_name()),
            &format!("\"{}\"", env.event.type_name().replace('.', "\\u002e")),
            1,
        );
        inputs.push(escaped.into_bytes());
        // Truncated and trailing garbage.
        inputs.push(canonical[..canonical.len() - 1].to_vec());
        let mut trailing = canonical.clone();
        trailing.extend_from_slice(b" x");
        inputs.push(trailing);
    }
    inputs.push(b"[]".to_vec());
    inputs.push(b"null".to_vec());
    inputs.push(b"{}".to_vec());
    let mut accepted = 0;
    for input in &inputs {
        let derived = serde_json::from_slice::<Envelope>(input).ok();
        let fast = Envelope::from_json(input).ok();
        assert_eq!(
            fast,
            derived,
            "disagree on {}",
            String::from_utf8_lossy(input)
        );
        accepted += usize::from(fast.is_some());
    }
    // Both accept and refuse something: the comparison is not vacuous.
    assert!(accepted >= 5 * 4, "{accepted} of {} accepted", inputs.len());
    assert!(inputs.len() - accepted >= 5 * 20);
}
