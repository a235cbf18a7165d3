//! Version 1 payloads. Fields are raw facts (tokens, statuses, timings); anything
//! derived, such as cost, is computed by projections so it can be recomputed.

use crate::ids::AccountId;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a client request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and the whole answer reached the client.
    Completed,
    /// The client went away before the answer was complete.
    ClientDisconnected,
    /// The upstream failed (error status, dropped connection, mid-stream error) and the
    /// failure was passed to the client.
    UpstreamError,
    /// The relay refused the request (auth, validation, limits, no account available).
    Rejected,
    /// A fault inside the relay.
    RelayError,
}

/// Why a particular account served an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutingReason {
    /// The session was already bound to this account and it was still eligible.
    StickySession,
    /// Weighted random pick among the eligible accounts of the best priority tier.
    PriorityWeighted,
    /// Picked after an earlier attempt on another account failed.
    Failover,
}

/// The routing decision of the attempt that produced the final answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoutingDecision {
    /// The account chosen.
    pub account: AccountId,
    /// Why it was chosen.
    pub reason: RoutingReason,
    /// The account's priority (lower is preferred).
    pub priority: i32,
    /// The account's weight inside its priority tier.
    pub weight: u32,
    /// How many accounts were eligible when the pick was made.
    pub eligible: u32,
    /// The group the key is scoped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A client request ended. Exactly one per request the relay accepted for routing or
/// rejected after reading its headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RequestFinished {
    /// The route, e.g. `/v1/messages` (query string excluded).
    pub endpoint: String,
    /// HTTP status sent to the client (200 for a stream that later failed).
    pub status: u16,
    /// How the request ended.
    pub outcome: Outcome,
    /// The requested model, when the body named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Wall time from request received to response finished, in microseconds.
    pub latency_us: u64,
    /// Time from request received to the first response byte sent, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_us: Option<u64>,
    /// Time spent waiting on upstream (connect to last byte), in microseconds; latency
    /// minus this is the relay's own overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_us: Option<u64>,
    /// Upstream attempts made (0 when rejected before routing).
    pub attempts: u32,
    /// The routing decision of the final attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingDecision>,
    /// Anthropic error type returned to the client, if any (`rate_limit_error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// The upstream `request-id`, for support tickets with Anthropic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_request_id: Option<String>,
    /// For a request a tenant limit refused: which limit (`rpm`, `max_concurrency`,
    /// `daily_budget_usd`, …, `allowed_models`, `allowed_ips`). Added in v1 as an
    /// optional field; absent on older events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
}

/// Whether the usage figures are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Completeness {
    /// Final figures: a non-streaming body, or a stream read to `message_stop`.
    Complete,
    /// The client left; the relay kept reading upstream and captured the final usage.
    ClientDisconnectedDrained,
    /// The client left and the relay stopped reading: figures are what was seen.
    ClientDisconnectedPartial,
    /// The upstream failed mid-stream: figures are what was seen before the failure.
    UpstreamErrorPartial,
    /// The attempt was sent upstream and ended without an answer the relay could read:
    /// the relay died before it ended (recorded on restart from the journal), or the
    /// connection broke, or no response head came in time, after the request went out
    /// (status 0). The account and request are known, the tokens are not (all zero), so
    /// that an attempt upstream may have billed is never silently missing. Added in v1;
    /// older consumers do not know it.
    Unknown,
}

/// Server-side tool invocations billed per use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServerToolUse {
    /// `web_search_requests`.
    #[serde(default)]
    pub web_search_requests: u64,
    /// `web_fetch_requests`.
    #[serde(default)]
    pub web_fetch_requests: u64,
}

