//! Outbound HTTP to addresses agentq does not control (web pages for `http_get`, webhook
//! receivers): the guard that keeps a caller from pointing the functions at the network they
//! run in (SSRF), and the webhook sender.
//!
//! A host is resolved here and every address checked **after** resolution; the connection
//! then goes to the checked address (no second lookup), so DNS rebinding cannot slip a
//! private address in between.

pub mod webhook;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Addresses on the public internet. Everything a worker could reach only from inside its
/// network is refused.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_public_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fd00:ec2::254 (metadata) among them
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated) and the like
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

/// Whether loopback addresses may be reached too (a receiver on 127.0.0.1 during local
/// development; never when deployed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Public,
    PublicAndLoopback,
}

/// Checks `url` (scheme, host, every address it resolves to) and returns the address to
/// connect to. `https_only` refuses plain http.
pub async fn vet(url: &reqwest::Url, reach: Reach, https_only: bool) -> Result<SocketAddr, String> {
    match url.scheme() {
        "https" => {}
        "http" if !https_only => {}
        other => {
            return Err(format!(
                "only {} URLs are allowed, not {other}",
                if https_only { "https" } else { "http and https" }
            ));
        }
    }
    let host = url.host_str().ok_or_else(|| "the URL has no host".to_owned())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            tokio::net::lookup_host((bare, port)).await.map_err(|e| format!("cannot resolve {host}: {e}"))?.collect()
        }
    };
    let allowed = |ip: IpAddr| is_public_address(ip) || (reach == Reach::PublicAndLoopback && ip.is_loopback());
    // Every address must be allowed: a name that also resolves inside could be made to.
    if let Some(bad) = addrs.iter().find(|a| !allowed(a.ip())) {
        return Err(format!("{host} resolves to {}, which is not a public address", bad.ip()));
    }
    addrs.into_iter().next().ok_or_else(|| format!("{host} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_reached_only_when_allowed_and_https_when_required() {
        let local = reqwest::Url::parse("http://127.0.0.1:9/hook").unwrap();
        assert!(vet(&local, Reach::Public, false).await.is_err());
        assert!(vet(&local, Reach::PublicAndLoopback, false).await.is_ok());
        assert!(vet(&local, Reach::PublicAndLoopback, true).await.unwrap_err().contains("https"));
        let metadata = reqwest::Url::parse("http://169.254.169.254/latest").unwrap();
        assert!(vet(&metadata, Reach::PublicAndLoopback, false).await.is_err());
    }
}
