//! End-to-end proxying over real TLS: HTTP/1.1 and HTTP/2, header hygiene, smuggling and
//! path-bypass refusals, limits, upstream failures, admin endpoints.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};

#[tokio::test]
async fn get_and_post_over_http1_and_http2() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    for h2 in [false, true] {
        let c = client(&env.pki, h2);
        let r = send(&c, get(&url(&gw, "/api/items?q=1"))).await;
        assert_eq!(r.status, 200, "h2={h2}");
        assert_eq!(r.json()["path"], "/api/items?q=1");
        assert!(r.headers.contains_key("x-request-id"));
        // The legacy server banner is not passed to clients.
        assert!(!r.headers.contains_key("server"));

        let body = vec![b'x'; 200_000];
        let req = Request::post(url(&gw, "/fhir/Patient"))
            .header("content-type", "application/fhir+json")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-ward-identity", "admin")
            .header("x-http-method-override", "DELETE")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, 200, "h2={h2}");
        assert_eq!(r.json()["body_len"], 200_000);
        let seen = state.last();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body.len(), 200_000);
        assert!(seen.complete);
        assert_eq!(
            seen.headers["x-forwarded-for"], "127.0.0.1",
            "client XFF must be overwritten"
        );
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert!(seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=https"));
        assert!(!seen.headers.contains_key("x-ward-identity"));
        assert!(!seen.headers.contains_key("x-http-method-override"));
        assert_eq!(seen.headers["x-request-id"], r.headers["x-request-id"]);
        assert_eq!(seen.headers["host"].to_str().unwrap(), up.to_string());
    }
}

#[tokio::test]
async fn upgrade_and_hop_by_hop_headers_not_forwarded() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();
    let resp = raw(
        &env.pki,
        addr,
        b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, X-Secret, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-Secret: 1\r\nX-Request-Id: client-chosen\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = state.last();
    for h in ["upgrade", "http2-settings", "x-secret", "connection"] {
        assert!(!seen.headers.contains_key(h), "{h} forwarded");
    }
    // Untrusted peers cannot choose the request id.
    assert_ne!(seen.headers["x-request-id"], "client-chosen");
}

#[tokio::test]
async fn trusted_proxy_headers_are_kept() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env
        .start(&basic_config(up, "    trusted_proxies: [127.0.0.0/8]", ""))
        .await;
    let resp = raw(
        &env.pki,
        gw.addr("public").unwrap(),
        b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 203.0.113.7\r\nX-Request-Id: lb-123\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    let seen = state.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen.headers["x-request-id"], "lb-123");
    assert!(resp.to_ascii_lowercase().contains("x-request-id: lb-123"));
}

#[tokio::test]
async fn smuggling_attempts_rejected_and_never_forwarded() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();
    let cases: &[(&[u8], &str)] = &[
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", "framing_cl_te"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\nA\r\n0\r\n\r\n", "framing_cl_te"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "framing_duplicate_cl"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "framing_duplicate_cl"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: -3\r\n\r\nabc", "framing_invalid_cl"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0x3\r\n\r\nabc", "framing_invalid_cl"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "framing_invalid_te"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "framing_invalid_te"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "framing_invalid_te"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", "malformed_request"),
        (b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "malformed_request"),
        (b"POST /api/x HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "framing_invalid_te"),
    ];
    for (req, code) in cases {
        let resp = raw(&env.pki, addr, req).await;
        assert_eq!(
            status_of(&resp),
            400,
            "{}\n---\n{resp}",
            String::from_utf8_lossy(req)
        );
        assert_eq!(
            body_of(&resp)["error"]["code"],
            *code,
            "{}",
            String::from_utf8_lossy(req)
        );
        assert!(resp.to_ascii_lowercase().contains("connection: close"));
    }
    // A smuggled request after a valid one on the same connection: the first is served,
    // the second refused, nothing smuggled reaches the upstream.
    let resp = raw(
        &env.pki,
        addr,
        b"GET /api/first HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("HTTP/1.1 400"), "{resp}");
    let seen: Vec<String> = state
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path_and_query.clone())
        .collect();
    assert_eq!(
        seen,
        vec!["/api/first".to_string()],
        "only the valid request may reach the upstream"
    );
}

