//! Who receives an alert: event filters, tenant routing and the target's creation
//! time. Pure: the caller passes every fact in.

use projections::notifications::{Audience, KINDS};

/// What routing needs to know about a target.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// `None` for an operator target; else the tenant it belongs to.
    pub tenant: Option<&'a str>,
    /// Event filters (`account.*`, `budget.threshold_crossed`, `*`).
    pub events: &'a [String],
    /// When the target was created (ms): older alerts are never sent to it.
    pub created_at_ms: i64,
}

/// What routing needs to know about an alert.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Its kind (`account.banned`, …).
    pub kind: &'a str,
    /// Who may receive it.
    pub audience: Audience,
    /// The tenant it is about (for a key's budget, the key's tenant).
    pub tenant: Option<&'a str>,
    /// When its event happened (ms).
    pub occurred_at_ms: i64,
}

/// Whether `pattern` selects `kind`: `*` selects every kind, `prefix.*` every kind
/// in that family, anything else exactly one kind.
pub fn pattern_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(family) => kind
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == kind,
    }
}

/// Whether `target` receives `alert`.
///
/// An operator target receives every kind its filters select. A tenant target
/// receives only tenant-audience alerts about its own tenant. Nothing that happened
/// before the target existed is sent to it, so replaying history sends nothing old.
pub fn receives(target: &Route<'_>, alert: &Subject<'_>) -> bool {
    if alert.occurred_at_ms < target.created_at_ms {
        return false;
    }
    if let Some(t) = target.tenant {
        if alert.audience != Audience::Tenant || alert.tenant != Some(t) {
            return false;
        }
    }
    target.events.iter().any(|p| pattern_matches(p, alert.kind))
}

/// Checks a target's filters: at least one, each selecting at least one kind the
/// target may receive (a tenant target: only tenant-audience kinds). Returns them
/// trimmed.
pub fn check_events(events: &[String], tenant_target: bool) -> Result<Vec<String>, String> {
    if events.is_empty() {
        return Err("events must name at least one filter, e.g. [\"budget.*\"]".into());
    }
    if events.len() > 32 {
        return Err("events may hold at most 32 filters".into());
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let p = e.trim();
        let selectable = KINDS
            .iter()
            .any(|(k, a)| pattern_matches(p, k) && (!tenant_target || *a == Audience::Tenant));
        if !selectable {
            let allowed: Vec<&str> = KINDS
                .iter()
                .filter(|(_, a)| !tenant_target || *a == Audience::Tenant)
                .map(|(k, _)| *k)
                .collect();
            return Err(format!(
                "event filter {p:?} selects nothing this target may receive (kinds: {})",
                allowed.join(", ")
            ));
        }
        out.push(p.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for (p, k, want) in [
            ("*", "account.banned", true),
            ("account.*", "account.banned", true),
            ("account.*", "accounts.banned", false),
            ("account.*", "budget.threshold_crossed", false),
            ("budget.threshold_crossed", "budget.threshold_crossed", true),
            ("budget.threshold", "budget.threshold_crossed", false),
            ("budget", "budget.threshold_crossed", false),
        ] {
            assert_eq!(pattern_matches(p, k), want, "{p} {k}");
        }
    }

    #[test]
    fn routing_by_audience_tenant_filter_and_age() {
        let all = vec!["*".to_owned()];
        let budget = vec!["budget.*".to_owned()];
        let op = Route {
            tenant: None,
            events: &all,
            created_at_ms: 1_000,
        };
        let a = Route {
            tenant: Some("a"),
            events: &all,
            created_at_ms: 1_000,
        };
        let a_budget = Route {
            events: &budget,
            ..a
        };
        let health = Subject {
            kind: "account.banned",
            audience: Audience::Operator,
            tenant: None,
            occurred_at_ms: 2_000,
        };
        let budget_a = Subject {
            kind: "budget.threshold_crossed",
            audience: Audience::Tenant,
            tenant: Some("a"),
            occurred_at_ms: 2_000,
        };
        let budget_b = Subject {
            tenant: Some("b"),
            ..budget_a
        };
        let old = Subject {
            occurred_at_ms: 999,
            ..budget_a
        };
        let cases = [
            (&op, &health, true),
            (&op, &budget_a, true),
            (&op, &budget_b, true),
            (&op, &old, false),
            (&a, &health, false),
            (&a, &budget_a, true),
            (&a, &budget_b, false),
            (&a, &old, false),
            (&a_budget, &budget_a, true),
            (&a_budget, &budget_b, false),
        ];
        for (i, (t, s, want)) in cases.iter().enumerate() {
            assert_eq!(receives(t, s), *want, "case {i}");
        }
        let only_accounts = vec!["account.*".to_owned()];
        let op_accounts = Route {
            events: &only_accounts,
            ..op
        };
        assert!(receives(&op_accounts, &health));
        assert!(!receives(&op_accounts, &budget_a));
    }

    #[test]
    fn filters_are_checked_against_what_the_target_may_receive() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_events(&v(&["account.*", " budget.* "]), false).is_ok());
        assert_eq!(
            check_events(&v(&[" budget.* "]), true).unwrap(),
            ["budget.*"]
        );
        assert!(check_events(&v(&["*"]), true).is_ok());
        assert!(check_events(&v(&["account.*"]), true).is_err());
        assert!(check_events(&v(&["nothing.*"]), false).is_err());
        assert!(check_events(&v(&[]), false).is_err());
    }
}
