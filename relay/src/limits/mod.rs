//! Tenant limits that hold: allowed models and client addresses, requests per minute,
//! concurrent requests, and budgets per day, week, month and in total on a key, plus
//! a monthly budget on a tenant that every key of the tenant draws on.
//!
//! - [`window`]: calendar windows in a time zone (DST included);
//! - [`rules`]: model patterns and address ranges;
//! - [`engine`]: the [`engine::Limiter`] on the proxy path. Budgets reserve the worst
//!   case before the first upstream byte and settle to the actual cost; every limit is
//!   shared between relays through leases in the database, so no request waits on the
//!   database in the common case and no relay can spend what another holds.
//!
//! This module (but `engine`) does no IO.

pub mod engine;
pub mod rules;
pub mod window;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Limits on a key, as stored (JSON in `api_keys.limits_json`) and as the admin API
/// shows them. Absent fields are not limited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Model patterns (`claude-sonnet-*`); empty = every model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
    /// Requests per minute (a token bucket of this size refilled over a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// USD per calendar day.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    #[schema(value_type = Option<String>)]
    pub daily_budget_usd: Option<Decimal>,
    /// USD per calendar week.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    #[schema(value_type = Option<String>)]
    pub weekly_budget_usd: Option<Decimal>,
    /// USD per calendar month.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    #[schema(value_type = Option<String>)]
    pub monthly_budget_usd: Option<Decimal>,
    /// USD over the key's life.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    #[schema(value_type = Option<String>)]
    pub total_budget_usd: Option<Decimal>,
    /// Client address ranges (CIDR or single addresses); empty = anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
}

impl KeyLimits {
    /// Whether any limit is set (keys without limits skip the limiter entirely).
    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }

    /// The budgets that are set, by period.
    pub fn budgets(&self) -> Vec<(window::Period, Decimal)> {
        use window::Period as P;
        [
            (P::Daily, self.daily_budget_usd),
            (P::Weekly, self.weekly_budget_usd),
            (P::Monthly, self.monthly_budget_usd),
            (P::Total, self.total_budget_usd),
        ]
        .into_iter()
        .filter_map(|(p, b)| b.map(|b| (p, b)))
        .collect()
    }

    /// Checks every field; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_models.len() > 100 || self.allowed_ips.len() > 100 {
            return Err("at most 100 allowed_models and 100 allowed_ips".into());
        }
        for p in &self.allowed_models {
            if p.trim().is_empty()
                || p.len() > 128
                || p.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "allowed_models: {:?} is not a model pattern",
                    clip(p)
                ));
            }
        }
        for r in &self.allowed_ips {
            if rules::Cidr::parse(r).is_none() {
                return Err(format!(
                    "allowed_ips: {:?} is not an address or CIDR range",
                    clip(r)
                ));
            }
        }
        if self.rpm == Some(0) || self.rpm.is_some_and(|r| r > 1_000_000) {
            return Err("rpm must be between 1 and 1000000".into());
        }
        if self.max_concurrency == Some(0) || self.max_concurrency.is_some_and(|c| c > 100_000) {
            return Err("max_concurrency must be between 1 and 100000".into());
        }
        for (p, b) in self.budgets() {
            check_budget(&format!("{}_budget_usd", p.as_str()), b)?;
        }
        Ok(())
    }
}

/// A change to a key's limits: absent fields stay, `null` clears, a value sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsPatch {
    /// `allowed_models`.
    pub allowed_models: Option<Option<Vec<String>>>,
    /// `rpm`.
    pub rpm: Option<Option<u32>>,
    /// `max_concurrency`.
    pub max_concurrency: Option<Option<u32>>,
    /// `daily_budget_usd`.
    pub daily_budget_usd: Option<Option<Decimal>>,
    /// `weekly_budget_usd`.
    pub weekly_budget_usd: Option<Option<Decimal>>,
    /// `monthly_budget_usd`.
    pub monthly_budget_usd: Option<Option<Decimal>>,
    /// `total_budget_usd`.
    pub total_budget_usd: Option<Option<Decimal>>,
    /// `allowed_ips`.
    pub allowed_ips: Option<Option<Vec<String>>>,
}

impl LimitsPatch {
    /// Whether the patch changes anything.
    pub fn is_empty(&self) -> bool {
        *self == LimitsPatch::default()
    }

