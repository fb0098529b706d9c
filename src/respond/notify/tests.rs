//! Unit tests of the block notifications.

use super::*;
use http::Response;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use tokio::net::TcpListener;

const SECRET: &str = "0123456789abcdef0123456789abcdef-ward";

struct Hit {
    headers: http::HeaderMap,
    body: Bytes,
}

/// A local HTTP/1 receiver on 127.0.0.1:0. `handler` gets each request
/// (with its index) and decides the status; every request is also sent
/// on the returned channel.
async fn receiver<F, Fut>(handler: F) -> (SocketAddr, mpsc::UnboundedReceiver<Hit>)
where
    F: Fn(u32) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = StatusCode> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (hits_tx, hits_rx) = mpsc::unbounded_channel();
    let counter = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (handler, hits_tx, counter) = (handler.clone(), hits_tx.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (handler, hits_tx, counter) =
                        (handler.clone(), hits_tx.clone(), counter.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let _ = hits_tx.send(Hit {
                            headers: parts.headers,
                            body,
                        });
                        let status = handler(n).await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits_rx)
}

fn secret_file(dir: &tempfile::TempDir) -> PathBuf {
    let p = dir.path().join("secret");
    std::fs::write(&p, format!("{SECRET}\n")).unwrap();
    p
}

fn config(dir: &tempfile::TempDir, url: String) -> WebhookConfig {
    WebhookConfig {
        url,
        secret_file: secret_file(dir),
        ca: None,
        client_cert: None,
        client_key: None,
        timeout_ms: 5_000,
        retries: 5,
        queue: 1000,
    }
}

fn metrics() -> NotifyMetrics {
    NotifyMetrics::new().unwrap()
}

fn counts(m: &NotifyMetrics) -> (u64, u64, u64) {
    (m.sent.get(), m.failed.get(), m.dropped.get())
}

const GRACE: Duration = Duration::from_secs(300);

#[tokio::test]
async fn delivers_signed_event() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut hits) = receiver(|_| async { StatusCode::NO_CONTENT }).await;
    let m = metrics();
    let n = Notifier::start(config(&dir, format!("http://{addr}/hook")), m.clone()).unwrap();
    let event = serde_json::json!({"signal": "probing", "key": "ip:10.0.0.1", "value": 20});
    assert!(n.send(event.clone()));
    let hit = hits.recv().await.unwrap();
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (1, 0, 0));

    assert_eq!(hit.headers["content-type"], "application/json");
    let ts = hit.headers["x-ward-timestamp"].to_str().unwrap();
    let ts_num: u64 = ts.parse().unwrap();
    assert!(ts_num > 1_600_000_000);
    let sig = hit.headers["x-ward-signature"].to_str().unwrap();
    let hex_sig = sig.strip_prefix("sha256=").unwrap();
    // Recompute as a receiver would, independently of `sign`.
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(&hit.body);
    assert_eq!(hex_sig, hex::encode(hmac::sign(&key, &msg).as_ref()));
    let raw: Vec<u8> = (0..hex_sig.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_sig[i..i + 2], 16).unwrap())
        .collect();
    assert!(hmac::verify(&key, &msg, &raw).is_ok());
    // A tampered body or timestamp fails verification.
    let mut tampered = msg.clone();
    tampered[0] ^= 1;
    assert!(hmac::verify(&key, &tampered, &raw).is_err());
    let got: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(got, event);
}