#[tokio::test]
async fn path_bypass_forms_rejected() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();
    let cases = [
        ("/fhir%2fPatient", "path_encoded_slash"),
        ("/fhir/Patient%2F1", "path_encoded_slash"),
        ("/fhir%5cPatient", "path_backslash"),
        ("/fhir/%2e%2e/admin", "path_encoded_dot"),
        ("/fhir/%2E%2E/admin", "path_encoded_dot"),
        ("/fhir/../admin", "path_dot_segment"),
        ("/fhir/./Patient", "path_dot_segment"),
        ("/api/..", "path_dot_segment"),
        ("/fhir/Patient%00", "path_nul"),
        ("/fhir/%252e%252e/admin", "path_double_encoding"),
        ("/fhir//Patient", "path_empty_segment"),
        ("/fhir/Patient;jsessionid=x/1", "path_parameters"),
        ("/fhir/Patient/1;x", "path_parameters"),
        ("/api/..;/fhir/Patient", "path_dot_segment"),
        ("/api/%C0%AE%C0%AE/x", "path_bad_escape"),
    ];
    for (path, code) in cases {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw(&env.pki, addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), 400, "{path}: {resp}");
        let v = body_of(&resp);
        let got = if v["resourceType"] == "OperationOutcome" {
            v["issue"][0]["details"]["coding"][0]["code"].clone()
        } else {
            v["error"]["code"].clone()
        };
        assert_eq!(got, code, "{path}: {resp}");
    }
    // Backslash sent raw: hyper or the gateway must refuse it, never forward it.
    let resp = raw(
        &env.pki,
        addr,
        b"GET /fhir\\..\\admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "{resp}");
    // Unmatched paths: 404 naming no route; the route prefix cannot be extended.
    for path in ["/fhirx/Patient", "/admin", "/"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw(&env.pki, addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), 404, "{path}");
        for name in ["fhir\"", "api", "slow", "gate", "ehr"] {
            assert!(
                !body_of(&resp).to_string().contains(name),
                "404 body names {name}: {resp}"
            );
        }
    }
    assert_eq!(state.count(), 0, "no bypass attempt may reach the upstream");
    // Canonicalisation: the decision path is the forwarded path.
    let resp = raw(
        &env.pki,
        addr,
        b"GET /%66hir/Patient/%31 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200);
    assert_eq!(state.last().path_and_query, "/fhir/Patient/1");
}

#[tokio::test]
async fn fhir_routes_answer_with_operation_outcome() {
    let env = Env::new();
    let (up, _state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let c = client(&env.pki, false);
    let r = send(
        &c,
        Request::builder()
            .method("TRACE")
            .uri(url(&gw, "/fhir/Patient"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    let r = send(&c, get(&url(&gw, "/fhir/Patient;x"))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["content-type"], "application/fhir+json");
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(v["issue"][0]["code"], "invalid");
    assert_eq!(r.code(), "path_parameters");
}

#[tokio::test]
async fn header_and_body_limits() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let limits = "    limits:\n      max_header_bytes: 2048\n      max_headers: 20\n      max_body_bytes: 1000\n";
    let gw = env.start(&basic_config(up, limits, "")).await;
    let addr = gw.addr("public").unwrap();
    for h2 in [false, true] {
        let c = client(&env.pki, h2);
        // Header bytes.
        let req = Request::get(url(&gw, "/api/x"))
            .header("x-big", "a".repeat(3000))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, 431, "h2={h2}");
        assert_eq!(r.code(), "headers_too_large");
        // Header count.
        let mut b = Request::get(url(&gw, "/api/x"));
        for i in 0..30 {
            b = b.header(format!("x-h{i}"), "1");
        }
        let r = send(&c, b.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(r.status, 431, "h2={h2}");
        // Declared body over the limit.
        let req = Request::post(url(&gw, "/api/x"))
            .body(Full::new(Bytes::from(vec![b'a'; 5000])))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, 413, "h2={h2}");
        assert_eq!(r.code(), "body_too_large");
    }
    assert_eq!(
        state.count(),
        0,
        "nothing over a limit reaches the upstream"
    );
    // A chunked body that grows past the limit: 413, and the upstream never gets a
    // complete request.
    let mut req =
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"1f4\r\n");
        req.extend(std::iter::repeat_n(b'b', 500));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = raw(&env.pki, addr, &req).await;
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert!(
        state.seen.lock().unwrap().iter().all(|s| !s.complete),
        "upstream must not see a complete over-limit body"
    );
}

#[tokio::test]
async fn slow_headers_close_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new();
    let (up, state) = upstream().await;
    let limits = "    limits:\n      header_read_timeout: 300ms\n      idle_timeout: 300ms\n";
    let gw = env.start(&basic_config(up, limits, "")).await;
    let mut s = tls_connect(&env.pki, gw.addr("public").unwrap()).await;
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    // The gateway must close the connection by itself; the bound only keeps a broken
    // build from hanging the suite.
    let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection was not closed");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // An idle keep-alive connection is closed too.
    let mut s = tls_connect(&env.pki, gw.addr("public").unwrap()).await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "idle connection was not closed");
    assert_eq!(state.count(), 0);
}