    /// The limits after the patch.
    pub fn apply(&self, mut l: KeyLimits) -> KeyLimits {
        fn set<T: Clone>(field: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *field = v.clone();
            }
        }
        if let Some(m) = &self.allowed_models {
            l.allowed_models = m.clone().unwrap_or_default();
        }
        if let Some(i) = &self.allowed_ips {
            l.allowed_ips = i.clone().unwrap_or_default();
        }
        set(&mut l.rpm, &self.rpm);
        set(&mut l.max_concurrency, &self.max_concurrency);
        set(&mut l.daily_budget_usd, &self.daily_budget_usd);
        set(&mut l.weekly_budget_usd, &self.weekly_budget_usd);
        set(&mut l.monthly_budget_usd, &self.monthly_budget_usd);
        set(&mut l.total_budget_usd, &self.total_budget_usd);
        l
    }
}

/// Reads a nullable USD amount from a JSON string or number without going through a
/// float: absent → `None`, `null` → `Some(None)`.
pub fn usd_nullable<'de, D>(d: D) -> Result<Option<Option<Decimal>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let v = Option::<serde_json::Value>::deserialize(d)?;
    let text = match v {
        None => return Ok(Some(None)),
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => return Err(D::Error::custom("a budget is a decimal string or number")),
    };
    text.trim()
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map(|d| Some(Some(d)))
        .map_err(|_| D::Error::custom(format!("{:?} is not a decimal amount", clip(&text))))
}

/// A budget: not negative, at most a billion dollars, at most nanodollar precision.
pub fn check_budget(what: &str, b: Decimal) -> Result<(), String> {
    if b.is_sign_negative() || b > Decimal::from(1_000_000_000) {
        return Err(format!("{what} must be between 0 and 1000000000"));
    }
    if b.normalize().scale() > 9 {
        return Err(format!("{what} has more than 9 decimal places"));
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
pub enum LimitName {
    /// `allowed_models`.
    #[serde(rename = "allowed_models")]
    Model,
    /// `allowed_ips`.
    #[serde(rename = "allowed_ips")]
    Ip,
    /// `rpm`.
    #[serde(rename = "rpm")]
    Rpm,
    /// `max_concurrency`.
    #[serde(rename = "max_concurrency")]
    Concurrency,
    /// The key's daily budget.
    #[serde(rename = "daily_budget_usd")]
    DailyBudget,
    /// The key's weekly budget.
    #[serde(rename = "weekly_budget_usd")]
    WeeklyBudget,
    /// The key's monthly budget.
    #[serde(rename = "monthly_budget_usd")]
    MonthlyBudget,
    /// The key's total budget.
    #[serde(rename = "total_budget_usd")]
    TotalBudget,
    /// The tenant's monthly budget.
    #[serde(rename = "tenant_monthly_budget_usd")]
    TenantMonthlyBudget,
    /// The limits could not be read (fail closed).
    #[serde(rename = "limits_unavailable")]
    Unavailable,
}

impl LimitName {
    /// Spelling in events and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::Model => "allowed_models",
            LimitName::Ip => "allowed_ips",
            LimitName::Rpm => "rpm",
            LimitName::Concurrency => "max_concurrency",
            LimitName::DailyBudget => "daily_budget_usd",
            LimitName::WeeklyBudget => "weekly_budget_usd",
            LimitName::MonthlyBudget => "monthly_budget_usd",
            LimitName::TotalBudget => "total_budget_usd",
            LimitName::TenantMonthlyBudget => "tenant_monthly_budget_usd",
            LimitName::Unavailable => "limits_unavailable",
        }
    }

    /// The key budget limit of a period.
    pub fn of_period(p: window::Period) -> LimitName {
        match p {
            window::Period::Daily => LimitName::DailyBudget,
            window::Period::Weekly => LimitName::WeeklyBudget,
            window::Period::Monthly => LimitName::MonthlyBudget,
            window::Period::Total => LimitName::TotalBudget,
        }
    }
}

/// A refusal: which limit, the relay's message, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The limit.
    pub limit: LimitName,
    /// What to tell the client: the limit, the current value and when it resets.
    pub message: String,
    /// Seconds until the limit has room again, when known.
    pub retry_after: Option<u64>,
}

