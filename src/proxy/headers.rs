//! Header hygiene at the proxy step: what the client may not pass to the upstream, and the
//! headers only the gateway writes (`X-Forwarded-*`, `Forwarded`, `X-Request-Id`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::context::RequestContext;

pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

pub fn is_trusted(peer: IpAddr, nets: &[IpNet]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&peer))
}

/// The client's address for limits and logs. Only a trusted proxy's `X-Forwarded-For` is
/// believed, and only as far as the chain stays trusted: walking from the right (the
/// entry our peer appended), the first address outside the trusted networks is the
/// client. Anything a client could have written further left is ignored. An entry that
/// does not parse stops the walk at the last trusted hop.
pub fn client_ip(peer: IpAddr, trusted_peer: bool, h: &HeaderMap, nets: &[IpNet]) -> IpAddr {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let peer = unmap(peer);
    if !trusted_peer {
        return peer;
    }
    let mut last = peer;
    for value in h.get_all("x-forwarded-for").iter().rev() {
        let Ok(v) = value.to_str() else { return last };
        for entry in v.rsplit(',') {
            let Some(ip) = parse_xff_entry(entry.trim()) else {
                return last;
            };
            let ip = unmap(ip);
            if !is_trusted(ip, nets) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones that some servers still honour.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers that make frameworks reinterpret the method: a GET that an EHR executes as a
/// DELETE would bypass every method rule.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers some frameworks and servers treat as authoritative for the request path, the
/// client address or the scheme/host. Ward sets the standard forwarding headers itself;
/// these variants never pass (a client could otherwise pick the path an EHR serves, or the
/// IP it logs).
const SPOOFABLE: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "x-originating-ip",
    "cf-connecting-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "front-end-https",
    "x-url-scheme",
];

/// Headers only the gateway may set for the upstream.
const GATEWAY_SET: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "x-real-ip",
];

/// Remove every header for which `doomed` holds, in one pass over the map. (Removing a
/// fixed list name by name parses and hashes each name on every request; a pass over the
/// handful of headers a request carries is cheaper.)
fn strip(h: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let mut names: Vec<HeaderName> = Vec::new();
    for name in h.keys() {
        if doomed(name.as_str()) {
            names.push(name.clone());
        }
    }
    for n in names {
        h.remove(n);
    }
}

/// Lower-cased header names listed in `Connection` (they are hop-by-hop too).
fn connection_listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Strip from a client request everything the upstream must not see. The client's
/// forwarding headers are read first, and only kept when the peer is a trusted proxy.
pub fn sanitize_request(h: &mut HeaderMap, trusted: bool) -> ClientForwarded {
    let listed = connection_listed(h);
    let kept = if trusted {
        ClientForwarded {
            xff: join_all(h, "x-forwarded-for"),
            proto: h.get("x-forwarded-proto").cloned(),
            host: h.get("x-forwarded-host").cloned(),
            forwarded: join_all(h, "forwarded"),
        }
    } else {
        ClientForwarded::default()
    };
    strip(h, |n| {
        HOP_BY_HOP.contains(&n)
            || METHOD_OVERRIDES.contains(&n)
            || GATEWAY_SET.contains(&n)
            || SPOOFABLE.contains(&n)
            // Our own namespace: a client must never be able to speak for the gateway.
            || n.starts_with("x-ward-")
            // CGI-style servers read `x_ward_id` as `X-Ward-Id`: names with `_` would dodge
            // every rule above (nginx drops them by default for the same reason).
            || n.contains('_')
            || listed.iter().any(|l| l == n)
    });
    kept
}

fn join_all(h: &HeaderMap, name: &str) -> Option<String> {
    let parts: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A header name a policy may set for the upstream: valid, and not one whose meaning the
/// proxy owns.
pub fn check_forward_header(h: &str) -> Result<(), String> {
    let name = HeaderName::try_from(h).map_err(|_| format!("`{h}` is not a valid header name"))?;
    if is_gateway_managed(name.as_str()) {
        return Err(format!("`{h}` is managed by the gateway itself"));
    }
    Ok(())
}

/// Headers whose meaning the gateway owns: a policy may not choose one of these as the
/// name it forwards an identity or claim in.
pub fn is_gateway_managed(name: &str) -> bool {
    const OWNED: &[&str] = &[
        "host",
        "content-length",
        "authorization",
        "cookie",
        "expect",
    ];
    HOP_BY_HOP.contains(&name)
        || METHOD_OVERRIDES.contains(&name)
        || GATEWAY_SET.contains(&name)
        || SPOOFABLE.contains(&name)
        || OWNED.contains(&name)
        || name.contains('_')
}

/// Forwarding headers the client sent, used only if the peer is trusted.
#[derive(Debug, Default)]
pub struct ClientForwarded {
    xff: Option<String>,
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
    forwarded: Option<String>,
}

/// Write the gateway's forwarding headers, once, after sanitising.
pub fn set_forwarding(h: &mut HeaderMap, ctx: &RequestContext, client: ClientForwarded) {
    let peer_ip = ctx.peer.ip();
    let peer = peer_ip.to_string();
    let proto = if ctx.tls { "https" } else { "http" };
    let trusted = ctx.trusted_peer;
    match (trusted, client.xff) {
        (true, Some(mut prev)) => {
            prev.push_str(", ");
            prev.push_str(&peer);
            insert(h, X_FORWARDED_FOR, &prev);
        }
        _ => insert(h, X_FORWARDED_FOR, &peer),
    }
    match (trusted, client.proto) {
        (true, Some(v)) => {
            h.insert(X_FORWARDED_PROTO, v);
        }
        _ => {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
    }
    match (trusted, client.host) {
        (true, Some(v)) => {
            h.insert(X_FORWARDED_HOST, v);
        }
        _ => insert(h, X_FORWARDED_HOST, &ctx.host),
    }
    // RFC 7239: for=<node>;proto=<scheme>;host=<host>, IPv6 nodes quoted and bracketed.
    let mut fwd = String::with_capacity(64);
    if let (true, Some(prev)) = (trusted, client.forwarded) {
        fwd.push_str(&prev);
        fwd.push_str(", ");
    }
    fwd.push_str("for=");
    if peer_ip.is_ipv6() {
        fwd.push_str("\"[");
        fwd.push_str(&peer);
        fwd.push_str("]\"");
    } else {
        fwd.push_str(&peer);
    }
    fwd.push_str(";proto=");
    fwd.push_str(proto);
    fwd.push_str(";host=");
    push_quoted_if_needed(&mut fwd, &ctx.host);
    insert(h, FORWARDED, &fwd);
    h.insert(X_REQUEST_ID, ctx.request_id.clone());
}

fn push_quoted_if_needed(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        out.push_str(s);
    } else {
        out.push('"');
        out.extend(s.chars().filter(|c| *c != '"' && *c != '\\'));
        out.push('"');
    }
}

// Names as constants: a `&str` name is parsed and checked on every insert.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn insert(h: &mut HeaderMap, name: HeaderName, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}

/// Strip hop-by-hop headers and fingerprinting headers from an upstream response; a
/// legacy EHR's `Server: ...` banner tells an attacker which CVEs to try.
pub fn sanitize_response(h: &mut HeaderMap) {
    let listed = connection_listed(h);
    strip(h, |n| {
        HOP_BY_HOP.contains(&n) || FINGERPRINTS.contains(&n) || listed.iter().any(|l| l == n)
    });
}

const FINGERPRINTS: &[&str] = &[
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ctx(trusted: bool) -> RequestContext {
        RequestContext {
            request_id: HeaderValue::from_static("rid"),
            peer: "10.1.2.3:5555".parse().unwrap(),
            listener: Arc::from("l"),
            tls: true,
            trusted_peer: trusted,
            client_ip: "10.1.2.3".parse().unwrap(),
            host: "ehr.example:8443".into(),
        }
    }

    #[test]
    fn client_ip_believes_only_the_trusted_part_of_the_chain() {
        let nets = vec![parse_cidr("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        // Untrusted peer: its own address, whatever it claims.
        let untrusted: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(untrusted, false, &h, &nets), untrusted);
        // Trusted peer: walk right to left past trusted hops; the spoofed 6.6.6.6 that
        // the client wrote further left is never reached.
        assert_eq!(
            client_ip(peer, true, &h, &nets),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Ports and brackets are tolerated; garbage stops at the last trusted hop.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(
            client_ip(peer, true, &h, &nets),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, bogus, 10.0.0.9"),
        );
        assert_eq!(
            client_ip(peer, true, &h, &nets),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        // No header from a trusted peer: the peer.
        assert_eq!(client_ip(peer, true, &HeaderMap::new(), &nets), peer);
        // IPv4-mapped IPv6 peers are their IPv4 address.
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, false, &HeaderMap::new(), &nets),
            untrusted
        );
    }

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-ward-identity", HeaderValue::from_static("admin"));
        h.insert("x-original-url", HeaderValue::from_static("/admin/purge"));
        h.insert("true-client-ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x_ward_identity", HeaderValue::from_static("admin"));
        h.insert("accept", HeaderValue::from_static("application/fhir+json"));
        h
    }

    #[test]
    fn untrusted_client_headers_are_replaced() {
        let mut h = client_headers();
        let kept = sanitize_request(&mut h, false);
        set_forwarding(&mut h, &ctx(false), kept);
        for gone in [
            "connection",
            "x-secret",
            "upgrade",
            "x-http-method-override",
            "x-ward-identity",
            "x-original-url",
            "true-client-ip",
            "x_ward_identity",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=10.1.2.3;proto=https;host=\"ehr.example:8443\""
        );
        assert_eq!(h["accept"], "application/fhir+json");
    }

    #[test]
    fn trusted_proxy_chain_is_extended() {
        let mut h = client_headers();
        let kept = sanitize_request(&mut h, true);
        set_forwarding(&mut h, &ctx(true), kept);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert!(h["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=6.6.6.6, for=10.1.2.3"));
    }

    #[test]
    fn response_hygiene() {
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("LegacyEHR/1.0"));
        h.insert("connection", HeaderValue::from_static("x-internal"));
        h.insert("x-internal", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/fhir+json"),
        );
        sanitize_response(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn cidrs() {
        let nets = vec![
            parse_cidr("10.0.0.0/8").unwrap(),
            parse_cidr("::1").unwrap(),
        ];
        assert!(is_trusted("10.9.9.9".parse().unwrap(), &nets));
        assert!(is_trusted("::ffff:10.0.0.1".parse().unwrap(), &nets));
        assert!(!is_trusted("11.0.0.1".parse().unwrap(), &nets));
        assert!(parse_cidr("nonsense").is_none());
    }
}
