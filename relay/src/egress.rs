//! Where upstream traffic may go. An account's base URL is operator input, and a relay
//! sits inside someone's network: link-local and metadata addresses, private ranges
//! and loopback are refused unless the operator allows them (`UPSTREAM_ALLOW_PRIVATE`,
//! or a host allow-list). Literal addresses in any spelling (`0x7f000001`, `[::1]`) are
//! checked when an account is saved; names are checked after DNS resolution, on every
//! connection, by [`GuardedResolver`]. Upstream redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// What the operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Allow private, loopback and link-local destinations (tests, internal gateways).
    pub allow_private: bool,
    /// Hosts (names or literal addresses) allowed whatever they resolve to.
    pub allow_hosts: Vec<String>,
}

/// Why an address is not a public destination, if it is not.
pub fn restricted(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => restricted_v4(v4),
            None => restricted_v6(v6),
        },
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Some("private")
    } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || o[0] == 0 {
        Some("not routable")
    } else {
        None
    }
}

fn restricted_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("private (unique local, incl. cloud metadata)")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not routable")
    } else {
        None
    }
}

impl EgressPolicy {
    fn host_allowed(&self, host: &str) -> bool {
        self.allow_private
            || self
                .allow_hosts
                .iter()
                .any(|h| h.trim().eq_ignore_ascii_case(host.trim_matches(['[', ']'])))
    }

    /// Checks a URL an account will send traffic to: http(s), a host, and, when the
    /// host is a literal address, a public one (or allowed).
    pub fn check_url(&self, what: &str, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|_| format!("{what} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{what} must start with http:// or https://"));
        }
        let host = parsed.host().ok_or_else(|| format!("{what} has no host"))?;
        let ip = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        let host_text = parsed.host_str().unwrap_or_default();
        if let Some(ip) = ip {
            if let Some(why) = restricted(ip) {
                if !self.host_allowed(host_text) && !self.host_allowed(&ip.to_string()) {
                    return Err(format!(
                        "{what} points at a {why} address ({ip}); set UPSTREAM_ALLOW_PRIVATE=true \
                         or list the host in UPSTREAM_ALLOW_HOSTS to allow it"
                    ));
                }
            }
        } else if host_text.eq_ignore_ascii_case("localhost") && !self.host_allowed(host_text) {
            return Err(format!(
                "{what} points at localhost; set UPSTREAM_ALLOW_PRIVATE=true to allow it"
            ));
        }
        Ok(())
    }
}

/// DNS for upstream clients that drops restricted addresses (unless allowed), so a
/// public name that resolves to a private address is refused at connect time.
pub struct GuardedResolver {
    /// The policy.
    pub policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.host_allowed(&host);
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| allowed || restricted(a.ip()).is_none())
                .collect();
            if kept.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{host} resolves only to private or reserved addresses (UPSTREAM_ALLOW_PRIVATE)"
                )
                .into();
                return Err(e);
            }
            let it: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(it)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_metadata_and_loopback_urls_are_refused_unless_allowed() {
        let strict = EgressPolicy::default();
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1:2375",
            "http://0x7f000001",
            "http://127.1/",
            "http://2130706433/",
            "http://[::1]:8080",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:192.168.1.1]/",
            "http://localhost:9",
            "http://100.64.0.1/",
            "ftp://example.com",
            "not a url",
        ] {
            assert!(strict.check_url("request_url", bad).is_err(), "{bad}");
        }
        for good in [
            "https://api.anthropic.com",
            "http://203.0.113.7:8080/v1",
            "https://[2001:db8::1]/",
        ] {
            assert!(strict.check_url("request_url", good).is_ok(), "{good}");
        }
        let open = EgressPolicy {
            allow_private: true,
            ..EgressPolicy::default()
        };
        assert!(open.check_url("request_url", "http://127.0.0.1:9").is_ok());
        let listed = EgressPolicy {
            allow_private: false,
            allow_hosts: vec!["10.0.0.1".into()],
        };
        assert!(listed
            .check_url("request_url", "http://10.0.0.1:2375")
            .is_ok());
        assert!(listed.check_url("request_url", "http://10.0.0.2").is_err());
    }
}
