//! TLS policy of the public listeners: versions, suites, ALPN, SNI, handshake deadline,
//! and explicit-only plaintext.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A hand-built ClientHello, so we can offer what no modern TLS library will.
fn client_hello(legacy_version: u16, suites: &[u16]) -> Vec<u8> {
    let mut ext = Vec::new();
    let push_ext = |ext: &mut Vec<u8>, ty: u16, body: &[u8]| {
        ext.extend_from_slice(&ty.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    let name = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    push_ext(&mut ext, 0x0000, &sni);
    push_ext(&mut ext, 0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    push_ext(&mut ext, 0x000b, &[0x01, 0x00]);
    push_ext(
        &mut ext,
        0x000d,
        &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );

    let mut body = Vec::new();
    body.extend_from_slice(&legacy_version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Send a ClientHello and return the alert description the server answers with.
async fn alert_for(addr: std::net::SocketAddr, hello: &[u8]) -> Option<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(hello).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    // Record: type(1)=0x15 alert, version(2), length(2), level(1), description(1).
    (buf.len() >= 7 && buf[0] == 0x15).then(|| buf[6])
}

#[tokio::test]
async fn old_versions_and_cbc_suites_refused() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();

    // TLS 1.1 with its usual suites: protocol_version alert (70).
    let tls11 = client_hello(0x0302, &[0xc013, 0xc014, 0x002f, 0x0035]);
    assert_eq!(alert_for(addr, &tls11).await, Some(70));
    // TLS 1.0 likewise.
    let tls10 = client_hello(0x0301, &[0xc013, 0x002f]);
    assert_eq!(alert_for(addr, &tls10).await, Some(70));
    // TLS 1.2 offering only CBC suites (ECDHE-RSA/ECDSA-AES128-CBC-SHA, RSA-AES128-CBC):
    // handshake_failure (40).
    let cbc = client_hello(0x0303, &[0xc013, 0xc009, 0x002f, 0x003c]);
    assert_eq!(alert_for(addr, &cbc).await, Some(40));
    // Non-ECDHE AEAD (static RSA key exchange, TLS_RSA_WITH_AES_128_GCM_SHA256): refused.
    let rsa_kx = client_hello(0x0303, &[0x009c]);
    assert_eq!(alert_for(addr, &rsa_kx).await, Some(40));

    let (_, m) = admin_get(&gw, "/metrics").await;
    assert!(
        m.contains(
            "ward_tls_handshake_failures_total{listener=\"public\",reason=\"incompatible\"} 4"
        ),
        "{m}"
    );
    assert_eq!(state.count(), 0);
}

#[tokio::test]
async fn tls12_and_tls13_with_aead_and_alpn_work() {
    let env = Env::new();
    let (up, _state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();
    for (versions, want) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let cfg = client_tls_versions(&env.pki, &[alpn], versions);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.expect("handshake");
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.protocol_version(), Some(want));
            assert_eq!(conn.alpn_protocol(), Some(alpn));
            let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
            assert!(
                suite.contains("GCM") || suite.contains("CHACHA20"),
                "{suite}"
            );
        }
    }
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let env = Env::new();
    let (up, _state) = upstream().await;
    let other = ward::demo::Pki::generate(&["ehr.example.test"]).unwrap();
    other.write(&env.path("other")).unwrap();
    let extra = format!(
        "        - cert: {}\n          key: {}\n          server_names: [ehr.example.test]\n",
        env.path("other/server.pem").display(),
        env.path("other/server.key").display()
    );
    let cfg = basic_config(up, "", "").replacen(
        "          server_names: [localhost]\n",
        &format!("          server_names: [localhost]\n{extra}"),
        1,
    );
    let gw = env.start(&cfg).await;
    let addr = gw.addr("public").unwrap();
    // The second name gets the second certificate (signed by the other CA).
    let cfg = client_tls(&other, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("ehr.example.test").unwrap();
    connector
        .connect(name, tcp)
        .await
        .expect("second certificate served for its SNI name");
    // And localhost still gets the first.
    let _ = tls_connect(&env.pki, addr).await;
}

#[tokio::test]
async fn handshake_deadline() {
    let env = Env::new();
    let (up, _state) = upstream().await;
    let cfg = basic_config(up, "", "").replacen(
        "      certificates:",
        "      handshake_timeout: 200ms\n      certificates:",
        1,
    );
    let gw = env.start(&cfg).await;
    let mut s = TcpStream::connect(gw.addr("public").unwrap())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "silent client was not disconnected");
    let (_, m) = admin_get(&gw, "/metrics").await;
    assert!(
        m.contains("ward_tls_handshake_failures_total{listener=\"public\",reason=\"timeout\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn plaintext_only_when_explicit() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let no_tls = format!(
        "listeners:\n  - name: public\n    bind: 127.0.0.1:0\nupstreams:\n  - name: ehr\n    url: http://{up}\nroutes: []\nadmin:\n  bind: 127.0.0.1:0\n"
    );
    let p = env.write("plain.yaml", &no_tls);
    let errs = ward::config::load_with(&p, &|_| None).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("plaintext: true")),
        "{errs:?}"
    );

    let explicit = no_tls.replace("    bind: 127.0.0.1:0\nupstreams", "    bind: 127.0.0.1:0\n    plaintext: true\nupstreams").replace(
        "routes: []",
        "routes:\n  - name: api\n    listener: public\n    path_prefix: /api\n    upstream: ehr",
    );
    let gw = env.start(&explicit).await;
    let mut s = TcpStream::connect(gw.addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(state.last().headers["x-forwarded-proto"], "http");
}
