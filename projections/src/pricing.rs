//! The effective-dated price table and the exact cost of one usage event.
//!
//! The table ships in the repository (`projections/prices/anthropic.json`, embedded at
//! build time) and can be replaced by a file of the same format; the relay reads that
//! file (env `PRICE_TABLE`) and passes the parsed table in, because projections read
//! no files or environment while applying events.
//!
//! Rules (USD per million tokens):
//! - cost = input × input price + output × output price + cache reads × read price
//!   + 5-minute cache writes × 5m price + 1-hour cache writes × 1h price;
//! - the 5m and 1h write prices default to 1.25× and 2× the input price when a model
//!   entry omits them;
//! - long-context tier: when a model has one and the prompt (input + cache reads +
//!   cache writes) exceeds its threshold, the **whole request** is priced at the tier's
//!   rates (Sonnet 4 / 4.5 above 200k, Haiku 5.5 above 100k);
//! - multipliers, applied to every unit price of the event: `batch` (version-wide,
//!   0.5) when `service_tier = "batch"`; the model's `geo_us` (1.1 on Opus 4.6+,
//!   Sonnet 4.6+ and 5.x) when `inference_geo = "us"`; the model's `speed_fast` (2 on
//!   Opus 4.8 / 5 / 5.5, 6 on Opus 4.6; not confirmed on the official page) when
//!   `speed = "fast"`. A model without the multiplier is priced at 1×. The `priority`
//!   tier has no multiplier here (it is billed by commitment, not per token);
//! - server tools billed per use: each web search costs the version's
//!   `server_tools.web_search.per_use` (USD per search, at most 9 decimal places), on top
//!   of the tokens its results add. The token multipliers do not apply to it. Web fetch
//!   is billed by its tokens only, and code execution by container time the usage does
//!   not report, so neither has a per-use price;
//! - the cost is exact; it is stored in nanodollars, and only a multiplier can make the
//!   token part finer than that (then that part is rounded half to even, see
//!   [`crate::money`]); the cost is that rounded token part plus the per-use part, so the
//!   per-use part of a stored cost is always recoverable to the nanodollar.
//!
//! Versions: each version has an id and a UTC start day and lists the models it adds or
//! changes; a version inherits every other model, the family fallbacks, the batch
//! multiplier and the per-use prices from the one before it. An event is priced with the newest version whose
//! start is not after the event's `occurred_at`; events older than the first version
//! use the first version.
//!
//! Model names match an entry exactly, or as `<entry>-YYYYMMDD` / `<entry>-latest`, or
//! through an entry's `aliases`. Unknown models are never priced at 0: a name containing
//! a family keyword (`fable`, `mythos`, `opus`, `sonnet`, `haiku`) gets that family's
//! `family_fallback` entry (the newest model of the family), anything else gets the most
//! expensive entry of the version (highest output, then input price); either way the
//! ledger row is flagged `priced_by_fallback`.

use crate::Error;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use schema::UsageRecorded;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The price table shipped with the crate.
pub const EMBEDDED_JSON: &str = include_str!("../prices/anthropic.json");

/// Unit prices of one event in USD per million tokens, multipliers applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitPrices {
    /// Uncached input.
    pub input: Decimal,
    /// Output.
    pub output: Decimal,
    /// Cache reads.
    pub cache_read: Decimal,
    /// 5-minute cache writes.
    pub cache_write_5m: Decimal,
    /// 1-hour cache writes.
    pub cache_write_1h: Decimal,
}

impl UnitPrices {
    fn scaled(&self, factor: Decimal) -> UnitPrices {
        UnitPrices {
            input: (self.input * factor).normalize(),
            output: (self.output * factor).normalize(),
            cache_read: (self.cache_read * factor).normalize(),
            cache_write_5m: (self.cache_write_5m * factor).normalize(),
            cache_write_1h: (self.cache_write_1h * factor).normalize(),
        }
    }
}

/// Server-tool uses that are priced per use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerToolUses {
    /// Web searches (`server_tool_use.web_search_requests`).
    pub web_search: u64,
}

impl ServerToolUses {
    /// The uses of a usage event.
    pub fn of(u: &UsageRecorded) -> ServerToolUses {
        ServerToolUses {
            web_search: u.server_tool_use.web_search_requests,
        }
    }
}