/// Tokens consumed by one upstream attempt that reached upstream. Several may exist
/// per request (failover); each is billed once, keyed by the envelope id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRecorded {
    /// The upstream account that served the attempt.
    pub account: AccountId,
    /// 1-based attempt number within the request.
    pub attempt: u32,
    /// The model that answered (the response's `model`, else the requested one).
    pub model: String,
    /// HTTP status of the upstream response.
    pub status: u16,
    /// Whether the attempt was a stream.
    pub stream: bool,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens, thinking included.
    pub output_tokens: u64,
    /// Tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
    /// Tokens written to the 5-minute cache (1.25× input price).
    pub cache_creation_5m_input_tokens: u64,
    /// Tokens written to the 1-hour cache (2× input price).
    pub cache_creation_1h_input_tokens: u64,
    /// Billed server-tool invocations.
    #[serde(default)]
    pub server_tool_use: ServerToolUse,
    /// `usage.service_tier` (`standard`, `priority`, `batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// `usage.speed` (`standard`, `fast`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<String>,
    /// `usage.inference_geo` (`global`, `us`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_geo: Option<String>,
    /// Whether the figures are final.
    pub completeness: Completeness,
}

impl UsageRecorded {
    /// Whole prompt size: uncached input plus cache reads and writes. Long-context
    /// price tiers are chosen on this figure.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_5m_input_tokens
            + self.cache_creation_1h_input_tokens
    }
}

/// Health of an upstream account as the relay schedules it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Eligible for scheduling.
    Healthy,
    /// Rate-limited by upstream until `until`.
    RateLimited,
    /// Upstream reported overload (529); short cooldown.
    Overloaded,
    /// Upstream failed (5xx, connection error); short cooldown.
    Degraded,
    /// Upstream rejected the credential (401); needs a new credential or refresh.
    Unauthorized,
    /// Upstream refused the organisation (403 disabled/permission); manual reset only.
    Banned,
}

/// What caused a health transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthReason {
    /// HTTP 429 from upstream.
    RateLimited,
    /// HTTP 529 or an `overloaded_error`.
    Overloaded,
    /// HTTP 5xx other than 529.
    ServerError,
    /// Could not connect, or the connection broke before a response.
    ConnectionError,
    /// HTTP 401.
    Unauthorized,
    /// HTTP 403 naming a disabled organisation or missing permission.
    Forbidden,
    /// The cooldown ran out.
    CooldownExpired,
    /// A successful response arrived.
    Succeeded,
    /// An administrator reset the account.
    ManualReset,
}

/// Upstream signals behind a health transition, kept for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthEvidence {
    /// Upstream HTTP status, if a response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `retry-after`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// Upstream error type from the body (`rate_limit_error`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Upstream error message, truncated; never contains a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Every `anthropic-ratelimit-unified-*` header, name without the prefix → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unified: BTreeMap<String, String>,
}

/// An upstream account moved between health states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountHealthChanged {
    /// The account.
    pub account: AccountId,
    /// State before.
    pub from: HealthState,
    /// State after.
    pub to: HealthState,
    /// Cause.
    pub reason: HealthReason,
    /// End of the cooldown, when the new state has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// What upstream said.
    #[serde(default)]
    pub evidence: HealthEvidence,
}

/// An administrative change. The summary names what changed, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AdminAction {
    /// Who acted: an admin user name, or `cli` for the command line.
    pub actor: String,
    /// Dotted verb, e.g. `key.create`, `account.add`, `account.reset`.
    pub action: String,
    /// The object acted on, e.g. `key:key_01J…`.
    pub target: String,
    /// Human-readable description without secrets.
    pub summary: String,
}

macro_rules! admin_verbs {
    ($($(#[$m:meta])* $v:ident = $s:literal,)*) => {
        /// The typed verb of an [`AdminAction`]. On the wire it is the dotted string
        /// (`AdminAction::action`), so events written before a verb existed, and verbs
        /// added later, still read: [`AdminVerb::parse`] returns `None` for an unknown
        /// one. Verbs are only ever added, never renamed (version 1 of the vocabulary).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AdminVerb {
            $($(#[$m])* $v,)*
        }

        impl AdminVerb {
            /// Every verb, in declaration order.
            pub const ALL: &'static [AdminVerb] = &[$(AdminVerb::$v,)*];

            /// The dotted wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AdminVerb::$v => $s,)*
                }
            }

            /// Reads a dotted verb; `None` for one this version does not know.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some(AdminVerb::$v),)*
                    _ => None,
                }
            }
        }
    };
}

