//! What weir adds to and removes from traffic (contract §4).
//!
//! Hop-by-hop headers describe one connection, so they never cross the gateway in either
//! direction, nor do headers the sender listed in `Connection`, except that weir's own
//! headers are added after that removal and so cannot be stripped by a client naming them.
//! `X-Forwarded-*` from a client is believed only when the peer is a trusted proxy;
//! otherwise weir replaces it, so an upstream never sees a forged client address.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use weir_domain::net::Cidr;

use crate::pipeline::ConnInfo;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A gRPC client's deadline for the call.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// True for an HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header (WebSocket).
#[must_use]
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Removes hop-by-hop headers. For an upgrade, `Connection: upgrade` and `Upgrade` stay,
/// because the upstream must see them to agree to the switch. `TE: trailers` stays, because
/// gRPC needs it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds what is present; most messages carry nothing, or only
    // `Connection: keep-alive`, so only those few names are touched.
    let mut present: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    for name in headers.keys() {
        if n < present.len()
            && is_hop_by_hop(name)
            && !present[..n].iter().any(|p| p.as_ref() == Some(name))
        {
            present[n] = Some(name.clone());
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    // Headers the sender named in `Connection` are hop-by-hop too; plain `keep-alive` and
    // `close` name none, so the common case allocates nothing.
    // Every `Connection` line counts: `close` on one and a name on the next is still a name.
    if headers.get_all(header::CONNECTION).iter().any(|conn| {
        conn.as_bytes().contains(&b',') || !is_standard_connection_token(conn.as_bytes())
    }) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            // `Host` names the resource, not the connection: without it an upstream that
            // serves several hosts would answer for its default one.
            if !(keep_upgrade && name == header::UPGRADE) && name != header::HOST {
                headers.remove(name);
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in present.iter().take(n).flatten() {
        if keep_upgrade && (*name == header::UPGRADE || *name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
    )
}

fn is_standard_connection_token(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive")
        || v.eq_ignore_ascii_case(b"close")
        || v.eq_ignore_ascii_case(b"upgrade")
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
#[must_use]
pub fn client_ip(
    peer: IpAddr,
    peer_trusted: bool,
    headers: &HeaderMap,
    trusted: &[Cidr],
) -> IpAddr {
    if !peer_trusted {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(s) = value.to_str() else { return client };
        for entry in s.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !trusted.iter().any(|c| c.contains(ip)) {
                return client;
            }
        }
    }
    client
}

/// Sets `X-Forwarded-For`, `-Proto` and `-Host` for the upstream, from the connection's
/// facts (its peer address is rendered once per connection).
pub fn set_forwarded(headers: &mut HeaderMap, conn: &ConnInfo, host: Option<&HeaderValue>) {
    let (peer_value, peer_trusted) = (&conn.peer_value, conn.peer_trusted);
    let prior = if peer_trusted {
        headers.get(&X_FORWARDED_FOR)
    } else {
        None
    };
    let xff = match prior {
        Some(p) => {
            let mut v = Vec::with_capacity(p.len() + 2 + peer_value.len());
            v.extend_from_slice(p.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_value.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer_value.clone())
        }
        None => peer_value.clone(),
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Refuses a request whose host is missing or in doubt, so routing by host and the upstream
/// cannot disagree about it: an HTTP/1.1 request without `Host`, more than one `Host`, a
/// `Host` that is not a host (RFC 9112 §3.2), or a target with an authority (absolute form,
/// HTTP/2 `:authority`) naming another host than `Host` (RFC 9113 §8.3.1).
pub fn check_host(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return if version == http::Version::HTTP_11 {
            Err("an HTTP/1.1 request needs a Host header")
        } else {
            Ok(())
        };
    };
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    let Ok(authority) = http::uri::Authority::try_from(host.as_bytes()) else {
        return Err("the Host header is not a host");
    };
    if authority.as_str().contains('@') {
        return Err("the Host header is not a host");
    }
    if let Some(target) = uri.authority()
        && !(target.host().eq_ignore_ascii_case(authority.host())
            && target.port_u16() == authority.port_u16())
    {
        return Err("the request target names another host than the Host header");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-keep", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-keep"]);
    }

    #[test]
    fn upgrade_headers_survive_for_websocket() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forged_forwarded_for_is_replaced_unless_peer_is_trusted() {
        let conn = |trusted: bool| {
            let mut c = ConnInfo::new(([192, 0, 2, 1], 40000).into(), &[]);
            c.peer_trusted = trusted;
            c
        };
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-host", "evil")]);
        let untrusted = conn(false);
        set_forwarded(
            &mut h,
            &untrusted,
            Some(&HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        set_forwarded(&mut h, &conn(true), None);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[("x-forwarded-proto", "http")]);
        let tls = ConnInfo {
            tls: true,
            ..conn(false)
        };
        set_forwarded(&mut h, &tls, None);
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "a client cannot downgrade it"
        );
    }

    #[test]
    fn client_ip_walks_trusted_hops() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let h = map(&[("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, true, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, false, &h, &trusted), peer);
    }

    #[test]
    fn hosts_in_doubt_are_refused() {
        use http::Version;
        let check = |version, uri: &str, hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(header::HOST, HeaderValue::from_str(v).unwrap());
            }
            check_host(version, &uri.parse().unwrap(), &h)
        };
        assert!(check(Version::HTTP_11, "/", &["a.example"]).is_ok());
        assert!(check(Version::HTTP_11, "/", &["a.example:8080"]).is_ok());
        assert!(check(Version::HTTP_11, "http://A.example/x", &["a.example"]).is_ok());
        assert!(check(Version::HTTP_10, "/", &[]).is_ok());
        assert!(check(Version::HTTP_2, "https://a.example/", &[]).is_ok());
        assert!(check(Version::HTTP_11, "/", &[]).is_err());
        assert!(check(Version::HTTP_11, "http://a.example/", &[]).is_err());
        assert!(check(Version::HTTP_11, "/", &["a", "a"]).is_err());
        assert!(check(Version::HTTP_11, "/", &["a b"]).is_err());
        assert!(check(Version::HTTP_11, "/", &["u@a"]).is_err());
        assert!(check(Version::HTTP_11, "http://b.example/", &["a.example"]).is_err());
        assert!(check(Version::HTTP_11, "http://a.example:81/", &["a.example"]).is_err());
        assert!(check(Version::HTTP_2, "https://b.example/", &["a.example"]).is_err());
    }
}