/// The per-use part of a price.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerToolCharge {
    /// Web searches.
    pub web_search_uses: u64,
    /// USD per web search.
    pub web_search_unit: Decimal,
    /// `web_search_uses × web_search_unit`, exact (whole nanodollars).
    pub cost: Decimal,
}

/// The price of one usage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    /// Id of the price-table version used.
    pub version: String,
    /// The entry used: the model entry id, with `>N` appended when the long-context
    /// tier above N prompt tokens applied.
    pub price_key: String,
    /// Whether the model was unknown and priced by the fallback rule.
    pub fallback: bool,
    /// Unit prices after multipliers.
    pub unit: UnitPrices,
    /// Per-use charges (web search), part of `cost`.
    pub server_tools: ServerToolCharge,
    /// Exact cost in USD: the tokens (rounded to the nanodollar) plus the per-use charges.
    pub cost: Decimal,
}

/// Token counts that a price applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Uncached input.
    pub input: u64,
    /// Output.
    pub output: u64,
    /// Cache reads.
    pub cache_read: u64,
    /// 5-minute cache writes.
    pub cache_write_5m: u64,
    /// 1-hour cache writes.
    pub cache_write_1h: u64,
}

impl Tokens {
    /// The counts of a usage event.
    pub fn of(u: &UsageRecorded) -> Tokens {
        Tokens {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_input_tokens,
            cache_write_5m: u.cache_creation_5m_input_tokens,
            cache_write_1h: u.cache_creation_1h_input_tokens,
        }
    }

    fn prompt(&self) -> u64 {
        self.input + self.cache_read + self.cache_write_5m + self.cache_write_1h
    }
}

/// What a price depends on besides the tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriceContext<'a> {
    /// The model name as reported.
    pub model: &'a str,
    /// `usage.service_tier`.
    pub service_tier: Option<&'a str>,
    /// `usage.speed`.
    pub speed: Option<&'a str>,
    /// `usage.inference_geo`.
    pub inference_geo: Option<&'a str>,
}

// ---- file format ----

#[derive(Debug, Deserialize)]
struct FileTable {
    versions: Vec<FileVersion>,
}

#[derive(Debug, Deserialize)]
struct FileVersion {
    id: String,
    effective_from: NaiveDate,
    #[serde(default)]
    batch: Option<Decimal>,
    #[serde(default)]
    family_fallback: BTreeMap<String, String>,
    #[serde(default)]
    server_tools: BTreeMap<String, FilePerUse>,
    #[serde(default)]
    models: BTreeMap<String, FileModel>,
}

/// A per-use price and where it comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePerUse {
    per_use: Decimal,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "documentation in the table file, checked to be there"
    )]
    source: String,
}

/// Server tools a table may price per use.
const PER_USE_TOOLS: [&str; 1] = ["web_search"];

#[derive(Debug, Clone, Deserialize)]
struct FileModel {
    input: Decimal,
    output: Decimal,
    cache_read: Decimal,
    #[serde(default)]
    cache_write_5m: Option<Decimal>,
    #[serde(default)]
    cache_write_1h: Option<Decimal>,
    #[serde(default)]
    geo_us: Option<Decimal>,
    #[serde(default)]
    speed_fast: Option<Decimal>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    long_context: Option<FileTier>,
}

#[derive(Debug, Clone, Deserialize)]
struct FileTier {
    above_prompt_tokens: u64,
    input: Decimal,
    output: Decimal,
    cache_read: Decimal,
    #[serde(default)]
    cache_write_5m: Option<Decimal>,
    #[serde(default)]
    cache_write_1h: Option<Decimal>,
}

// ---- resolved form ----

#[derive(Debug, Clone)]
struct ModelPrice {
    base: UnitPrices,
    long_context: Option<(u64, UnitPrices)>,
    geo_us: Option<Decimal>,
    speed_fast: Option<Decimal>,
}

#[derive(Debug, Clone)]
struct Version {
    id: String,
    effective_from_ms: i64,
    batch: Decimal,
    family_fallback: BTreeMap<String, String>,
    /// USD per web search.
    web_search: Decimal,
    models: BTreeMap<String, ModelPrice>,
    aliases: BTreeMap<String, String>,
    most_expensive: String,
}

/// An effective-dated price table, resolved and validated.
#[derive(Debug, Clone)]
pub struct PriceTable {
    versions: Vec<Version>,
}