#[tokio::test(start_paused = true)]
async fn retries_after_500() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut hits) = receiver(|n| async move {
        if n == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    })
    .await;
    let m = metrics();
    let n = Notifier::start(config(&dir, format!("http://{addr}/")), m.clone()).unwrap();
    n.send(serde_json::json!({"n": 1}));
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (1, 0, 0));
    let first = hits.recv().await.unwrap();
    let second = hits.recv().await.unwrap();
    assert_eq!(first.body, second.body);
    assert!(hits.try_recv().is_err(), "exactly two attempts");
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried() {
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::NOT_FOUND,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (addr, mut hits) = receiver(move |_| async move { status }).await;
        let m = metrics();
        let n = Notifier::start(config(&dir, format!("http://{addr}/")), m.clone()).unwrap();
        n.send(serde_json::json!({"n": 1}));
        n.shutdown(GRACE).await;
        assert_eq!(counts(&m), (0, 1, 0), "{status}");
        assert!(hits.recv().await.is_some());
        assert!(hits.try_recv().is_err(), "{status} must not be retried");
    }
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_on_429_and_5xx() {
    for status in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (addr, mut hits) = receiver(move |_| async move { status }).await;
        let m = metrics();
        let mut cfg = config(&dir, format!("http://{addr}/"));
        cfg.retries = 3;
        let n = Notifier::start(cfg, m.clone()).unwrap();
        n.send(serde_json::json!({"n": 1}));
        n.shutdown(GRACE).await;
        assert_eq!(counts(&m), (0, 1, 0));
        let mut attempts = 0;
        while hits.try_recv().is_ok() {
            attempts += 1;
        }
        assert_eq!(attempts, 3, "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    // First request never gets an answer; paused time lets the 5s
    // per-attempt timeout elapse without waiting.
    let (addr, mut hits) = receiver(|n| async move {
        if n == 0 {
            std::future::pending::<()>().await;
        }
        StatusCode::OK
    })
    .await;
    let m = metrics();
    let n = Notifier::start(config(&dir, format!("http://{addr}/")), m.clone()).unwrap();
    n.send(serde_json::json!({"n": 1}));
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (1, 0, 0));
    assert!(hits.recv().await.is_some());
    assert!(hits.recv().await.is_some());
}

#[tokio::test(start_paused = true)]
async fn connect_errors_are_retried_then_fail() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there any more.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let m = metrics();
    let mut cfg = config(&dir, format!("http://{addr}/"));
    cfg.retries = 4;
    let n = Notifier::start(cfg, m.clone()).unwrap();
    n.send(serde_json::json!({"n": 1}));
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (0, 1, 0));
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let (addr, mut hits) = receiver(move |n| {
        let g = g.clone();
        async move {
            if n == 0 {
                g.notified().await; // hold the worker on event 0
            }
            StatusCode::OK
        }
    })
    .await;
    let m = metrics();
    let mut cfg = config(&dir, format!("http://{addr}/"));
    cfg.queue = 2;
    cfg.timeout_ms = 300_000; // the held request must not time out
    let n = Notifier::start(cfg, m.clone()).unwrap();
    assert!(n.send(serde_json::json!({"n": 0})));
    // Event 0 has left the queue once the receiver sees it.
    let _ = hits.recv().await.unwrap();
    assert!(n.send(serde_json::json!({"n": 1})));
    assert!(n.send(serde_json::json!({"n": 2})));
    for i in 3..6 {
        assert!(!n.send(serde_json::json!({ "n": i })), "queue of 2 is full");
    }
    assert_eq!(counts(&m), (0, 0, 3));
    gate.notify_one();
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (3, 0, 3));
    // Sending after shutdown is dropped too, without blocking.
    assert!(!n.send(serde_json::json!({"late": true})));
    assert_eq!(m.dropped.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_abandons_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _hits) = receiver(|_| async {
        std::future::pending::<()>().await;
        StatusCode::OK
    })
    .await;
    let m = metrics();
    let mut cfg = config(&dir, format!("http://{addr}/"));
    cfg.timeout_ms = 60_000;
    let n = Notifier::start(cfg, m.clone()).unwrap();
    for i in 0..3 {
        assert!(n.send(serde_json::json!({ "n": i })));
    }
    n.shutdown(Duration::from_secs(1)).await;
    assert_eq!(counts(&m), (0, 0, 3));
    n.shutdown(Duration::from_secs(1)).await; // idempotent
    assert_eq!(counts(&m), (0, 0, 3));
}

#[test]
fn backoff_doubles_and_caps() {
    let b = |a| backoff(BACKOFF_BASE, a).as_millis();
    assert_eq!([b(1), b(2), b(3), b(4), b(5)], [200, 400, 800, 1600, 3200]);
    assert_eq!(b(8), 25_600);
    assert_eq!(b(9), 30_000);
    assert_eq!(b(100), 30_000);
    assert_eq!(b(0), 200);
}

#[test]
fn status_classification() {
    assert!(matches!(classify(StatusCode::OK, None), Outcome::Delivered));
    assert!(matches!(
        classify(StatusCode::ACCEPTED, None),
        Outcome::Delivered
    ));
    for s in [429u16, 500, 502, 503, 504] {
        let s = StatusCode::from_u16(s).unwrap();
        assert!(matches!(classify(s, None), Outcome::Retry(..)), "{s}");
    }
    for s in [301u16, 400, 401, 403, 404, 409, 413, 422] {
        let s = StatusCode::from_u16(s).unwrap();
        assert!(matches!(classify(s, None), Outcome::Fatal(_)), "{s}");
    }
}

