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