admin_verbs! {
    /// A tenant key was issued.
    KeyCreate = "key.create",
    /// A key's name, group, expiry or limits changed.
    KeyUpdate = "key.update",
    /// A key was enabled.
    KeyEnable = "key.enable",
    /// A key was disabled.
    KeyDisable = "key.disable",
    /// A key was revoked for good.
    KeyRevoke = "key.revoke",
    /// An upstream account was added.
    AccountAdd = "account.add",
    /// An account's settings or credential changed.
    AccountUpdate = "account.update",
    /// An account was enabled.
    AccountEnable = "account.enable",
    /// An account was disabled.
    AccountDisable = "account.disable",
    /// An account was removed.
    AccountRemove = "account.remove",
    /// An account's health was reset by an operator.
    AccountReset = "account.reset",
    /// An account was tested with a real request.
    AccountTest = "account.test",
    /// An OAuth account's access token was refreshed.
    AccountTokenRefreshed = "account.token_refreshed",
    /// Refreshing an OAuth account's access token failed.
    AccountTokenRefreshFailed = "account.token_refresh_failed",
    /// An account group was created.
    GroupCreate = "group.create",
    /// An account group was renamed or its remark changed.
    GroupUpdate = "group.update",
    /// An account group was deleted.
    GroupDelete = "group.delete",
    /// A user was created (by an admin, the CLI, first start or registration).
    UserCreate = "user.create",
    /// A user's role, tenant, email or enabled flag changed.
    UserUpdate = "user.update",
    /// A user's password was set or reset.
    UserPassword = "user.password",
    /// A user was deleted.
    UserDelete = "user.delete",
    /// Failed admin logins in one window, aggregated per source.
    LoginFailures = "auth.login_failures",
    /// Admin API requests refused for a missing, invalid or expired token in one
    /// window, aggregated per client address.
    AdminAuthFailures = "auth.admin_failures",
    /// A tenant's settings changed.
    TenantUpdate = "tenant.update",
    /// A key's or a tenant's budget passed 50, 80 or 100 % in its window (one event
    /// per threshold per window, with a deterministic id).
    BudgetThreshold = "budget.threshold_crossed",
    /// A notification target was created.
    NotificationTargetCreate = "notification_target.create",
    /// A notification target's settings, URL or secret changed.
    NotificationTargetUpdate = "notification_target.update",
    /// A notification target was deleted.
    NotificationTargetDelete = "notification_target.delete",
    /// A test message was sent to a notification target.
    NotificationTargetTest = "notification_target.test",
    /// A relay process's publisher spool passed its alert threshold: the event log
    /// has been unreachable for a while (one event per episode, deterministic id).
    OpsSpoolGrowing = "ops.spool_growing",
    /// Events the log refused for good were set aside in a relay process's
    /// quarantine (one event per episode, deterministic id).
    OpsQuarantineGrew = "ops.quarantine_grew",
    /// The projectors fell behind the log beyond the alert threshold, or stopped
    /// moving while behind (one event per episode, deterministic id).
    OpsProjectorLagging = "ops.projector_lagging",
    /// A spool backlog drained or the projectors caught up again, ending an episode
    /// announced by one of the `ops.*` verbs above.
    OpsRecovered = "ops.recovered",
}

impl AdminAction {
    /// An action with a typed verb.
    pub fn new(
        actor: impl Into<String>,
        verb: AdminVerb,
        target: impl Into<String>,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: verb.as_str().to_owned(),
            target: target.into(),
            summary: summary.into(),
        }
    }

    /// The typed verb, when this version knows it.
    pub fn verb(&self) -> Option<AdminVerb> {
        AdminVerb::parse(&self.action)
    }
}

/// Why a client credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailureReason {
    /// No credential header.
    Missing,
    /// The key is not known.
    Unknown,
    /// The key is disabled.
    Disabled,
    /// The key has expired.
    Expired,
}

/// A client presented a bad credential; recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuthFailed {
    /// Why it was refused.
    pub reason: AuthFailureReason,
    /// The route requested.
    pub endpoint: String,
    /// The first characters of the presented key (at most 12), to help an operator
    /// recognise it; never the whole key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Client address as seen by the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// Failures are recorded aggregated: this event stands for the failures from
    /// `client_addr` for this `reason` in the current minute so far (1, 10, 100, …).
    /// Absent on older events, which stand for one failure each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_in_window: Option<u64>,
}
