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
    ///
    /// Accepts exactly what the derived `Deserialize` accepts (fields in any order,
    /// unknown fields ignored) and decodes to the same value, in one pass: `data` is
    /// read straight into the type that `type` names. The derived impl, because of
    /// `#[serde(flatten)]`, first copies the whole envelope into an owned tree of
    /// serde's buffered values and then reads that tree again, an allocation per string
    /// and number. Every consumer of the log (projectors, replay, journal recovery, the
    /// spool) decodes each event here.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let envelope = serde::Deserializer::deserialize_map(&mut de, wire::EnvelopeVisitor)?;
        de.end()?;
        Ok(envelope)
    }
}

/// The single-pass decoder behind [`Envelope::from_json`].
mod wire {
    use super::{Envelope, Event};
    use crate::ids::{AccountId, ApiKeyId, TenantId};
    use chrono::{DateTime, Utc};
    use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, Visitor};
    use serde::Deserialize;
    use std::fmt;
    use uuid::Uuid;

    /// The envelope's keys; anything else is ignored, as the derived impl does.
    enum Field {
        Id,
        Version,
        OccurredAt,
        RequestId,
        Tenant,
        ApiKeyId,
        Account,
        Type,
        Data,
        Other,
    }

    impl<'de> Deserialize<'de> for Field {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Field;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an envelope field name")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                    Ok(match v {
                        "id" => Field::Id,
                        "version" => Field::Version,
                        "occurred_at" => Field::OccurredAt,
                        "request_id" => Field::RequestId,
                        "tenant" => Field::Tenant,
                        "api_key" => Field::ApiKeyId,
                        "account" => Field::Account,
                        "type" => Field::Type,
                        "data" => Field::Data,
                        _ => Field::Other,
                    })
                }
            }
            d.deserialize_identifier(KeyVisitor)
        }
    }

    /// The event types, by their wire names.
    #[derive(Clone, Copy)]
    enum Kind {
        RequestFinished,
        UsageRecorded,
        AccountHealthChanged,
        AdminAction,
        AuthFailed,
    }

    const KINDS: &[&str] = &[
        "request.finished",
        "usage.recorded",
        "account.health_changed",
        "admin.action",
        "auth.failed",
    ];

    impl<'de> Deserialize<'de> for Kind {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KindVisitor;
            impl Visitor<'_> for KindVisitor {
                type Value = Kind;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an event type")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
                    Ok(match v {
                        "request.finished" => Kind::RequestFinished,
                        "usage.recorded" => Kind::UsageRecorded,
                        "account.health_changed" => Kind::AccountHealthChanged,
                        "admin.action" => Kind::AdminAction,
                        "auth.failed" => Kind::AuthFailed,
                        other => return Err(E::unknown_variant(other, KINDS)),
                    })
                }
            }
            d.deserialize_identifier(KindVisitor)
        }
    }

    impl Kind {
        /// Reads the payload of this type from the map's next value.
        fn read<'de, A: MapAccess<'de>>(self, map: &mut A) -> Result<Event, A::Error> {
            Ok(match self {
                Kind::RequestFinished => Event::RequestFinished(map.next_value()?),
                Kind::UsageRecorded => Event::UsageRecorded(map.next_value()?),
                Kind::AccountHealthChanged => Event::AccountHealthChanged(map.next_value()?),
                Kind::AdminAction => Event::AdminAction(map.next_value()?),
                Kind::AuthFailed => Event::AuthFailed(map.next_value()?),
            })
        }

        /// Reads the payload of this type from `data` that came before `type`.
        fn convert<E: de::Error>(self, data: serde_json::Value) -> Result<Event, E> {
            fn to<T: DeserializeOwned, E: de::Error>(v: serde_json::Value) -> Result<T, E> {
                T::deserialize(v).map_err(E::custom)
            }
            Ok(match self {
                Kind::RequestFinished => Event::RequestFinished(to(data)?),
                Kind::UsageRecorded => Event::UsageRecorded(to(data)?),
                Kind::AccountHealthChanged => Event::AccountHealthChanged(to(data)?),
                Kind::AdminAction => Event::AdminAction(to(data)?),
                Kind::AuthFailed => Event::AuthFailed(to(data)?),
            })
        }
    }

    pub(super) struct EnvelopeVisitor;

    /// Stores a field's value, refusing a second copy as the derived impl does.
    fn once<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
        slot: &mut Option<T>,
        map: &mut A,
        name: &'static str,
    ) -> Result<(), A::Error> {
        if slot.is_some() {
            return Err(de::Error::duplicate_field(name));
        }
        *slot = Some(map.next_value()?);
        Ok(())
    }

    impl<'de> Visitor<'de> for EnvelopeVisitor {
        type Value = Envelope;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an event envelope")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
            let mut id: Option<Uuid> = None;
            let mut version: Option<u16> = None;
            let mut occurred_at: Option<DateTime<Utc>> = None;
            let mut request_id: Option<Option<String>> = None;
            let mut tenant: Option<Option<TenantId>> = None;
            let mut api_key: Option<Option<ApiKeyId>> = None;
            let mut account: Option<Option<AccountId>> = None;
            let mut kind: Option<Kind> = None;
            let mut event: Option<Event> = None;
            let mut early_data: Option<serde_json::Value> = None;
            while let Some(key) = map.next_key::<Field>()? {
                match key {
                    Field::Id => once(&mut id, &mut map, "id")?,
                    Field::Version => once(&mut version, &mut map, "version")?,
                    Field::OccurredAt => once(&mut occurred_at, &mut map, "occurred_at")?,
                    Field::RequestId => once(&mut request_id, &mut map, "request_id")?,
                    Field::Tenant => once(&mut tenant, &mut map, "tenant")?,
                    Field::ApiKeyId => once(&mut api_key, &mut map, "api_key")?,
                    Field::Account => once(&mut account, &mut map, "account")?,
                    Field::Type => once(&mut kind, &mut map, "type")?,
                    Field::Data => {
                        if event.is_some() || early_data.is_some() {
                            return Err(de::Error::duplicate_field("data"));
                        }
                        match kind {
                            // The canonical order: `type` first, so the payload is
                            // read directly into its type.
                            Some(kind) => event = Some(kind.read(&mut map)?),
                            None => early_data = Some(map.next_value()?),
                        }
                    }
                    Field::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
            let event = match (event, early_data) {
                (Some(event), _) => event,
                (None, Some(data)) => kind.convert(data)?,
                (None, None) => return Err(de::Error::missing_field("data")),
            };
            Ok(Envelope {
                id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                version: version.ok_or_else(|| de::Error::missing_field("version"))?,
                occurred_at: occurred_at.ok_or_else(|| de::Error::missing_field("occurred_at"))?,
                request_id: request_id.flatten(),
                tenant: tenant.flatten(),
                api_key: api_key.flatten(),
                account: account.flatten(),
                event,
            })
        }
    }
}