fn unit(
    input: Decimal,
    output: Decimal,
    cache_read: Decimal,
    w5: Option<Decimal>,
    w1: Option<Decimal>,
) -> UnitPrices {
    UnitPrices {
        input: input.normalize(),
        output: output.normalize(),
        cache_read: cache_read.normalize(),
        cache_write_5m: w5.unwrap_or(input * Decimal::new(125, 2)).normalize(),
        cache_write_1h: w1.unwrap_or(input * Decimal::from(2)).normalize(),
    }
}

/// Family keywords checked, in this order, for unknown model names.
const FAMILIES: [&str; 5] = ["fable", "mythos", "opus", "sonnet", "haiku"];

impl PriceTable {
    /// The table shipped with the crate.
    pub fn embedded() -> Result<PriceTable, Error> {
        PriceTable::from_json(EMBEDDED_JSON)
    }

    /// Reads a table file (same format as the embedded one). Call this at start-up,
    /// never from inside a projection.
    pub fn from_file(path: &std::path::Path) -> Result<PriceTable, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::PriceTable(format!("cannot read {}: {e}", path.display())))?;
        PriceTable::from_json(&text)
    }

    /// Parses and validates a table.
    pub fn from_json(text: &str) -> Result<PriceTable, Error> {
        let file: FileTable =
            serde_json::from_str(text).map_err(|e| Error::PriceTable(e.to_string()))?;
        let mut file_versions = file.versions;
        file_versions.sort_by_key(|v| v.effective_from);
        let mut versions: Vec<Version> = Vec::with_capacity(file_versions.len());
        for fv in file_versions {
            let mut v = match versions.last() {
                Some(prev) => prev.clone(),
                None => Version {
                    id: String::new(),
                    effective_from_ms: 0,
                    batch: Decimal::new(5, 1),
                    family_fallback: BTreeMap::new(),
                    web_search: Decimal::ZERO,
                    models: BTreeMap::new(),
                    aliases: BTreeMap::new(),
                    most_expensive: String::new(),
                },
            };
            if versions.iter().any(|p| p.id == fv.id) || fv.id.is_empty() {
                return Err(Error::PriceTable(format!(
                    "version id {:?} is empty or repeated",
                    fv.id
                )));
            }
            v.id = fv.id;
            v.effective_from_ms = fv
                .effective_from
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
                .unwrap_or_default();
            if let Some(b) = fv.batch {
                v.batch = b;
            }
            v.family_fallback.extend(fv.family_fallback);
            for (tool, price) in fv.server_tools {
                if !PER_USE_TOOLS.contains(&tool.as_str()) {
                    return Err(Error::PriceTable(format!(
                        "version {}: server tool {tool:?} has no per-use price (priced per use: {})",
                        v.id,
                        PER_USE_TOOLS.join(", ")
                    )));
                }
                let per_use = price.per_use.normalize();
                if per_use.is_sign_negative() || per_use.scale() > crate::money::NANO_SCALE {
                    return Err(Error::PriceTable(format!(
                        "version {}: {tool} per_use {per_use} must be ≥ 0 with at most 9 decimal places",
                        v.id
                    )));
                }
                v.web_search = per_use;
            }
            for (name, m) in fv.models {
                for alias in &m.aliases {
                    v.aliases.insert(alias.clone(), name.clone());
                }
                let price = ModelPrice {
                    base: unit(
                        m.input,
                        m.output,
                        m.cache_read,
                        m.cache_write_5m,
                        m.cache_write_1h,
                    ),
                    long_context: m.long_context.map(|t| {
                        (
                            t.above_prompt_tokens,
                            unit(
                                t.input,
                                t.output,
                                t.cache_read,
                                t.cache_write_5m,
                                t.cache_write_1h,
                            ),
                        )
                    }),
                    geo_us: m.geo_us,
                    speed_fast: m.speed_fast,
                };
                v.models.insert(name, price);
            }
            if v.models.is_empty() {
                return Err(Error::PriceTable(format!("version {} has no models", v.id)));
            }
            for (family, target) in &v.family_fallback {
                if !v.models.contains_key(target) {
                    return Err(Error::PriceTable(format!(
                        "version {}: fallback for {family} names unknown model {target}",
                        v.id
                    )));
                }
            }
            for target in v.aliases.values() {
                if !v.models.contains_key(target) {
                    return Err(Error::PriceTable(format!(
                        "version {}: alias target {target} is unknown",
                        v.id
                    )));
                }
            }
            v.most_expensive = v
                .models
                .iter()
                .max_by(|a, b| {
                    (a.1.base.output, a.1.base.input, b.0).cmp(&(
                        b.1.base.output,
                        b.1.base.input,
                        a.0,
                    ))
                })
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            versions.push(v);
        }
        if versions.is_empty() {
            return Err(Error::PriceTable("no versions".into()));
        }
        Ok(PriceTable { versions })
    }

    /// Ids of all versions, oldest first.
    pub fn version_ids(&self) -> Vec<&str> {
        self.versions.iter().map(|v| v.id.as_str()).collect()
    }

    fn version_at(&self, at_ms: i64) -> &Version {
        // `from_json` guarantees at least one version.
        let mut chosen = &self.versions[0];
        for v in &self.versions {
            if v.effective_from_ms <= at_ms {
                chosen = v;
            }
        }
        chosen
    }

    /// Prices a usage event that occurred at `at`: its tokens and its server-tool uses.
    pub fn price_usage(&self, at: DateTime<Utc>, u: &UsageRecorded) -> Priced {
        self.price_with_uses(
            at.timestamp_millis(),
            &PriceContext {
                model: &u.model,
                service_tier: u.service_tier.as_deref(),
                speed: u.speed.as_deref(),
                inference_geo: u.inference_geo.as_deref(),
            },
            Tokens::of(u),
            ServerToolUses::of(u),
        )
    }

    /// Prices `tokens` of `ctx.model` at epoch milliseconds `at_ms`, without server-tool
    /// uses (see [`PriceTable::price_with_uses`]).
    pub fn price(&self, at_ms: i64, ctx: &PriceContext<'_>, tokens: Tokens) -> Priced {
        self.price_with_uses(at_ms, ctx, tokens, ServerToolUses::default())
    }

    /// USD per web search at epoch milliseconds `at_ms`.
    pub fn web_search_price(&self, at_ms: i64) -> Decimal {
        self.version_at(at_ms).web_search
    }

    /// Prices `tokens` and server-tool `uses` of `ctx.model` at epoch milliseconds
    /// `at_ms`.
    pub fn price_with_uses(
        &self,
        at_ms: i64,
        ctx: &PriceContext<'_>,
        tokens: Tokens,
        uses: ServerToolUses,
    ) -> Priced {
        let v = self.version_at(at_ms);
        let server_tools = ServerToolCharge {
            web_search_uses: uses.web_search,
            web_search_unit: v.web_search,
            cost: (Decimal::from(uses.web_search) * v.web_search).normalize(),
        };
        let (key, fallback) = match lookup(v, ctx.model) {
            Some(k) => (k, false),
            None => (fallback_key(v, ctx.model), true),
        };
        // `key` always names a model of `v`: lookups and fallbacks are validated.
        let Some(model) = v.models.get(key) else {
            return Priced {
                version: v.id.clone(),
                price_key: key.to_owned(),
                fallback: true,
                unit: unit(Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, None, None),
                cost: server_tools.cost,
                server_tools,
            };
        };
        let (mut price_key, base) = (key.to_owned(), &model.base);
        let base = match &model.long_context {
            Some((threshold, tier)) if tokens.prompt() > *threshold => {
                price_key = format!("{key}>{threshold}");
                tier
            }
            _ => base,
        };
        let mut factor = Decimal::ONE;
        if ctx.service_tier == Some("batch") {
            factor *= v.batch;
        }
        if ctx.inference_geo == Some("us") {
            if let Some(f) = model.geo_us {
                factor *= f;
            }
        }
        if ctx.speed == Some("fast") {
            if let Some(f) = model.speed_fast {
                factor *= f;
            }
        }
        let unit = base.scaled(factor);
        let cost = (token_cost_rounded(&unit, tokens) + server_tools.cost).normalize();
        Priced {
            version: v.id.clone(),
            price_key,
            fallback,
            unit,
            server_tools,
            cost,
        }
    }
}

