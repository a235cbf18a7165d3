//! Who may use a key for what: model patterns and client address ranges. No IO.

use std::net::IpAddr;

/// Whether `model` matches a pattern with `*` (any run) and `?` (one character),
/// case-insensitively.
pub fn pattern_matches(pattern: &str, model: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let m: Vec<char> = model.to_ascii_lowercase().chars().collect();
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut mi, mut star, mut mark) = (0, 0, None, 0);
    while mi < m.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == m[mi]) {
            pi += 1;
            mi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = mi;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            mi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether any pattern allows `model`; an empty list allows every model.
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| pattern_matches(p, model))
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    addr: IpAddr,
    /// Prefix length.
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` is allowed by `ranges`; an empty list allows every address.
pub fn ip_allowed(ranges: &[String], ip: Option<IpAddr>) -> bool {
    if ranges.is_empty() {
        return true;
    }
    let Some(ip) = ip else { return false };
    ranges
        .iter()
        .filter_map(|r| Cidr::parse(r))
        .any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_patterns_match_like_shell_globs() {
        let cases = [
            ("claude-sonnet-*", "claude-sonnet-4-6", true),
            ("claude-sonnet-*", "claude-opus-4-6", false),
            ("CLAUDE-*-4-?", "claude-haiku-4-5", true),
            ("*haiku*", "claude-haiku-4-5-20251001", true),
            ("claude-haiku-4-5", "claude-haiku-4-5-20251001", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ];
        for (p, m, want) in cases {
            assert_eq!(pattern_matches(p, m), want, "{p} ~ {m}");
        }
        assert!(model_allowed(&[], "anything"));
    }

    #[test]
    fn address_ranges_contain_what_they_should() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            ("10.0.0.0/8", "10.20.30.40", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("2001:db8::/32", "2001:db8:1::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
        ];
        for (r, a, want) in cases {
            assert_eq!(Cidr::parse(r).unwrap().contains(ip(a)), want, "{r} ∋ {a}");
        }
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert!(!ip_allowed(&["10.0.0.0/8".into()], None));
        assert!(ip_allowed(&[], None));
    }
}