/// What a request may consume at most, as far as its body tells.
#[derive(Debug, Clone, Copy, Default)]
pub struct Worst {
    /// The body's size; one input token per 3 bytes.
    pub body_bytes: usize,
    /// `max_tokens`.
    pub max_tokens: u64,
    /// Web searches the request allows.
    pub searches: u64,
    /// Input tokens server tools may add (search results, fetched pages).
    pub tool_input_tokens: u64,
}

/// The worst-case cost of a request, reserved before it is sent: the input estimated
/// from the body size (one token per 3 bytes) plus what server tools may add, priced at
/// the highest input rate (a 1-hour cache write), plus `max_tokens` at the output
/// price, plus the allowed web searches at the per-search price.
pub fn reservation_nanos(
    prices: &projections::PriceTable,
    model: &str,
    worst: Worst,
    at_ms: i64,
) -> i64 {
    let est_input = u64::try_from(worst.body_bytes / 3 + 1)
        .unwrap_or(u64::MAX)
        .saturating_add(worst.tool_input_tokens);
    let priced = prices.price(
        at_ms,
        &projections::pricing::PriceContext {
            model,
            service_tier: None,
            speed: None,
            inference_geo: None,
        },
        projections::pricing::Tokens {
            input: 0,
            output: worst.max_tokens,
            cache_read: 0,
            cache_write_5m: 0,
            cache_write_1h: est_input,
        },
    );
    let searches = Decimal::from(worst.searches) * prices.web_search_price(at_ms);
    projections::money::usd_to_nanos((priced.cost + searches).ceil_with_nanos()).unwrap_or(i64::MAX)
}

trait CeilNanos {
    fn ceil_with_nanos(self) -> Decimal;
}

impl CeilNanos for Decimal {
    fn ceil_with_nanos(self) -> Decimal {
        self.round_dp_with_strategy(9, rust_decimal::RoundingStrategy::AwayFromZero)
    }
}

/// Dollars from nanodollars, for messages.
pub fn usd(nanos: i64) -> Decimal {
    projections::money::nanos_to_usd(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_at_the_edge() {
        let ok = KeyLimits {
            allowed_models: vec!["claude-sonnet-*".into()],
            rpm: Some(10),
            daily_budget_usd: Some(Decimal::new(1050, 2)),
            allowed_ips: vec!["10.0.0.0/8".into()],
            ..KeyLimits::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            KeyLimits {
                rpm: Some(0),
                ..KeyLimits::default()
            },
            KeyLimits {
                max_concurrency: Some(0),
                ..KeyLimits::default()
            },
            KeyLimits {
                daily_budget_usd: Some(Decimal::new(-1, 0)),
                ..KeyLimits::default()
            },
            KeyLimits {
                total_budget_usd: Some(Decimal::new(1, 10)),
                ..KeyLimits::default()
            },
            KeyLimits {
                allowed_ips: vec!["10.0.0.0/40".into()],
                ..KeyLimits::default()
            },
            KeyLimits {
                allowed_models: vec!["a b".into()],
                ..KeyLimits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(KeyLimits::default().is_empty());
    }

    #[test]
    fn a_reservation_covers_the_worst_case() {
        let prices = projections::PriceTable::embedded().unwrap();
        let at = chrono::Utc::now().timestamp_millis();
        let worst = Worst {
            body_bytes: 3_000,
            max_tokens: 1_000,
            ..Worst::default()
        };
        let r = reservation_nanos(&prices, "claude-sonnet-4-5", worst, at);
        // 1001 input tokens at the 1-hour cache-write rate ($6/M) + 1000 output at $15/M.
        assert_eq!(r, 1001 * 6_000 + 1_000 * 15_000);
        let more_output = Worst {
            max_tokens: 2_000,
            ..worst
        };
        assert!(reservation_nanos(&prices, "claude-sonnet-4-5", more_output, at) > r);
        // Each allowed web search adds its price, $0.01, and its results' input tokens.
        let searching = Worst {
            searches: 3,
            tool_input_tokens: 500,
            ..worst
        };
        let with_searches = reservation_nanos(&prices, "claude-sonnet-4-5", searching, at);
        assert_eq!(with_searches, r + 3 * 10_000_000 + 500 * 6_000);
    }
}
