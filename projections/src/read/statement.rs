//! Monthly statements: per model and unit prices, server tools and attempts of
//! unknown usage, with exact totals.

use super::u;
use crate::money::{nanos_to_usd, usd_to_nanos};
use crate::pricing::{token_cost_rounded, Tokens, UnitPrices};
use crate::Dialect as _;
use crate::Error;
use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::str::FromStr;

/// One line of a statement: a model's tokens at one set of unit prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// One line of a statement: a server tool billed per use, at one price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerToolLine {
    /// The tool (`web_search`).
    pub tool: String,
    /// Price-table version.
    pub price_version: String,
    /// USD per use.
    pub unit_price: Decimal,
    /// Usage events with uses.
    pub requests: u64,
    /// Uses.
    pub uses: u64,
    /// Cost, USD.
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// One line of a statement: upstream attempts of a model whose usage is unknown (the
/// relay died while they ran; see `Completeness::Unknown`). They carry no tokens and
/// no cost, and are listed so that nothing upstream may have billed is silently
/// missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownUsageLine {
    /// Model requested.
    pub model: String,
    /// Attempts.
    pub attempts: u64,
    /// The usage event ids behind this line, sorted.
    pub event_ids: Vec<String>,
}

/// Totals of a statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    pub server_tool_cost: Decimal,
    /// Cost, USD: every line, server tools included.
    pub cost: Decimal,
    /// Cost in nanodollars.
    pub cost_nanos: i64,
    /// Usage events priced by the unknown-model fallback.
    pub fallback_priced_events: u64,
    /// Attempts whose usage is unknown (not in `requests`; see the unknown lines).
    pub unknown_usage_attempts: u64,
}

/// A tenant's monthly statement (UTC month).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// Attempts of unknown usage, by model.
    pub unknown_usage_lines: Vec<UnknownUsageLine>,
    /// Sums over the lines.
    pub totals: StatementTotals,
}

/// Parses `YYYY-MM` into the first and last day of the month.
pub fn month_range(month: &str) -> Result<(NaiveDate, NaiveDate), Error> {
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .map_err(|_| Error::InvalidInput(format!("month {month:?} is not YYYY-MM")))?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    let last = next
        .and_then(|d| d.pred_opt())
        .ok_or_else(|| Error::InvalidInput(format!("month {month:?} is out of range")))?;
    Ok((first, last))
}

fn dec(s: &str) -> Result<Decimal, Error> {
    Decimal::from_str(s).map_err(|e| Error::Corrupt(format!("bad unit price {s:?}: {e}")))
}

/// The server-tool part of a stored cost: the cost less its token part recomputed from
/// the stored unit prices (the pricing adds per-use charges to the token part after
/// rounding it, so this is exact). Zero when the event made no searches, or when the
/// remainder does not fit them (rows priced before searches were).
fn server_tool_nanos(
    units: &UnitPrices,
    tokens: [u64; 5],
    searches: u64,
    cost_nanos: i64,
) -> Result<i64, Error> {
    if searches == 0 {
        return Ok(0);
    }
    let t = Tokens {
        input: tokens[0],
        output: tokens[1],
        cache_read: tokens[2],
        cache_write_5m: tokens[3],
        cache_write_1h: tokens[4],
    };
    let rest = cost_nanos - usd_to_nanos(token_cost_rounded(units, t))?;
    let uses = i64::try_from(searches).unwrap_or(i64::MAX);
    Ok(if rest >= 0 && rest % uses == 0 {
        rest
    } else {
        0
    })
}