#[test]
fn retry_after_parsing() {
    let mut h = http::HeaderMap::new();
    assert_eq!(retry_after(&h), None);
    h.insert(header::RETRY_AFTER, "7".parse().unwrap());
    assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    h.insert(header::RETRY_AFTER, "99999".parse().unwrap());
    assert_eq!(retry_after(&h), Some(BACKOFF_CAP));
    h.insert(
        header::RETRY_AFTER,
        "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
    );
    assert_eq!(retry_after(&h), None);
}

#[test]
fn hmac_matches_rfc4231_vector() {
    // RFC 4231 test case 2, via the same hex/HMAC path `sign` uses.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
    let tag = hmac::sign(&key, b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(tag.as_ref()),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // sign() = HMAC over "<ts>.<body>".
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
    let expected = hex::encode(hmac::sign(&key, b"1700000000.{}").as_ref());
    assert_eq!(
        sign(&key, "1700000000", b"{}"),
        format!("sha256={expected}")
    );
}

#[tokio::test]
async fn config_validation() {
    let dir = tempfile::tempdir().unwrap();
    let ok = || config(&dir, "http://127.0.0.1:9/".into());
    let m = metrics();
    let bad: Vec<(WebhookConfig, &str)> = vec![
        (
            WebhookConfig {
                url: "ftp://x/".into(),
                ..ok()
            },
            "scheme",
        ),
        (
            WebhookConfig {
                url: "/relative".into(),
                ..ok()
            },
            "no scheme",
        ),
        (
            WebhookConfig {
                url: "http://user:pw@host/".into(),
                ..ok()
            },
            "credentials",
        ),
        (
            WebhookConfig {
                url: "not a url".into(),
                ..ok()
            },
            "garbage",
        ),
        (
            WebhookConfig {
                timeout_ms: 0,
                ..ok()
            },
            "timeout",
        ),
        (WebhookConfig { retries: 0, ..ok() }, "retries"),
        (WebhookConfig { queue: 0, ..ok() }, "queue"),
        (
            WebhookConfig {
                secret_file: dir.path().join("nope"),
                ..ok()
            },
            "missing secret",
        ),
        (
            WebhookConfig {
                ca: Some(dir.path().join("ca.pem")),
                ..ok()
            },
            "ca on http",
        ),
    ];
    for (cfg, what) in bad {
        assert!(Notifier::start(cfg, m.clone()).is_err(), "{what} accepted");
    }
    // Short secret (trailing newline does not count).
    let short = dir.path().join("short");
    std::fs::write(&short, format!("{}\n", &SECRET[..31])).unwrap();
    let err = Notifier::start(
        WebhookConfig {
            secret_file: short,
            ..ok()
        },
        m.clone(),
    );
    assert!(err.err().unwrap().contains("at least 32"));
    // TLS material problems.
    let https = || WebhookConfig {
        url: "https://127.0.0.1:9/".into(),
        ..ok()
    };
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no pem here").unwrap();
    let cert = dir.path().join("cli.pem");
    std::fs::write(&cert, CLIENT_CERT).unwrap();
    let tls_bad = vec![
        WebhookConfig {
            ca: Some(empty.clone()),
            ..https()
        },
        WebhookConfig {
            ca: Some(dir.path().join("missing.pem")),
            ..https()
        },
        WebhookConfig {
            client_cert: Some(cert.clone()),
            ..https()
        },
        WebhookConfig {
            client_key: Some(cert.clone()),
            ..https()
        },
        WebhookConfig {
            client_cert: Some(cert.clone()),
            client_key: Some(empty),
            ..https()
        },
    ];
    for cfg in tls_bad {
        assert!(Notifier::start(cfg.clone(), m.clone()).is_err(), "{cfg:?}");
    }
    // Good config, and defaults from YAML/JSON.
    assert!(Notifier::start(ok(), m.clone()).is_ok());
    let parsed: WebhookConfig =
        serde_json::from_value(serde_json::json!({"url": "https://h/", "secret_file": "/s"}))
            .unwrap();
    assert_eq!(
        (parsed.timeout_ms, parsed.retries, parsed.queue),
        (5000, 5, 1000)
    );
    assert!(serde_json::from_value::<WebhookConfig>(
        serde_json::json!({"url": "https://h/", "secret_file": "/s", "secrets": "x"})
    )
    .is_err());
}

#[test]
fn start_outside_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = Notifier::start(config(&dir, "http://127.0.0.1:9/".into()), metrics());
    assert!(r.err().unwrap().contains("tokio runtime"));
}

