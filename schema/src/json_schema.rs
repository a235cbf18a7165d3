//! JSON Schemas generated from the Rust types. The files under `schema/json/` are
//! checked in so that consumers in other languages can validate events without this
//! crate; a test fails when the types and the files drift apart.

use crate::envelope::Envelope;
use crate::events::{
    AccountHealthChanged, AdminAction, AuthFailed, RequestFinished, UsageRecorded,
};
use schemars::schema_for;

/// `(file name, pretty JSON)` for the envelope and every v1 payload.
pub fn all() -> Vec<(&'static str, String)> {
    let schemas = [
        ("envelope.json", schema_for!(Envelope)),
        ("request.finished.v1.json", schema_for!(RequestFinished)),
        ("usage.recorded.v1.json", schema_for!(UsageRecorded)),
        (
            "account.health_changed.v1.json",
            schema_for!(AccountHealthChanged),
        ),
        ("admin.action.v1.json", schema_for!(AdminAction)),
        ("auth.failed.v1.json", schema_for!(AuthFailed)),
    ];
    schemas
        .into_iter()
        .map(|(name, schema)| {
            // Serialising a schemars schema cannot fail: it is plain maps and strings.
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            (name, text + "\n")
        })
        .collect()
}
