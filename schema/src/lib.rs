//! The versioned event contract shared by the relay, the event log and every consumer.
//!
//! This crate is pure data: serde types, their JSON Schemas and a few parsing rules.
//! It does no IO, reads no clock and draws no random numbers; producers pass ids and
//! timestamps in. Everything that crosses the event log is an [`Envelope`].
//!
//! Layout:
//! - [`envelope`]: the envelope, the [`Event`] enum, categories and NATS subjects;
//! - [`ids`]: identifiers that appear in subjects and therefore must be subject-safe;
//! - [`events`]: the v1 payloads (request finished, usage recorded, account health
//!   changed, admin action, auth failed);
//! - [`json_schema`]: JSON Schema generation for the checked-in files under `schema/json/`.

pub mod envelope;
pub mod events;
pub mod ids;
pub mod json_schema;

pub use envelope::{Category, Envelope, Event, SUBJECT_PREFIX};
pub use events::*;
pub use ids::{AccountId, ApiKeyId, IdError, TenantId};
