//! Which browser origins may open a WebSocket (and call the REST API, for CORS): exact origins
//! or one leading wildcard label. With no list, only the request's own host: a page served by
//! this server may connect, a page of another site may not (cross-site WebSocket hijacking).

/// One allowed origin: `scheme://host[:port]`, the host optionally `*.` + a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    /// With a wildcard: the domain after `*.` (matches any subdomain of it, not itself).
    host: String,
    wildcard: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    patterns: Vec<Pattern>,
}

impl Origins {
    /// Parses a comma-separated list; empty means "the request's own host only".
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut patterns = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (scheme, host) = raw
                .split_once("://")
                .filter(|(scheme, host)| {
                    matches!(*scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("{raw:?} is not an origin like https://chat.example.com")
                })?;
            let (host, wildcard) = match host.strip_prefix("*.") {
                Some(domain) if !domain.contains('*') => (domain, true),
                None if !host.contains('*') => (host, false),
                _ => anyhow::bail!("{raw:?}: only one leading `*.` label is allowed"),
            };
            patterns.push(Pattern {
                scheme: scheme.to_owned(),
                host: host.to_ascii_lowercase(),
                wildcard,
            });
        }
        Ok(Self { patterns })
    }

    /// Whether a request with this `Origin` header may go on. `host` is the request's `Host`
    /// header (used when no list is configured). A request without `Origin` is not a browser's
    /// cross-origin request and goes on.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let Some((scheme, origin_host)) = origin.split_once("://") else {
            return false;
        };
        let origin_host = origin_host.to_ascii_lowercase();
        if self.patterns.is_empty() {
            return host.is_some_and(|host| host.eq_ignore_ascii_case(&origin_host));
        }
        self.patterns.iter().any(|p| {
            p.scheme == scheme
                && if p.wildcard {
                    origin_host
                        .strip_suffix(p.host.as_str())
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
                } else {
                    origin_host == p.host
                }
        })
    }

    /// Whether any origin is configured (CORS is off without one).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_list_only_the_own_host_may_connect() {
        let origins = Origins::parse("").unwrap();
        assert!(
            origins.allows(None, Some("chat.example.com")),
            "no Origin: not a browser"
        );
        assert!(origins.allows(Some("https://chat.example.com"), Some("chat.example.com")));
        assert!(origins.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(!origins.allows(Some("https://evil.example"), Some("chat.example.com")));
        assert!(!origins.allows(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080")));
        assert!(!origins.allows(Some("null"), Some("chat.example.com")));
    }

    #[test]
    fn exact_and_wildcard_origins() {
        let origins = Origins::parse("https://chat.example.com, https://*.example.org").unwrap();
        assert!(origins.allows(Some("https://chat.example.com"), Some("other")));
        assert!(
            !origins.allows(Some("http://chat.example.com"), Some("other")),
            "scheme"
        );
        assert!(origins.allows(Some("https://a.example.org"), None));
        assert!(origins.allows(Some("https://a.b.example.org"), None));
        assert!(
            !origins.allows(Some("https://example.org"), None),
            "the bare domain"
        );
        assert!(
            !origins.allows(Some("https://evilexample.org"), None),
            "a label boundary"
        );
        assert!(!origins.allows(Some("https://example.org.evil.net"), None));
    }

    #[test]
    fn malformed_lists_are_refused() {
        for bad in [
            "chat.example.com",
            "ftp://x",
            "https://a/b",
            "https://*.*.x",
            "https://a*.x",
        ] {
            assert!(Origins::parse(bad).is_err(), "{bad}");
        }
    }
}
