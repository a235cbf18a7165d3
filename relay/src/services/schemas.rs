//! OpenAPI schemas of what the read side returns but cannot derive `ToSchema` on: the
//! rows of the `projections` crate, which knows nothing of HTTP. Each mirrors the
//! serialised shape of its original field by field (exact decimals are strings); the
//! admin API tests check real responses against these schemas, so a field added there
//! and not here fails them.

use chrono::{DateTime, Utc};
use utoipa::ToSchema;

/// Time bucket of a usage row.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Period {
    /// One row per hour (`YYYY-MM-DDTHH:00`, local time in the display offset).
    Hour,
    /// One row per day (`YYYY-MM-DD`).
    Day,
    /// One row per month (`YYYY-MM`).
    Month,
    /// One row per year (`YYYY`).
    Year,
    /// One row for the whole range (`total`).
    Total,
}

/// One row of the usage totals. Dimensions not grouped by are `None`; so are absent
/// values (e.g. usage without a tenant).
#[derive(ToSchema)]
pub struct UsageRow {
    /// `YYYY-MM-DDTHH:00`, `YYYY-MM-DD`, `YYYY-MM`, `YYYY` or `total`.
    pub period: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// API key.
    pub api_key: Option<String>,
    /// Upstream account.
    pub account: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Usage events (upstream attempts that reported usage).
    pub requests: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m_tokens: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h_tokens: u64,
    /// Cost in USD, exact.
    #[schema(format = "decimal", example = "0.0123")]
    pub cost: String,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// Usage events priced by the unknown-model fallback (non-zero means the cost
    /// rests on a guess).
    pub fallback_requests: u64,
}

/// How many requests one limit refused.
#[derive(ToSchema)]
pub struct RejectionCount {
    /// The limit (`rpm`, `max_concurrency`, `daily_budget_usd`, …).
    pub rejected_by: String,
    /// Requests it refused in the range.
    pub requests: u64,
}

/// One request, metadata only, with its usage summed from the ledger.
#[derive(ToSchema)]
pub struct RequestLogEntry {
    /// The `request.finished` event id.
    pub event_id: String,
    /// Its log position.
    pub position: u64,
    /// When the request finished.
    pub occurred_at: Option<DateTime<Utc>>,
    /// The relay's request id.
    pub request_id: String,
    /// Tenant.
    pub tenant: String,
    /// API key id.
    pub api_key: String,
    /// Account of the final attempt.
    pub account: String,
    /// Requested model.
    pub model: String,
    /// Route.
    pub endpoint: String,
    /// Status sent to the client.
    pub status: u16,
    /// Outcome.
    pub outcome: String,
    /// Streamed.
    pub stream: bool,
    /// Total latency, µs.
    pub latency_us: u64,
    /// Time to first byte, µs.
    pub ttfb_us: Option<u64>,
    /// Time spent upstream, µs.
    pub upstream_us: Option<u64>,
    /// Upstream attempts.
    pub attempts: u32,
    /// Routing reason of the final attempt.
    pub routing_reason: String,
    /// Error type returned, if any.
    pub error_type: String,
    /// Upstream request id.
    pub upstream_request_id: String,
    /// The tenant limit that refused the request (`rpm`, `max_concurrency`,
    /// `daily_budget_usd`, …); empty when none did.
    pub rejected_by: String,
    /// Usage events recorded for this request id (all attempts).
    pub usage_events: u64,
    /// Uncached input tokens, all attempts.
    pub input_tokens: u64,
    /// Output tokens, all attempts.
    pub output_tokens: u64,
    /// Cache-read tokens, all attempts.
    pub cache_read_tokens: u64,
    /// Cache-write tokens (5m + 1h), all attempts.
    pub cache_write_tokens: u64,
    /// Cost of all attempts, USD.
    #[schema(format = "decimal", example = "0.0123")]
    pub cost: String,
}

