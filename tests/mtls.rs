//! mTLS: client certificates verified at the handshake (CA, validity, EKU, CRLs with live
//! reload and no resumption), and per-route allow-lists with identity forwarding.

mod common;

use std::sync::Arc;

use common::*;
use rcgen::{ExtendedKeyUsagePurpose, SanType};

fn mtls_config(up: std::net::SocketAddr, mode: &str) -> String {
    let listener = format!(
        "      client_auth:\n        mode: {mode}\n        ca: [clients/ca.pem]\n        crls: [clients/revoked.crl]\n"
    );
    basic_config(up, "", "")
        .replacen("          server_names: [localhost]\n", &format!("          server_names: [localhost]\n{listener}"), 1)
        .replace(
            "  - name: api\n    listener: public\n    path_prefix: /api\n    upstream: ehr\n",
            "  - name: api\n    listener: public\n    path_prefix: /api\n    upstream: ehr\n  - name: secure\n    listener: public\n    path_prefix: /secure\n    upstream: ehr\n    policies: [lab-only]\n  - name: any-client\n    listener: public\n    path_prefix: /any\n    upstream: ehr\n    policies: [any-client]\n",
        )
}

struct Setup {
    env: Env,
    ca: ClientCa,
    gw: ward::Gateway,
    state: Arc<UpstreamState>,
}

async fn setup(mode: &str) -> Setup {
    let env = Env::new();
    let ca = ClientCa::new("Hospital Client CA");
    env.write("clients/ca.pem", &ca.pem);
    env.write("clients/revoked.crl", &ca.crl(1, &[666]));
    env.write(
        "policies/lab-only.yaml",
        "mtls:\n  subjects: [lab-system]\n  uri_sans: ['spiffe://hospital.example/ns/lab/*']\n  issuers: ['CN=Hospital Client CA']\n  forward_header: x-client-identity\n  forward_field: cn\n",
    );
    env.write("policies/any-client.yaml", "mtls:\n  require: true\n");
    let (up, state) = upstream().await;
    let gw = env.start(&mtls_config(up, mode)).await;
    Setup { env, ca, gw, state }
}