#[test]
fn notifier_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Notifier>();
}

#[test]
fn metrics_register() {
    let reg = Registry::new();
    let m = metrics();
    m.register(&reg).unwrap();
    assert!(m.register(&reg).is_err(), "duplicate registration");
    assert_eq!(reg.gather().len(), 3);
}

// --- TLS ---
//
// Test PKI (EC P-256, valid 2020..2120) made with openssl: a CA, a server
// certificate for IP 127.0.0.1 and a client certificate, both issued by
// the CA, plus an unrelated CA.

const CA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBYTCCAQigAwIBAgICEAAwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMV2FyZCBU
ZXN0IENBMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAwWjAXMRUwEwYD
VQQDDAxXYXJkIFRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARoYqXU
BYQWlWVMlKeDc7bqYOCzvjfY55oqKablB8ykkuDDv/IZPEcVYBpQxpESiNFA2Nue
Kn1B+CLky22Kj4IKo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIB
BjAdBgNVHQ4EFgQU8TP5taOK8+ebUwDBAXstt3EsIm8wCgYIKoZIzj0EAwIDRwAw
RAIgdNg6Pf4Kg7lez0pssC6dr5W4Vg+WN1TPJOUdFkaSzq8CIHfLu5r3aVnimi9U
8tZx7Z1lEEIRNoW0pZ8Cicyplfab
-----END CERTIFICATE-----
";

const OTHER_CA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBWTCCAQCgAwIBAgICEAEwCgYIKoZIzj0EAwIwEzERMA8GA1UEAwwIT3RoZXIg
Q0EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBMxETAPBgNVBAMM
CE90aGVyIENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMK0Yu9fEM/jyO8sj
+SC/y7XaMKij8KmiMDbslJPx6KtaG7fb4eyCwqFd0R3ew9qrgSFy9+adCqn2Ykv+
+L2/p6NCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0O
BBYEFJn4cujQE3EbPk4mRnG9eu9ADnQVMAoGCCqGSM49BAMCA0cAMEQCIEO3Tri3
/g/Vrpd13INTv2vtObVTDQ7y0KyUBb1jwQ09AiBuVYhVMVFoxVe1/de6rncJ1F40
PBWmaakK6v7T/pkRrQ==
-----END CERTIFICATE-----
";

const SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpjCCAUugAwIBAgICEAIwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMV2FyZCBU
ZXN0IENBMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAwWjAUMRIwEAYD
VQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATXiwHJOTT6
FDgYa3ZZXuzNtcjxslFGRwUOD5STVFenIVvD/08rqf6iUvXFiPUgMcvdMun3GDdc
iDDoJdCWGRyYo4GHMIGEMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMBMG
A1UdJQQMMAoGCCsGAQUFBwMBMA8GA1UdEQQIMAaHBH8AAAEwHwYDVR0jBBgwFoAU
8TP5taOK8+ebUwDBAXstt3EsIm8wHQYDVR0OBBYEFP1oSnL5n427z7LeRrGvhwql
l6WlMAoGCCqGSM49BAMCA0kAMEYCIQDLUtADB6yBaB3tHuibSOg7sxru+BvTEtPJ
B38mRsUDwAIhAM3Ok3IgtaiAGCcMOiL4+6z5nRwi+nDquOHJL/UY3WKq
-----END CERTIFICATE-----
";

const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgtixI0iHmiDmIseym
Kpd0ZgJVi1h7JhOXk7an/NSXyWKhRANCAATXiwHJOTT6FDgYa3ZZXuzNtcjxslFG
RwUOD5STVFenIVvD/08rqf6iUvXFiPUgMcvdMun3GDdciDDoJdCWGRyY
-----END PRIVATE KEY-----
";