/// One audit entry.
#[derive(ToSchema)]
pub struct AuditEntry {
    /// Event id.
    pub event_id: String,
    /// Log position.
    pub position: u64,
    /// When.
    pub occurred_at: Option<DateTime<Utc>>,
    /// `admin.action` or `auth.failed`.
    pub kind: String,
    /// Request id, if any.
    pub request_id: String,
    /// Tenant, if any.
    pub tenant: String,
    /// API key, if any.
    pub api_key: String,
    /// Admin actions: who.
    pub actor: String,
    /// Admin actions: dotted verb.
    pub action: String,
    /// Admin actions: object.
    pub target: String,
    /// Admin actions: description.
    pub summary: String,
    /// Auth failures: why.
    pub reason: String,
    /// Auth failures: route.
    pub endpoint: String,
    /// Auth failures: first characters of the presented key.
    pub key_prefix: String,
    /// Auth failures: client address.
    pub client_addr: String,
}

/// A tenant's monthly statement (UTC month).
#[derive(ToSchema)]
pub struct Statement {
    /// The tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Currency of every amount.
    pub currency: String,
    /// Token lines ordered by model, price version, price key, unit prices.
    pub lines: Vec<StatementLine>,
    /// Server-tool lines ordered by tool, price version, unit price.
    pub server_tool_lines: Vec<ServerToolLine>,
    /// Upstream attempts whose usage is unknown (the relay died while they ran), by
    /// model: no tokens, no cost, listed so nothing upstream may have billed is
    /// silently missing.
    pub unknown_usage_lines: Vec<UnknownUsageLine>,
    /// Sums over the lines.
    pub totals: StatementTotals,
}

/// One line of a statement: attempts of unknown usage for a model.
#[derive(ToSchema)]
pub struct UnknownUsageLine {
    /// Model requested.
    pub model: String,
    /// Attempts.
    pub attempts: u64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// One line of a statement: a server tool billed per use, at one price.
#[derive(ToSchema)]
pub struct ServerToolLine {
    /// The tool (`web_search`).
    pub tool: String,
    /// Price-table version.
    pub price_version: String,
    /// USD per use.
    #[schema(format = "decimal", example = "0.01")]
    pub unit_price: String,
    /// Usage events with uses.
    pub requests: u64,
    /// Uses.
    pub uses: u64,
    /// Cost, USD.
    #[schema(format = "decimal", example = "0.03")]
    pub cost: String,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// One line of a statement: a model's tokens at one set of unit prices.
#[derive(ToSchema)]
pub struct StatementLine {
    /// Model as reported.
    pub model: String,
    /// Price-table version.
    pub price_version: String,
    /// Price entry used (`>N` marks a long-context tier).
    pub price_key: String,
    /// Priced by the unknown-model fallback.
    pub priced_by_fallback: bool,
    /// Unit prices, USD per million tokens, multipliers applied.
    pub unit_prices: UnitPrices,
    /// Usage events.
    pub requests: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m_tokens: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h_tokens: u64,
    /// Cost of the tokens, USD (the sum of the events' costs less their server-tool
    /// charges, which have their own lines).
    #[schema(format = "decimal", example = "0.0123")]
    pub cost: String,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// Totals of a statement.
#[derive(ToSchema)]
pub struct StatementTotals {
    /// Usage events.
    pub requests: u64,
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_tokens: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m_tokens: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h_tokens: u64,
    /// Web searches.
    pub web_search_requests: u64,
    /// Web fetches (billed by their tokens only).
    pub web_fetch_requests: u64,
    /// Cost of the server-tool lines, USD.
    #[schema(format = "decimal", example = "0.03")]
    pub server_tool_cost: String,
    /// Cost, USD: every line, server tools included.
    #[schema(format = "decimal", example = "0.0123")]
    pub cost: String,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// Usage events priced by the unknown-model fallback.
    pub fallback_priced_events: u64,
    /// Attempts whose usage is unknown (not in `requests`; see the unknown lines).
    pub unknown_usage_attempts: u64,
}

/// Unit prices of one event in USD per million tokens, multipliers applied.
#[derive(ToSchema)]
pub struct UnitPrices {
    /// Uncached input.
    #[schema(format = "decimal")]
    pub input: String,
    /// Output.
    #[schema(format = "decimal")]
    pub output: String,
    /// Cache reads.
    #[schema(format = "decimal")]
    pub cache_read: String,
    /// 5-minute cache writes.
    #[schema(format = "decimal")]
    pub cache_write_5m: String,
    /// 1-hour cache writes.
    #[schema(format = "decimal")]
    pub cache_write_1h: String,
}
