//! Whose request is it: the client address the per-IP limit is charged to.
//!
//! `X-Forwarded-For` is believed only when the connecting peer is a trusted proxy, and then
//! only up to the rightmost hop that is not itself trusted (anything left of it could have been
//! written by the client). IPv6 clients are grouped per /64, the block one host usually owns.

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr};

/// Parsed once: looking a header up by a `&str` parses the name on every call.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub struct ClientAddress {
    trusted: Vec<IpNet>,
}

impl ClientAddress {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        ClientAddress { trusted }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that came from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        // Header lines are read last to first and each line right to left: the nearest hop first.
        for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
                return client;
            };
            for hop in line.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) if self.is_trusted(ip) => client = ip,
                    Ok(ip) => return ip,
                    Err(_) => return client,
                }
            }
        }
        client
    }
}

/// The key the per-IP limit is charged under: the address itself, or its /64 for IPv6.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in xff {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let resolver = ClientAddress::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert_eq!(resolver.resolve(ip("10.1.1.1"), &headers(&["1.2.3.4"])), ip("10.1.1.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let resolver =
            ClientAddress::new(vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]);
        let h = headers(&["6.6.6.6, 1.2.3.4", "10.0.0.5"]);
        assert_eq!(resolver.resolve(ip("127.0.0.1"), &h), ip("1.2.3.4"));
        assert_eq!(resolver.resolve(ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"));
        assert_eq!(resolver.resolve(ip("127.0.0.1"), &headers(&["junk"])), ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(limit_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }
}