/// The statement of `tenant` for `month` (`YYYY-MM`, UTC), built from the usage ledger:
/// a line per model and unit prices, a line per server tool and per-use price. The
/// total is the exact sum of the per-event costs.
pub async fn statement(db: &AnyPool, tenant: &str, month: &str) -> Result<Statement, Error> {
    let (first, last) = month_range(month)?;
    let rows = sqlx::query(&db.sql(
        "SELECT model, price_version, price_key, priced_by_fallback, unit_input, unit_output, \
         unit_cache_read, unit_cache_write_5m, unit_cache_write_1h, event_id, input_tokens, \
         output_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, \
         cost_nanos, web_search_requests, web_fetch_requests, completeness FROM usage_ledger \
         WHERE tenant = $1 AND day >= $2 AND day <= $3 ORDER BY event_id",
    ))
    .bind(tenant)
    .bind(first.format("%Y-%m-%d").to_string())
    .bind(last.format("%Y-%m-%d").to_string())
    .fetch_all(db)
    .await?;
    type Key = (String, String, String, i64, [String; 5]);
    let mut lines: BTreeMap<Key, StatementLine> = BTreeMap::new();
    let mut tool_lines: BTreeMap<(String, String, Decimal), ServerToolLine> = BTreeMap::new();
    let mut totals = StatementTotals::default();
    let mut unknown: BTreeMap<String, UnknownUsageLine> = BTreeMap::new();
    for r in rows {
        let completeness: String = r.try_get(18)?;
        if completeness == "unknown" {
            let model: String = r.try_get(0)?;
            let line = unknown
                .entry(model.clone())
                .or_insert_with(|| UnknownUsageLine {
                    model,
                    attempts: 0,
                    event_ids: Vec::new(),
                });
            line.attempts += 1;
            line.event_ids.push(r.try_get(9)?);
            totals.unknown_usage_attempts += 1;
            continue;
        }
        let units: [String; 5] = [
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
            r.try_get(8)?,
        ];
        let key: Key = (
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            units,
        );
        let tokens: [u64; 5] = [
            u(r.try_get(10)?),
            u(r.try_get(11)?),
            u(r.try_get(12)?),
            u(r.try_get(13)?),
            u(r.try_get(14)?),
        ];
        let cost_nanos: i64 = r.try_get(15)?;
        let searches = u(r.try_get(16)?);
        let event_id: String = r.try_get(9)?;
        totals.web_search_requests += searches;
        totals.web_fetch_requests += u(r.try_get(17)?);
        let line = match lines.entry(key) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let k = v.key().clone();
                v.insert(StatementLine {
                    model: k.0,
                    price_version: k.1,
                    price_key: k.2,
                    priced_by_fallback: k.3 != 0,
                    unit_prices: UnitPrices {
                        input: dec(&k.4[0])?,
                        output: dec(&k.4[1])?,
                        cache_read: dec(&k.4[2])?,
                        cache_write_5m: dec(&k.4[3])?,
                        cache_write_1h: dec(&k.4[4])?,
                    },
                    requests: 0,
                    input_tokens: 0,
                    output_tokens: 0,
                    cache_read_tokens: 0,
                    cache_write_5m_tokens: 0,
                    cache_write_1h_tokens: 0,
                    cost: Decimal::ZERO,
                    cost_nanos: 0,
                    event_ids: Vec::new(),
                })
            }
        };
        let tool_nanos = server_tool_nanos(&line.unit_prices, tokens, searches, cost_nanos)?;
        line.requests += 1;
        line.input_tokens += tokens[0];
        line.output_tokens += tokens[1];
        line.cache_read_tokens += tokens[2];
        line.cache_write_5m_tokens += tokens[3];
        line.cache_write_1h_tokens += tokens[4];
        line.cost_nanos += cost_nanos - tool_nanos;
        line.event_ids.push(event_id.clone());
        if searches > 0 {
            let unit = (nanos_to_usd(tool_nanos) / Decimal::from(searches)).normalize();
            let version = line.price_version.clone();
            let tool = tool_lines
                .entry(("web_search".to_owned(), version.clone(), unit))
                .or_insert_with(|| ServerToolLine {
                    tool: "web_search".to_owned(),
                    price_version: version,
                    unit_price: unit,
                    requests: 0,
                    uses: 0,
                    cost: Decimal::ZERO,
                    cost_nanos: 0,
                    event_ids: Vec::new(),
                });
            tool.requests += 1;
            tool.uses += searches;
            tool.cost_nanos += tool_nanos;
            tool.event_ids.push(event_id);
        }
        totals.requests += 1;
        totals.input_tokens += tokens[0];
        totals.output_tokens += tokens[1];
        totals.cache_read_tokens += tokens[2];
        totals.cache_write_5m_tokens += tokens[3];
        totals.cache_write_1h_tokens += tokens[4];
        totals.cost_nanos += cost_nanos;
        if line.priced_by_fallback {
            totals.fallback_priced_events += 1;
        }
    }
    totals.cost = nanos_to_usd(totals.cost_nanos);
    let lines = lines
        .into_values()
        .map(|mut l| {
            l.cost = nanos_to_usd(l.cost_nanos);
            l
        })
        .collect();
    let server_tool_lines: Vec<ServerToolLine> = tool_lines
        .into_values()
        .map(|mut l| {
            l.cost = nanos_to_usd(l.cost_nanos);
            l
        })
        .collect();
    totals.server_tool_cost = nanos_to_usd(server_tool_lines.iter().map(|l| l.cost_nanos).sum());
    Ok(Statement {
        tenant: tenant.to_owned(),
        month: month.to_owned(),
        currency: "USD".to_owned(),
        lines,
        server_tool_lines,
        unknown_usage_lines: unknown.into_values().collect(),
        totals,
    })
}

