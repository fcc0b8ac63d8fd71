//! Who the client is, by address: the TCP peer, or behind trusted proxies the rightmost address
//! of `X-Forwarded-For` that is not a trusted proxy. Anything left of that address was written
//! by the client itself and could be anything, so it is never believed.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` entries are believed (`TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma (or space) separated IPs and CIDRs: `10.0.0.0/8, 192.168.1.7, fd00::/8`.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        list.split([',', ' '])
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("{entry:?} is neither an IP address nor a CIDR"))
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` carrying these `X-Forwarded-For` header values (in
    /// the order received). Walks the entries from the right while they are trusted proxies;
    /// the first one that is not is the client. An entry that is not an address ends the walk at
    /// the hop that wrote it; when every entry is a trusted proxy, the leftmost is the client.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let entries = forwarded_for.rev().flat_map(|value| value.rsplit(','));
        for entry in entries {
            let Some(hop) = parse_entry(entry) else {
                return client;
            };
            client = hop;
            if !self.trusts(hop) {
                return hop;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`) or in quotes.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()?;
    Some(ip.to_canonical())
}

/// The key the per-IP limits count under: an IPv4 address, or the /64 of an IPv6 one (a single
/// subscriber usually gets a whole /64, so per-address limits would not hold anyone back).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let proxies = TrustedProxies::parse("").unwrap();
        assert!(proxies.is_empty());
        let client = proxies.client_ip(ip("203.0.113.9"), ["198.51.100.1"].into_iter());
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_entry_is_the_client() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        // The client forged the first entry; the trusted proxies appended the rest.
        let header = ["1.1.1.1, 203.0.113.9, 10.1.2.3"];
        let client = proxies.client_ip(ip("192.168.1.7"), header.into_iter());
        assert_eq!(client, ip("203.0.113.9"));
        // Several header lines are one list, in order.
        let lines = ["1.1.1.1", "203.0.113.9", "10.1.2.3"];
        let client = proxies.client_ip(ip("10.9.9.9"), lines.into_iter());
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_even_with_a_header() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let client = proxies.client_ip(ip("203.0.113.9"), ["10.1.1.1"].into_iter());
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn ports_quotes_and_mapped_addresses_are_read_and_garbage_stops_at_its_writer() {
        let proxies = TrustedProxies::parse("10.0.0.1").unwrap();
        let peer = ip("10.0.0.1");
        let one = |value: &'static str| proxies.client_ip(peer, [value].into_iter());
        assert_eq!(one("203.0.113.9:4711"), ip("203.0.113.9"));
        assert_eq!(one("\"[2001:db8::1]:443\""), ip("2001:db8::1"));
        assert_eq!(one("::ffff:203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(
            one("unknown"),
            peer,
            "the proxy that wrote garbage answers for it"
        );
        assert_eq!(one(""), peer);
        assert_eq!(one("10.0.0.1"), peer, "all trusted: the leftmost");
        assert_eq!(
            proxies.client_ip(ip("::ffff:10.0.0.1"), ["203.0.113.9"].into_iter()),
            ip("203.0.113.9"),
            "a mapped peer address is the IPv4 one"
        );
    }

    #[test]
    fn bad_entries_fail_the_parse() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert!(TrustedProxies::parse("::1, fd00::/8 127.0.0.1").is_ok());
    }

    #[test]
    fn ipv6_clients_are_limited_per_64_and_ipv4_per_address() {
        assert_eq!(limit_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(limit_key(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
    }
}
