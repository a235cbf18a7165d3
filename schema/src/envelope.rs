//! The envelope every event travels in, the closed set of event types, and the NATS
//! subject layout derived from them.

use crate::events::{
    AccountHealthChanged, AdminAction, AuthFailed, RequestFinished, UsageRecorded,
};
use crate::ids::{AccountId, ApiKeyId, TenantId};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every subject starts with this prefix; the JetStream stream binds `relay.events.>`.
pub const SUBJECT_PREFIX: &str = "relay.events";

/// The subject token used when an event concerns no upstream account.
pub const NO_ACCOUNT_TOKEN: &str = "_";

/// One fact, as stored in the log and published to JetStream.
///
/// The envelope carries the routing and correlation metadata; `type`, `version` and
/// `data` carry the fact itself. The JSON is flat:
/// `{"id":…,"type":"usage.recorded","version":1,"occurred_at":…,…,"data":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// UUIDv7 chosen by the producer. It is the idempotency key end to end: the log
    /// deduplicates appends on it and money-carrying projections keep it unique.
    pub id: Uuid,
    /// Version of the payload schema for this event type; bumped on breaking changes
    /// so old events stay readable by type + version.
    pub version: u16,
    /// When the fact happened, as seen by the producer (UTC).
    pub occurred_at: DateTime<Utc>,
    /// The relay's id for the client request this fact belongs to, joining logs,
    /// events and the request log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The tenant billed for the request, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The relay API key the client used, by public id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyId>,
    /// The upstream account involved, when there is one; it also picks the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountId>,
    /// The fact itself.
    #[serde(flatten)]
    pub event: Event,
}

/// The closed set of event types. Consumers match it exhaustively so that a new type
/// forces every projection to decide what to do with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// A client request ended, successfully or not.
    #[serde(rename = "request.finished")]
    RequestFinished(RequestFinished),
    /// Tokens consumed by one upstream attempt.
    #[serde(rename = "usage.recorded")]
    UsageRecorded(UsageRecorded),
    /// An upstream account moved between health states.
    #[serde(rename = "account.health_changed")]
    AccountHealthChanged(AccountHealthChanged),
    /// An administrator (or the CLI) changed configuration.
    #[serde(rename = "admin.action")]
    AdminAction(AdminAction),
    /// A client presented a missing, unknown, disabled or expired key.
    #[serde(rename = "auth.failed")]
    AuthFailed(AuthFailed),
}

/// Coarse grouping of event types; the second token of the subject and the filter
/// unit for subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// `request.finished`.
    Request,
    /// `usage.recorded`.
    Usage,
    /// `account.health_changed`.
    Account,
    /// `admin.action` and `auth.failed`.
    Admin,
}

impl Category {
    /// Every category, in subject order.
    pub const ALL: [Category; 4] = [
        Category::Request,
        Category::Usage,
        Category::Account,
        Category::Admin,
    ];

    /// The subject token for this category.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Request => "request",
            Category::Usage => "usage",
            Category::Account => "account",
            Category::Admin => "admin",
        }
    }

    /// Parses a subject token or CLI argument.
    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The subject filter that matches every event of this category.
    pub fn subject_filter(self) -> String {
        format!("{SUBJECT_PREFIX}.{}.>", self.as_str())
    }
}

impl Event {
    /// The wire name of the event type, e.g. `usage.recorded`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::RequestFinished(_) => "request.finished",
            Event::UsageRecorded(_) => "usage.recorded",
            Event::AccountHealthChanged(_) => "account.health_changed",
            Event::AdminAction(_) => "admin.action",
            Event::AuthFailed(_) => "auth.failed",
        }
    }

    /// The category (subject token) of the event type.
    pub fn category(&self) -> Category {
        match self {
            Event::RequestFinished(_) => Category::Request,
            Event::UsageRecorded(_) => Category::Usage,
            Event::AccountHealthChanged(_) => Category::Account,
            Event::AdminAction(_) | Event::AuthFailed(_) => Category::Admin,
        }
    }

    /// The current payload version for the event type.
    pub fn current_version(&self) -> u16 {
        1
    }
}

impl Envelope {
    /// Wraps an event. Ids and time come from the caller: this crate reads no clock.
    pub fn new(id: Uuid, occurred_at: DateTime<Utc>, event: Event) -> Self {
        let version = event.current_version();
        let account = match &event {
            Event::UsageRecorded(u) => Some(u.account.clone()),
            Event::AccountHealthChanged(h) => Some(h.account.clone()),
            _ => None,
        };
        Self {
            id,
            version,
            occurred_at,
            request_id: None,
            tenant: None,
            api_key: None,
            account,
            event,
        }
    }

    /// Sets the request id.
    pub fn with_request(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Sets the tenant and API key.
    pub fn with_key(mut self, tenant: Option<TenantId>, api_key: Option<ApiKeyId>) -> Self {
        self.tenant = tenant;
        self.api_key = api_key;
        self
    }

    /// Sets the upstream account.
    pub fn with_account(mut self, account: Option<AccountId>) -> Self {
        self.account = account;
        self
    }

    /// The category of the wrapped event.
    pub fn category(&self) -> Category {
        self.event.category()
    }

    /// The NATS subject: `relay.events.<category>.<account id or "_">`.
    pub fn subject(&self) -> String {
        let account = self
            .account
            .as_ref()
            .map(AccountId::as_str)
            .unwrap_or(NO_ACCOUNT_TOKEN);
        format!("{SUBJECT_PREFIX}.{}.{account}", self.category().as_str())
    }

    /// Serialises to the canonical JSON bytes stored in every log.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses the canonical JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
