//! Graceful drain on shutdown, and an https upstream with a private CA and upstream mTLS
//! material configured.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();
    let c = client(&env.pki, false);
    let in_flight = tokio::spawn({
        let c = c.clone();
        let u = url(&gw, "/gate/slow");
        async move {
            let resp = c
                .request(get(&u))
                .await
                .expect("in-flight request completes");
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("full body")
                .to_bytes();
            (status, body)
        }
    });
    // Wait until the upstream holds the request.
    state.gate_entered.notified().await;
    gw.begin_shutdown();
    // New connections are refused once the listener is closed. The listener task closes
    // it asynchronously after the signal, so poll (bounded) until a connect fails.
    let mut refused = false;
    for _ in 0..3000 {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert!(refused, "listener still accepting after shutdown");
    state.gate.notify_one();
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("/gate/slow"));
    tokio::time::timeout(Duration::from_secs(30), gw.drained())
        .await
        .expect("drain completes");
}

#[tokio::test]
async fn https_upstream_with_private_ca() {
    // The upstream is another ward instance (TLS, its own PKI) in front of the recorder.
    let env = Env::new();
    let (up, state) = upstream().await;
    let inner = env.start(&basic_config(up, "", "")).await;
    let inner_port = inner.addr("public").unwrap().port();
    let outer_env = Env::new();
    std::fs::copy(
        env.path("certs/ca.pem"),
        outer_env.path("certs/upstream-ca.pem"),
    )
    .unwrap();
    let cfg = basic_config("127.0.0.1:1".parse().unwrap(), "", "    ca: certs/upstream-ca.pem\n    client_cert: certs/client.pem\n    client_key: certs/client.key\n")
        .replace("http://127.0.0.1:1", &format!("https://localhost:{inner_port}"));
    let outer = outer_env.start(&cfg).await;
    let c = client(&outer_env.pki, true);
    let r = send(&c, get(&url(&outer, "/api/through"))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(state.last().path_and_query, "/api/through");
    // Two hops: the inner gateway saw the outer one as an untrusted peer and replaced XFF.
    assert_eq!(state.last().headers["x-forwarded-for"], "127.0.0.1");

    // An upstream whose certificate is not signed by the configured CA: 502.
    let wrong = basic_config("127.0.0.1:1".parse().unwrap(), "", "    ca: certs/ca.pem\n").replace(
        "http://127.0.0.1:1",
        &format!("https://localhost:{inner_port}"),
    );
    let outer2 = outer_env.start(&wrong).await;
    let r = send(&c, get(&url(&outer2, "/api/x"))).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.code(), "upstream_unavailable");
}