#[tokio::test]
async fn upstream_down_stalled_and_truncated() {
    let env = Env::new();
    let dead = dead_addr().await;
    let gw = env
        .start(&basic_config(dead, "", "    connect_timeout: 2s\n"))
        .await;
    let c = client(&env.pki, false);
    let r = send(&c, get(&url(&gw, "/api/x"))).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.code(), "upstream_unavailable");
    let r = send(&c, get(&url(&gw, "/fhir/Patient"))).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    drop(gw);

    let (up, _state) = upstream().await;
    let gw = env
        .start(&basic_config(up, "", "    response_timeout: 300ms\n"))
        .await;
    let r = send(&c, get(&url(&gw, "/stall"))).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.code(), "upstream_timeout");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("127.0.0.1"),
        "no upstream internals in errors"
    );

    let trunc = truncating_upstream().await;
    let gw = env.start(&basic_config(trunc, "", "")).await;
    for h2 in [false, true] {
        let c = client(&env.pki, h2);
        let resp = c.request(get(&url(&gw, "/api/x"))).await;
        // The head may arrive; the body must fail, never look complete.
        if let Ok(resp) = resp {
            let body = resp.into_body().collect().await;
            assert!(
                body.is_err(),
                "h2={h2}: truncated upstream body delivered as complete"
            );
        }
    }
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("ward_upstream_errors_total{kind=\"body\",upstream=\"ehr\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let env = Env::new();
    let (up, _state) = upstream().await;
    let gw = env
        .start(&basic_config(
            up,
            "",
            "    health:\n      interval: 100ms\n",
        ))
        .await;
    let c = client(&env.pki, false);
    assert_eq!(send(&c, get(&url(&gw, "/api/x"))).await.status, 200);
    assert_eq!(send(&c, get(&url(&gw, "/nothing"))).await.status, 404);
    let (s, body) = admin_get(&gw, "/healthz").await;
    assert_eq!((s, body.contains("ok")), (200, true));
    // Readiness follows the probes: wait for the first probe result (bounded).
    let mut ready = (0, String::new());
    for _ in 0..1500 {
        ready = admin_get(&gw, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(ready.1.contains("\"ehr\":\"up\""), "{}", ready.1);
    let (s, m) = admin_get(&gw, "/metrics").await;
    assert_eq!(s, 200);
    assert!(m.contains("ward_requests_total{listener=\"public\",method=\"GET\",route=\"api\",status=\"2xx\"} 1"), "{m}");
    assert!(
        m.contains(
            "ward_requests_total{listener=\"public\",method=\"GET\",route=\"-\",status=\"4xx\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("ward_rejections_total{code=\"not_found\",route=\"-\"} 1"),
        "{m}"
    );
    assert!(m.contains("ward_request_duration_seconds_bucket"));
    assert!(m.contains("ward_upstream_duration_seconds_bucket{upstream=\"ehr\""));
    assert!(m.contains("ward_connections_total{listener=\"public\"}"));
    assert!(
        !m.contains("/api/x"),
        "raw paths must never be metric labels"
    );
    // Admin is not reachable through the public listener.
    assert_eq!(send(&c, get(&url(&gw, "/metrics"))).await.status, 404);

    let dead = dead_addr().await;
    let gw = env
        .start(&basic_config(
            dead,
            "",
            "    health:\n      interval: 100ms\n",
        ))
        .await;
    let mut not_ready = (0, String::new());
    for _ in 0..1500 {
        not_ready = admin_get(&gw, "/readyz").await;
        if not_ready.1.contains("down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(not_ready.0, 503, "{}", not_ready.1);
    assert!(not_ready.1.contains("\"ehr\":\"down\""));
}

#[tokio::test]
async fn slow_body_gets_408_and_is_not_completed_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new();
    let (up, state) = upstream().await;
    let limits = "    limits:\n      body_timeout: 300ms\n";
    let gw = env.start(&basic_config(up, limits, "")).await;
    let mut s = tls_connect(&env.pki, gw.addr("public").unwrap()).await;
    // Promise 100 bytes, send 10, then stall.
    s.write_all(
        b"POST /api/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "stalled body: connection not closed");
    let resp = String::from_utf8_lossy(&buf);
    assert_eq!(status_of(&resp), 408, "{resp}");
    assert_eq!(body_of(&resp)["error"]["code"], "body_timeout");
    assert!(state.seen.lock().unwrap().iter().all(|s| !s.complete));
}

#[tokio::test]
async fn connection_cap_per_listener() {
    use tokio::io::AsyncReadExt;
    let env = Env::new();
    let (up, _state) = upstream().await;
    let limits = "    limits:\n      max_connections: 1\n";
    let gw = env.start(&basic_config(up, limits, "")).await;
    let addr = gw.addr("public").unwrap();
    // The first connection holds the only slot (an open TLS session).
    let _first = tls_connect(&env.pki, addr).await;
    // The next is closed at once, before any TLS byte is sent back.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), second.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "over-cap connection was left hanging");
    assert!(buf.is_empty());
    let (_, m) = admin_get(&gw, "/metrics").await;
    assert!(
        m.contains(
            "ward_connections_refused_total{listener=\"public\",reason=\"max_connections\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn refused_method_never_falls_through_to_a_shorter_prefix() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let cfg = basic_config(up, "", "").replace(
        "  - name: api\n    listener: public\n    path_prefix: /api\n    upstream: ehr\n",
        "  - name: api\n    listener: public\n    path_prefix: /api\n    upstream: ehr\n  - name: api-readonly\n    listener: public\n    path_prefix: /api/records\n    methods: [GET]\n    upstream: ehr\n",
    );
    let gw = env.start(&cfg).await;
    let c = client(&env.pki, false);
    let del = Request::delete(url(&gw, "/api/records/1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&c, del).await;
    assert_eq!(
        r.status, 405,
        "DELETE fell through to the broader /api route"
    );
    assert_eq!(state.count(), 0);
    assert_eq!(send(&c, get(&url(&gw, "/api/records/1"))).await.status, 200);
    let del = Request::delete(url(&gw, "/api/other"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&c, del).await.status, 200);
}

#[tokio::test]
async fn fhir_routes_refuse_unclassifiable_requests() {
    let env = Env::new();
    let (up, state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let addr = gw.addr("public").unwrap();
    for (req, code) in [
        ("GET /fhir/NotAType/1", "fhir_unknown_type"),
        ("GET /fhir/patient/1", "fhir_unknown_type"),
        ("GET /fhir/Patient/a_b", "fhir_bad_id"),
        ("GET /fhir/Observation/1/Condition", "fhir_unsupported"),
        ("DELETE /fhir/Patient", "fhir_unsupported"),
        ("GET /fhir/Patient?name=%zz", "fhir_bad_query"),
    ] {
        let raw_req = format!("{req} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let resp = raw(&env.pki, addr, raw_req.as_bytes()).await;
        assert_eq!(status_of(&resp), 400, "{req}: {resp}");
        let v = body_of(&resp);
        assert_eq!(v["resourceType"], "OperationOutcome", "{req}");
        assert_eq!(v["issue"][0]["details"]["coding"][0]["code"], code, "{req}");
    }
    assert_eq!(state.count(), 0);
    // Valid shapes pass, including operations, history and compartment searches.
    let c = client(&env.pki, false);
    for path in [
        "/fhir/metadata",
        "/fhir/Patient/1/$everything",
        "/fhir/Patient/1/_history/2",
        "/fhir/Patient/1/Observation?code=x",
        "/fhir?_type=Patient",
    ] {
        assert_eq!(send(&c, get(&url(&gw, path))).await.status, 200, "{path}");
    }
}

/// A HEAD the gateway itself answers (no route, a refused path, a dead upstream) gets the
/// status and headers with no body over both protocols — an HTTP/2 client treats a body
/// on a HEAD answer as a protocol error and resets the stream instead of reporting it.
#[tokio::test]
async fn head_refusals_have_no_body_over_http1_and_http2() {
    let env = Env::new();
    let (up, _state) = upstream().await;
    let gw = env.start(&basic_config(up, "", "")).await;
    let dead = dead_addr().await;
    let env_dead = Env::new();
    let gw_dead = env_dead.start(&basic_config(dead, "", "")).await;
    for h2 in [false, true] {
        let cases = [
            (&gw, &env, "/nowhere/at/all", 404),
            (&gw, &env, "/api/%2e%2e/admin", 400),
            (&gw_dead, &env_dead, "/api/items", 502),
        ];
        for (g, e, path, status) in cases {
            let c = client(&e.pki, h2);
            let req = Request::head(url(g, path))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = send(&c, req).await;
            assert_eq!(r.status, status, "h2={h2} {path}");
            assert!(r.body.is_empty(), "h2={h2} {path}: {:?}", r.body);
            assert!(r.headers.contains_key("x-request-id"), "h2={h2} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_pool_keeps_a_connection_for_every_request_in_flight() {
    // 100 requests at once (HTTP/2 streams on one client connection), held at the upstream
    // until all have arrived, so each needs its own upstream connection. Later rounds must
    // reuse them: a pool that keeps fewer closes and reopens connections under load.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const N: usize = 100;
    let accepts = Arc::new(AtomicUsize::new(0));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = tcp.local_addr().unwrap();
    {
        let accepts = accepts.clone();
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        tokio::spawn(async move {
            while let Ok((s, _)) = tcp.accept().await {
                let (accepts, barrier) = (accepts.clone(), barrier.clone());
                // Counted on its first request: health probes connect and close.
                let counted = Arc::new(std::sync::atomic::AtomicBool::new(false));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        if !counted.swap(true, Ordering::SeqCst) {
                            accepts.fetch_add(1, Ordering::SeqCst);
                        }
                        let barrier = barrier.clone();
                        async move {
                            barrier.wait().await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }
    let env = Env::new();
    let gw = env.start(&basic_config(up, "", "")).await;
    let c = client(&env.pki, true);
    let mut opened = 0;
    for round in 0..3 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let (c, u) = (c.clone(), url(&gw, &format!("/api/r{round}/{i}")));
            set.spawn(async move { send(&c, get(&u)).await.status });
        }
        while let Some(s) = set.join_next().await {
            assert_eq!(s.unwrap(), 200, "round {round}");
        }
        let now = accepts.load(Ordering::SeqCst);
        if round == 0 {
            assert_eq!(now, N, "one upstream connection per request in flight");
            opened = now;
        } else {
            assert_eq!(now, opened, "round {round} opened new upstream connections");
        }
    }
}
