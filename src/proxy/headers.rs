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

/// Headers only the gateway may set for the upstream.
const GATEWAY_SET: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "x-real-ip",
];

fn remove_connection_listed(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
}

fn remove_hop_by_hop(h: &mut HeaderMap) {
    remove_connection_listed(h);
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// Strip from a client request everything the upstream must not see, keeping the
/// client's forwarding headers aside when the peer is a trusted proxy.
pub fn sanitize_request(h: &mut HeaderMap) -> ClientForwarded {
    remove_hop_by_hop(h);
    for n in METHOD_OVERRIDES {
        h.remove(*n);
    }
    let kept = ClientForwarded {
        xff: join_all(h, "x-forwarded-for"),
        proto: h.get("x-forwarded-proto").cloned(),
        host: h.get("x-forwarded-host").cloned(),
        forwarded: join_all(h, "forwarded"),
    };
    for n in GATEWAY_SET {
        h.remove(*n);
    }
    // Our own namespace: a client must never be able to speak for the gateway.
    let ours: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-ward-"))
        .cloned()
        .collect();
    for k in ours {
        h.remove(k);
    }
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
    let xff = match (trusted, client.xff) {
        (true, Some(prev)) => format!("{prev}, {peer}"),
        _ => peer.clone(),
    };
    insert(h, "x-forwarded-for", &xff);
    match (trusted, client.proto) {
        (true, Some(v)) => {
            h.insert("x-forwarded-proto", v);
        }
        _ => insert(h, "x-forwarded-proto", proto),
    }
    match (trusted, client.host) {
        (true, Some(v)) => {
            h.insert("x-forwarded-host", v);
        }
        _ => insert(h, "x-forwarded-host", &ctx.host),
    }
    let for_node = match peer_ip {
        IpAddr::V6(_) => format!("\"[{peer}]\""),
        IpAddr::V4(_) => peer,
    };
    let host_q = quote_if_needed(&ctx.host);
    let this_hop = format!("for={for_node};proto={proto};host={host_q}");
    let fwd = match (trusted, client.forwarded) {
        (true, Some(prev)) => format!("{prev}, {this_hop}"),
        _ => this_hop,
    };
    insert(h, "forwarded", &fwd);
    h.insert("x-request-id", ctx.request_id.clone());
}

fn quote_if_needed(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace(['"', '\\'], ""))
    }
}

fn insert(h: &mut HeaderMap, name: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(name, v);
    }
}

/// Strip hop-by-hop headers and fingerprinting headers from an upstream response; a
/// legacy EHR's `Server: ...` banner tells an attacker which CVEs to try.
pub fn sanitize_response(h: &mut HeaderMap) {
    remove_hop_by_hop(h);
    h.remove(header::SERVER);
    h.remove("x-powered-by");
    h.remove("x-aspnet-version");
    h.remove("x-aspnetmvc-version");
}

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
            host: "ehr.example:8443".into(),
        }
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
        h.insert("accept", HeaderValue::from_static("application/fhir+json"));
        h
    }

    #[test]
    fn untrusted_client_headers_are_replaced() {
        let mut h = client_headers();
        let kept = sanitize_request(&mut h);
        set_forwarding(&mut h, &ctx(false), kept);
        for gone in [
            "connection",
            "x-secret",
            "upgrade",
            "x-http-method-override",
            "x-ward-identity",
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
        let kept = sanitize_request(&mut h);
        set_forwarding(&mut h, &ctx(true), kept);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert!(h["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=6.6.6.6, for=10.1.2.3"));
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