const CLIENT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBljCCATygAwIBAgICEAMwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMV2FyZCBU
ZXN0IENBMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAwWjAYMRYwFAYD
VQQDDA13YXJkLW5vdGlmaWVyMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZzwc
H/fnsxUhKUQoxGN/Np9rG+wGts/spKPKNSR35kTqZDj1gJ98bfXnYDgnLJJ8wGaJ
0POZFD939oSGkQtGsqN1MHMwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCB4Aw
EwYDVR0lBAwwCgYIKwYBBQUHAwIwHwYDVR0jBBgwFoAU8TP5taOK8+ebUwDBAXst
t3EsIm8wHQYDVR0OBBYEFKzxliwFYIfzSZFu9kMxaE4qAh4XMAoGCCqGSM49BAMC
A0gAMEUCIAteDXOSzkDCuOxWfd+vCRk2ObHqWTDo0WbX2NnxtgiLAiEA91DOoYlE
lkxbJ5+ELQm8illgF4enHT3PtlDAfhKyrKU=
-----END CERTIFICATE-----
";

const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgOd7p/Uxh5qsCg+gy
LdtRjuAmC5BRwvSlyJyp6IjhOhChRANCAARnPBwf9+ezFSEpRCjEY382n2sb7Aa2
z+yko8o1JHfmROpkOPWAn3xt9edgOCcsknzAZonQ85kUP3f2hIaRC0ay
-----END PRIVATE KEY-----
";

/// What the TLS receiver saw on its one connection.
type TlsHit = Result<(bool, Vec<u8>), String>;

/// A blocking rustls server (std thread, one connection) that requires a
/// client certificate from the test CA, answers 200 and reports whether
/// a client certificate was presented plus the raw request.
fn tls_receiver() -> (SocketAddr, std::sync::mpsc::Receiver<TlsHit>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA_CERT.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(SERVER_CERT.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap(),
        )
        .unwrap();
    let server = Arc::new(server);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        // Safety net against a hung test, not synchronisation.
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
        let conn = rustls::ServerConnection::new(server).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        let outcome = loop {
            match tls.read(&mut buf) {
                Ok(0) => break Err("eof before request".to_owned()),
                Ok(n) => {
                    req.extend_from_slice(&buf[..n]);
                    if request_complete(&req) {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        let report = outcome.map(|()| {
            let had_cert = tls.conn.peer_certificates().is_some_and(|c| !c.is_empty());
            let _ =
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            tls.conn.send_close_notify();
            let _ = tls.flush();
            (had_cert, req)
        });
        let _ = tx.send(report);
    });
    (addr, rx)
}

fn request_complete(req: &[u8]) -> bool {
    let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    req.len() >= end + 4 + len
}

fn tls_config_files(dir: &tempfile::TempDir, ca: &str, with_client: bool) -> WebhookConfig {
    let write = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    WebhookConfig {
        ca: Some(write("ca.pem", ca)),
        client_cert: with_client.then(|| write("client.pem", CLIENT_CERT)),
        client_key: with_client.then(|| write("client.key", CLIENT_KEY)),
        retries: 1,
        ..config(dir, String::new())
    }
}

#[tokio::test]
async fn https_with_private_ca_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = tls_receiver();
    let m = metrics();
    let cfg = WebhookConfig {
        url: format!("https://{addr}/hook"),
        ..tls_config_files(&dir, CA_CERT, true)
    };
    let n = Notifier::start(cfg, m.clone()).unwrap();
    n.send(serde_json::json!({"tls": true}));
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (1, 0, 0));
    let (had_cert, req) = seen.recv().unwrap().unwrap();
    assert!(had_cert, "client certificate presented");
    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
    assert!(text.starts_with("post /hook http/1.1\r\n"), "{text}");
    assert!(text.contains("x-ward-signature: sha256="));
    assert!(text.ends_with("{\"tls\":true}"));
}

#[tokio::test]
async fn https_rejects_untrusted_server() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = tls_receiver();
    let m = metrics();
    let cfg = WebhookConfig {
        url: format!("https://{addr}/"),
        ..tls_config_files(&dir, OTHER_CA_CERT, true)
    };
    let n = Notifier::start(cfg, m.clone()).unwrap();
    n.send(serde_json::json!({"n": 1}));
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (0, 1, 0));
    assert!(seen.recv().unwrap().is_err(), "no request got through");
}

#[tokio::test]
async fn https_without_client_certificate_is_refused_by_mtls_server() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = tls_receiver();
    let m = metrics();
    let cfg = WebhookConfig {
        url: format!("https://{addr}/"),
        ..tls_config_files(&dir, CA_CERT, false)
    };
    let n = Notifier::start(cfg, m.clone()).unwrap();
    n.send(serde_json::json!({"n": 1}));
    n.shutdown(GRACE).await;
    assert_eq!(counts(&m), (0, 1, 0));
    assert!(seen.recv().unwrap().is_err());
}