/// [`cost_of`] rounded half to even to the nanodollar: the token part of a stored cost.
pub fn token_cost_rounded(unit: &UnitPrices, t: Tokens) -> Decimal {
    cost_of(unit, t)
        .round_dp_with_strategy(
            crate::money::NANO_SCALE,
            rust_decimal::RoundingStrategy::MidpointNearestEven,
        )
        .normalize()
}

/// Exact cost of `tokens` at `unit` prices per million tokens.
pub fn cost_of(unit: &UnitPrices, t: Tokens) -> Decimal {
    let sum = Decimal::from(t.input) * unit.input
        + Decimal::from(t.output) * unit.output
        + Decimal::from(t.cache_read) * unit.cache_read
        + Decimal::from(t.cache_write_5m) * unit.cache_write_5m
        + Decimal::from(t.cache_write_1h) * unit.cache_write_1h;
    (sum / Decimal::from(1_000_000)).normalize()
}

fn lookup<'a>(v: &'a Version, model: &str) -> Option<&'a str> {
    let find = |name: &str| -> Option<&'a str> {
        if let Some((k, _)) = v.models.get_key_value(name) {
            return Some(k.as_str());
        }
        v.aliases.get(name).map(String::as_str)
    };
    if let Some(k) = find(model) {
        return Some(k);
    }
    let (base, suffix) = model.rsplit_once('-')?;
    let dated = suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_digit());
    if dated || suffix == "latest" {
        return find(base);
    }
    None
}