impl Statement {
    /// CSV: a header, one row per token line, one per server-tool line (`model` names
    /// the tool, `price_key` is `per_use`, and `uses` / `unit_per_use_usd` are filled),
    /// then a `TOTAL` row. Event ids are space-separated.
    pub fn to_csv(&self) -> String {
        fn esc(s: &str) -> String {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_owned()
            }
        }
        let mut out = String::from(
            "tenant,month,model,price_version,price_key,priced_by_fallback,requests,\
             input_tokens,output_tokens,cache_read_tokens,cache_write_5m_tokens,\
             cache_write_1h_tokens,unit_input_usd_per_mtok,unit_output_usd_per_mtok,\
             unit_cache_read_usd_per_mtok,unit_cache_write_5m_usd_per_mtok,\
             unit_cache_write_1h_usd_per_mtok,cost_usd,event_ids,uses,unit_per_use_usd\n",
        );
        for l in &self.lines {
            let cells = [
                esc(&self.tenant),
                esc(&self.month),
                esc(&l.model),
                esc(&l.price_version),
                esc(&l.price_key),
                l.priced_by_fallback.to_string(),
                l.requests.to_string(),
                l.input_tokens.to_string(),
                l.output_tokens.to_string(),
                l.cache_read_tokens.to_string(),
                l.cache_write_5m_tokens.to_string(),
                l.cache_write_1h_tokens.to_string(),
                l.unit_prices.input.to_string(),
                l.unit_prices.output.to_string(),
                l.unit_prices.cache_read.to_string(),
                l.unit_prices.cache_write_5m.to_string(),
                l.unit_prices.cache_write_1h.to_string(),
                l.cost.to_string(),
                l.event_ids.join(" "),
                String::new(),
                String::new(),
            ];
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        for l in &self.server_tool_lines {
            let mut cells = vec![
                esc(&self.tenant),
                esc(&self.month),
                esc(&l.tool),
                esc(&l.price_version),
                "per_use".to_owned(),
                "false".to_owned(),
                l.requests.to_string(),
            ];
            cells.extend(std::iter::repeat_n(String::new(), 10));
            cells.extend([
                l.cost.to_string(),
                l.event_ids.join(" "),
                l.uses.to_string(),
                l.unit_price.to_string(),
            ]);
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        for l in &self.unknown_usage_lines {
            let mut cells = vec![
                esc(&self.tenant),
                esc(&self.month),
                esc(&l.model),
                String::new(),
                "unknown_usage".to_owned(),
                "false".to_owned(),
                l.attempts.to_string(),
            ];
            cells.extend(std::iter::repeat_n(String::new(), 10));
            cells.extend([
                "0".to_owned(),
                l.event_ids.join(" "),
                String::new(),
                String::new(),
            ]);
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        let t = &self.totals;
        let cells = [
            esc(&self.tenant),
            esc(&self.month),
            "TOTAL".to_owned(),
            String::new(),
            String::new(),
            (t.fallback_priced_events > 0).to_string(),
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.output_tokens.to_string(),
            t.cache_read_tokens.to_string(),
            t.cache_write_5m_tokens.to_string(),
            t.cache_write_1h_tokens.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            t.cost.to_string(),
            String::new(),
            t.web_search_requests.to_string(),
            String::new(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
        out
    }
}