fn lab_cert(ca: &ClientCa, serial: u64) -> ClientCert {
    ca.issue(
        "lab-system",
        ClientOpts {
            serial,
            sans: vec![SanType::URI(
                "spiffe://hospital.example/ns/lab/sa/analyzer"
                    .try_into()
                    .unwrap(),
            )],
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn optional_mode_routes_decide() {
    let s = setup("optional").await;
    let addr = s.gw.addr("public").unwrap();
    // No certificate: plain routes work, mTLS routes say why not.
    let resp = raw(&s.env.pki, addr, get_req("/api/x").as_bytes()).await;
    assert_eq!(status_of(&resp), 200);
    let resp = raw(&s.env.pki, addr, get_req("/secure/x").as_bytes()).await;
    assert_eq!(status_of(&resp), 401, "{resp}");
    assert_eq!(body_of(&resp)["error"]["code"], "client_cert_required");

    // The allowed client; its identity reaches the upstream, a forged header does not.
    let cfg = Arc::new(client_tls_with_cert(
        &s.env.pki,
        &lab_cert(&s.ca, 10),
        &[b"http/1.1"],
    ));
    let req = "GET /secure/x HTTP/1.1\r\nHost: localhost\r\nX-Client-Identity: admin\r\nConnection: close\r\n\r\n";
    let resp = request_with(cfg.clone(), addr, req).await.unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = s.state.last();
    let ids: Vec<_> = seen.headers.get_all("x-client-identity").iter().collect();
    assert_eq!(ids, vec!["lab-system"]);

    // A valid certificate with another name / SAN: 403.
    let other = s.ca.issue(
        "billing",
        ClientOpts {
            serial: 11,
            sans: vec![SanType::URI(
                "spiffe://hospital.example/ns/billing/sa/x"
                    .try_into()
                    .unwrap(),
            )],
            ..Default::default()
        },
    );
    let cfg = Arc::new(client_tls_with_cert(&s.env.pki, &other, &[b"http/1.1"]));
    let resp = request_with(cfg.clone(), addr, &get_req("/secure/x"))
        .await
        .unwrap();
    assert_eq!(status_of(&resp), 403);
    assert_eq!(body_of(&resp)["error"]["code"], "client_cert_denied");
    // ... but any verified client passes a route without allow-lists.
    let resp = request_with(cfg, addr, &get_req("/any/x")).await.unwrap();
    assert_eq!(status_of(&resp), 200);
}

#[tokio::test]
async fn handshake_refuses_bad_certificates() {
    let s = setup("optional").await;
    let addr = s.gw.addr("public").unwrap();
    let refused = |c: ClientCert| {
        let cfg = Arc::new(client_tls_with_cert(&s.env.pki, &c, &[b"http/1.1"]));
        async move { request_with(cfg, addr, &get_req("/api/x")).await }
    };
    // Signed by another CA.
    let rogue = ClientCa::new("Rogue CA");
    assert!(
        refused(rogue.issue("lab-system", ClientOpts::default()))
            .await
            .is_err(),
        "foreign CA accepted"
    );
    // Expired.
    assert!(
        refused(s.ca.issue(
            "lab-system",
            ClientOpts {
                serial: 20,
                expired: true,
                ..Default::default()
            }
        ))
        .await
        .is_err(),
        "expired accepted"
    );
    // Revoked in the CRL loaded at start.
    assert!(
        refused(lab_cert(&s.ca, 666)).await.is_err(),
        "revoked accepted"
    );
    // An EKU without clientAuth (serverAuth only).
    let server_only = s.ca.issue(
        "lab-system",
        ClientOpts {
            serial: 21,
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
            ..Default::default()
        },
    );
    assert!(
        refused(server_only).await.is_err(),
        "serverAuth-only certificate accepted"
    );
    // No EKU extension at all passes the handshake but not an mtls route.
    let no_eku = s.ca.issue(
        "lab-system",
        ClientOpts {
            serial: 22,
            eku: vec![],
            ..Default::default()
        },
    );
    let cfg = Arc::new(client_tls_with_cert(&s.env.pki, &no_eku, &[b"http/1.1"]));
    let resp = request_with(cfg, addr, &get_req("/any/x")).await.unwrap();
    assert_eq!(status_of(&resp), 403);
    assert_eq!(body_of(&resp)["error"]["code"], "client_cert_eku");
    assert_eq!(s.state.count(), 0);
    let (_, m) = admin_get(&s.gw, "/metrics").await;
    assert!(
        m.contains(
            "ward_tls_handshake_failures_total{listener=\"public\",reason=\"bad_certificate\"}"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn required_mode_refuses_clients_without_certificates() {
    let s = setup("required").await;
    let addr = s.gw.addr("public").unwrap();
    let cfg = Arc::new(client_tls(&s.env.pki, &[b"http/1.1"]));
    assert!(request_with(cfg, addr, &get_req("/api/x")).await.is_err());
    let cfg = Arc::new(client_tls_with_cert(
        &s.env.pki,
        &lab_cert(&s.ca, 30),
        &[b"http/1.1"],
    ));
    assert_eq!(
        status_of(&request_with(cfg, addr, &get_req("/api/x")).await.unwrap()),
        200
    );
}

#[tokio::test]
async fn crl_reload_revokes_without_restart_and_without_resumption() {
    let s = setup("optional").await;
    let addr = s.gw.addr("public").unwrap();
    // One client config for every connection: rustls would resume its session if the
    // server allowed it.
    let cfg = Arc::new(client_tls_with_cert(
        &s.env.pki,
        &lab_cert(&s.ca, 40),
        &[b"http/1.1"],
    ));
    for _ in 0..2 {
        assert_eq!(
            status_of(
                &request_with(cfg.clone(), addr, &get_req("/secure/x"))
                    .await
                    .unwrap()
            ),
            200
        );
    }
    // Revoke serial 40 and reload (what SIGHUP does).
    s.env.write("clients/revoked.crl", &s.ca.crl(2, &[666, 40]));
    assert!(s.gw.reload_tls().await.is_empty());
    assert!(
        request_with(cfg.clone(), addr, &get_req("/secure/x"))
            .await
            .is_err(),
        "revoked certificate still accepted (resumption?)"
    );
    // Another client is unaffected.
    let cfg2 = Arc::new(client_tls_with_cert(
        &s.env.pki,
        &lab_cert(&s.ca, 41),
        &[b"http/1.1"],
    ));
    assert_eq!(
        status_of(
            &request_with(cfg2.clone(), addr, &get_req("/secure/x"))
                .await
                .unwrap()
        ),
        200
    );
    // A broken CRL file keeps the last good configuration.
    s.env.write("clients/revoked.crl", "not a crl");
    assert!(!s.gw.reload_tls().await.is_empty());
    assert_eq!(
        status_of(
            &request_with(cfg2.clone(), addr, &get_req("/secure/x"))
                .await
                .unwrap()
        ),
        200
    );
    assert!(request_with(cfg.clone(), addr, &get_req("/secure/x"))
        .await
        .is_err());

    // The file watcher picks up a change by itself: revoke 41 and wait (bounded) for it.
    s.env
        .write("clients/revoked.crl", &s.ca.crl(3, &[666, 40, 41]));
    let mut revoked = false;
    for _ in 0..600 {
        if request_with(cfg2.clone(), addr, &get_req("/secure/x"))
            .await
            .is_err()
        {
            revoked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(revoked, "CRL change on disk was not picked up");
    let (_, m) = admin_get(&s.gw, "/metrics").await;
    // At least the explicit broken reload; the file watcher may have seen the same broken
    // file too, so an exact count would race with it.
    let errors = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("ward_tls_reloads_total{listener=\"public\",result=\"error\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{m}");
    assert!(m.contains("ward_certificate_expiry_days{file=\"clients/ca.pem\",kind=\"client_ca\",listener=\"public\"}"), "{m}");
}

#[tokio::test]
async fn connections_verified_before_a_reload_are_not_reused() {
    let s = setup("optional").await;
    for h2 in [false, true] {
        let c = client_with_cert(&s.env.pki, &lab_cert(&s.ca, 50), h2);
        let url_ = url(&s.gw, "/secure/x");
        assert_eq!(send(&c, get(&url_)).await.status, 200, "h2={h2}");
        // The CRL now revokes 50; the kept-alive connection must not carry on.
        s.env
            .write("clients/revoked.crl", &s.ca.crl(10 + h2 as u64, &[666, 50]));
        assert!(s.gw.reload_tls().await.is_empty());
        let r = send(&c, get(&url_)).await;
        assert_eq!(r.status, 421, "h2={h2}: stale connection reused");
        assert_eq!(r.code(), "connection_stale");
        // Retrying opens a new connection, whose handshake meets the new CRL.
        assert!(
            c.request(get(&url_)).await.is_err(),
            "h2={h2}: revoked certificate accepted"
        );
        s.env
            .write("clients/revoked.crl", &s.ca.crl(20 + h2 as u64, &[666]));
        assert!(s.gw.reload_tls().await.is_empty());
    }
}

#[tokio::test]
async fn policy_headers_cannot_be_injected_through_other_routes() {
    let s = setup("optional").await;
    // /api has no mtls policy, but x-client-identity is a gateway-owned header everywhere.
    let req = "GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Client-Identity: lab-system\r\nX_Client_Identity: lab-system\r\nConnection: close\r\n\r\n";
    let resp = raw(&s.env.pki, s.gw.addr("public").unwrap(), req.as_bytes()).await;
    assert_eq!(status_of(&resp), 200);
    let seen = s.state.last();
    assert!(!seen.headers.contains_key("x-client-identity"));
    assert!(!seen.headers.contains_key("x_client_identity"));
}

#[tokio::test]
async fn an_expired_crl_fails_closed() {
    let s = setup("optional").await;
    let addr = s.gw.addr("public").unwrap();
    let cfg = Arc::new(client_tls_with_cert(
        &s.env.pki,
        &lab_cert(&s.ca, 60),
        &[b"http/1.1"],
    ));
    assert_eq!(
        status_of(
            &request_with(cfg.clone(), addr, &get_req("/secure/x"))
                .await
                .unwrap()
        ),
        200
    );
    s.env.write("clients/revoked.crl", &s.ca.expired_crl(5));
    assert!(s.gw.reload_tls().await.is_empty());
    assert!(
        request_with(cfg, addr, &get_req("/secure/x"))
            .await
            .is_err(),
        "a stale CRL was trusted"
    );
}