fn fallback_key<'a>(v: &'a Version, model: &str) -> &'a str {
    let lower = model.to_ascii_lowercase();
    for family in FAMILIES {
        if lower.contains(family) {
            if let Some(target) = v.family_fallback.get(family) {
                return target.as_str();
            }
        }
    }
    v.most_expensive.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ctx(model: &str) -> PriceContext<'_> {
        PriceContext {
            model,
            ..Default::default()
        }
    }

    const NOV_2026: i64 = 1_795_000_000_000;
    const JAN_2026: i64 = 1_767_300_000_000;

    #[test]
    fn embedded_table_parses_and_derives_cache_writes() {
        let t = PriceTable::embedded().unwrap();
        assert_eq!(
            t.version_ids(),
            vec!["anthropic-2024-01-01", "anthropic-2026-10-07"]
        );
        let p = t.price(NOV_2026, &ctx("claude-opus-4-6"), Tokens::default());
        assert_eq!(p.unit.cache_write_5m, d("6.25"));
        assert_eq!(p.unit.cache_write_1h, d("10"));
        assert!(!p.fallback);
        // An explicit official value wins over the 1.25x rule.
        let p = t.price(NOV_2026, &ctx("claude-3-haiku-20240307"), Tokens::default());
        assert_eq!(p.unit.cache_write_5m, d("0.3"));
        assert_eq!(p.price_key, "claude-3-haiku");
    }

    #[test]
    fn all_five_token_kinds() {
        let t = PriceTable::embedded().unwrap();
        let tokens = Tokens {
            input: 1_000,
            output: 2_000,
            cache_read: 10_000,
            cache_write_5m: 4_000,
            cache_write_1h: 3_000,
        };
        let p = t.price(NOV_2026, &ctx("claude-sonnet-4-6"), tokens);
        // 1000*3 + 2000*15 + 10000*0.3 + 4000*3.75 + 3000*6 = 3000+30000+3000+15000+18000
        assert_eq!(p.cost, d("0.069"));
    }

    #[test]
    fn effective_dating_changes_the_price() {
        let t = PriceTable::embedded().unwrap();
        let tokens = Tokens {
            cache_read: 1_000_000,
            ..Default::default()
        };
        let before = t.price(JAN_2026, &ctx("claude-sonnet-5-5"), tokens);
        let after = t.price(NOV_2026, &ctx("claude-sonnet-5-5"), tokens);
        assert_eq!(before.cost, d("0.2"));
        assert_eq!(before.version, "anthropic-2024-01-01");
        assert_eq!(after.cost, d("0.1"));
        assert_eq!(after.version, "anthropic-2026-10-07");
    }

    #[test]
    fn long_context_tiers() {
        let t = PriceTable::embedded().unwrap();
        let small = Tokens {
            input: 100_000,
            ..Default::default()
        };
        let big = Tokens {
            input: 100_000,
            cache_read: 100_001,
            ..Default::default()
        };
        assert_eq!(
            t.price(NOV_2026, &ctx("claude-sonnet-4-5"), small)
                .unit
                .input,
            d("3")
        );
        let p = t.price(NOV_2026, &ctx("claude-sonnet-4-5-20250929"), big);
        assert_eq!(p.unit.input, d("6"));
        assert_eq!(p.unit.cache_write_1h, d("12"));
        assert_eq!(p.price_key, "claude-sonnet-4-5>200000");
        let h = t.price(NOV_2026, &ctx("claude-haiku-5-5"), small);
        assert_eq!(h.unit.input, d("0.1"));
        let h = t.price(
            NOV_2026,
            &ctx("claude-haiku-5-5"),
            Tokens {
                input: 100_001,
                ..Default::default()
            },
        );
        assert_eq!(h.unit.input, d("0.5"));
        assert_eq!(h.unit.cache_write_5m, d("0.625"));
    }

    #[test]
    fn multipliers() {
        let t = PriceTable::embedded().unwrap();
        let tokens = Tokens {
            output: 1_000_000,
            ..Default::default()
        };
        let us = t.price(
            NOV_2026,
            &PriceContext {
                model: "claude-opus-4-6",
                inference_geo: Some("us"),
                speed: Some("fast"),
                service_tier: Some("batch"),
            },
            tokens,
        );
        assert_eq!(us.cost, d("82.5")); // 25 * 1.1 * 6 * 0.5
        let old = t.price(
            NOV_2026,
            &PriceContext {
                model: "claude-opus-4-1",
                inference_geo: Some("us"),
                ..Default::default()
            },
            tokens,
        );
        assert_eq!(old.cost, d("75"));
    }

    #[test]
    fn unknown_models_fall_back_and_are_flagged() {
        let t = PriceTable::embedded().unwrap();
        let tokens = Tokens {
            input: 1_000_000,
            ..Default::default()
        };
        let p = t.price(NOV_2026, &ctx("claude-opus-9-9"), tokens);
        assert!(p.fallback);
        assert_eq!(p.price_key, "claude-opus-5-5");
        assert_eq!(p.cost, d("4"));
        let small = Tokens {
            input: 1_000,
            ..Default::default()
        };
        let p = t.price(NOV_2026, &ctx("claude-haiku-7"), small);
        assert_eq!(p.price_key, "claude-haiku-5-5");
        let p = t.price(JAN_2026, &ctx("claude-haiku-7"), small);
        assert_eq!(p.price_key, "claude-haiku-4-5");
        let p = t.price(NOV_2026, &ctx("gpt-5"), tokens);
        assert!(p.fallback);
        assert_eq!(p.price_key, "claude-3-opus");
        assert!(p.cost > Decimal::ZERO);
        // A dated suffix on an unknown base does not match a shorter entry.
        let p = t.price(NOV_2026, &ctx("claude-opus-4-9"), tokens);
        assert!(p.fallback);
        let p = t.price(NOV_2026, &ctx("claude-opus-4-20250514"), tokens);
        assert!(!p.fallback);
        assert_eq!(p.price_key, "claude-opus-4-0");
    }

    fn searching(
        model: &str,
        tokens: [u64; 5],
        searches: u64,
        tier: Option<&str>,
    ) -> UsageRecorded {
        UsageRecorded {
            account: schema::AccountId::parse("acc_1").unwrap(),
            attempt: 1,
            model: model.into(),
            status: 200,
            stream: true,
            input_tokens: tokens[0],
            output_tokens: tokens[1],
            cache_read_input_tokens: tokens[2],
            cache_creation_5m_input_tokens: tokens[3],
            cache_creation_1h_input_tokens: tokens[4],
            server_tool_use: schema::ServerToolUse {
                web_search_requests: searches,
                web_fetch_requests: 7,
            },
            service_tier: tier.map(Into::into),
            speed: None,
            inference_geo: None,
            completeness: schema::Completeness::Complete,
        }
    }

    #[test]
    fn web_searches_cost_per_use_on_top_of_tokens_without_multipliers() {
        let t = PriceTable::embedded().unwrap();
        let at = DateTime::from_timestamp_millis(NOV_2026).unwrap();
        let u = searching("claude-sonnet-4-6", [1_000, 100, 0, 0, 0], 3, None);
        let p = t.price_usage(at, &u);
        // 1000*3 + 100*15 = 4500 µUSD of tokens; 3 searches at $0.01; fetches are free.
        assert_eq!(p.server_tools.web_search_uses, 3);
        assert_eq!(p.server_tools.web_search_unit, d("0.01"));
        assert_eq!(p.server_tools.cost, d("0.03"));
        assert_eq!(p.cost, d("0.0345"));
        assert_eq!(t.web_search_price(NOV_2026), d("0.01"));
        // The batch discount halves the tokens, not the searches.
        let p = t.price_usage(
            at,
            &searching("claude-sonnet-4-6", [1_000, 100, 0, 0, 0], 3, Some("batch")),
        );
        assert_eq!(p.cost, d("0.03225"));
        // `price` (tokens only) leaves the searches out.
        let p = t.price(NOV_2026, &ctx("claude-sonnet-4-6"), Tokens::of(&u));
        assert_eq!(p.cost, d("0.0045"));
        assert_eq!(
            p.server_tools,
            ServerToolCharge {
                web_search_unit: d("0.01"),
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_token_part_is_rounded_before_the_searches_are_added() {
        // One input token at 0.001 USD/M under batch is 0.5 nanodollars, a tie.
        let tie = PriceTable::from_json(
            r#"{"versions":[{"id":"v","effective_from":"2024-01-01",
                "server_tools":{"web_search":{"per_use":"0.000000001","source":"test"}},
                "models":{"m":{"input":"0.001","output":"1","cache_read":"1"}}}]}"#,
        )
        .unwrap();
        let at = DateTime::from_timestamp_millis(NOV_2026).unwrap();
        let u = searching("m", [1, 0, 0, 0, 0], 1, Some("batch"));
        let p = tie.price_usage(at, &u);
        // The tie rounds to 0 (even), then the search adds 1: 1, not round(1.5) = 2.
        let nanos = |c: Decimal| crate::money::usd_to_nanos(c).unwrap();
        assert_eq!(nanos(p.cost), 1);
        assert_eq!(
            nanos(p.cost) - nanos(token_cost_rounded(&p.unit, Tokens::of(&u))),
            1,
            "the per-use part is recoverable from the stored cost"
        );
    }

    #[test]
    fn per_use_prices_are_effective_dated_and_validated() {
        let two = PriceTable::from_json(
            r#"{"versions":[
                {"id":"a","effective_from":"2024-01-01","server_tools":{"web_search":{"per_use":"0.01","source":"x"}},
                 "models":{"m":{"input":"1","output":"1","cache_read":"1"}}},
                {"id":"b","effective_from":"2026-11-01"},
                {"id":"c","effective_from":"2026-11-10","server_tools":{"web_search":{"per_use":"0.008","source":"y"}}}]}"#,
        )
        .unwrap();
        let day = |d: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, d)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
        };
        assert_eq!(two.web_search_price(JAN_2026), d("0.01"));
        assert_eq!(two.web_search_price(day(5)), d("0.01"), "inherited by b");
        assert_eq!(two.web_search_price(day(20)), d("0.008"));
        let bad = |tools: &str| {
            PriceTable::from_json(&format!(
                r#"{{"versions":[{{"id":"a","effective_from":"2024-01-01","server_tools":{tools},
                   "models":{{"m":{{"input":"1","output":"1","cache_read":"1"}}}}}}]}}"#
            ))
        };
        assert!(
            bad(r#"{"web_fetch":{"per_use":"0.01"}}"#).is_err(),
            "not billed per use"
        );
        assert!(
            bad(r#"{"web_search":{"per_use":"0.0000000001"}}"#).is_err(),
            "finer than a nanodollar"
        );
        assert!(bad(r#"{"web_search":{"per_use":"-1"}}"#).is_err());
        assert!(bad(r#"{"web_search":{"per_use":"0.01","typo":1}}"#).is_err());
        assert!(bad(r#"{"web_search":{"per_use":"0.01","source":"s"}}"#).is_ok());
    }

    #[test]
    fn invalid_tables_are_rejected() {
        assert!(PriceTable::from_json("{\"versions\":[]}").is_err());
        assert!(PriceTable::from_json(
            r#"{"versions":[{"id":"a","effective_from":"2024-01-01","family_fallback":{"opus":"x"},"models":{"m":{"input":"1","output":"1","cache_read":"1"}}}]}"#
        )
        .is_err());
    }
}
