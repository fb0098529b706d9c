//! MLLP listeners end to end: python-hl7's `mllp_send` (a client no one here wrote)
//! through the gateway to a TLS MLLP upstream that must receive every message byte for
//! byte; TLS and mutual TLS with a Rust client; senders confined to their MSH-4; invalid
//! messages NAKed with AE + ERR; an unreachable upstream never produces an AA; framing
//! attacks (no end block, oversized, two start blocks, garbage, slow sender); pipelining.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ward::hl7v2::mllp::{write_frame, FrameReader};
use ward::hl7v2::AckCode;

/// What the test MLLP upstream does with each message.
#[derive(Clone, Copy, PartialEq)]
enum UpMode {
    Ack,
    WrongControlId,
    /// Every ACK sent twice (a receiver in enhanced mode, or a buggy one).
    DoubleAck,
}

#[derive(Default)]
struct Received(Mutex<Vec<Vec<u8>>>);

impl Received {
    fn all(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

/// An MLLP receiver on 127.0.0.1:0, over TLS when `pki` is given, answering AA.
async fn mllp_upstream(pki: Option<&ward::demo::Pki>, mode: UpMode) -> (SocketAddr, Arc<Received>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let got = Arc::new(Received::default());
    let acceptor = pki.map(|p| {
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(p.server_cert.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(p.server_key.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = tcp.accept().await else {
                continue;
            };
            let (g, acceptor) = (g.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(t) = a.accept(s).await {
                            receive(t, g, mode).await
                        }
                    }
                    None => receive(s, g, mode).await,
                }
            });
        }
    });
    (addr, got)
}

async fn receive<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    got: Arc<Received>,
    mode: UpMode,
) {
    let mut r = FrameReader::new(s, 10 << 20);
    while let Ok(Some(msg)) = r
        .next(Duration::from_secs(60), Duration::from_secs(60))
        .await
    {
        got.0.lock().unwrap().push(msg.clone());
        let mut h = ward::hl7v2::header(&msg).unwrap_or_default();
        if mode == UpMode::WrongControlId {
            h.control_id = b"SOMETHING-ELSE".to_vec();
        }
        let ack = ward::hl7v2::build_ack(&h, AckCode::Accept, &[], "20240101000000", "UP1");
        if write_frame(r.get_mut(), &ack).await.is_err() {
            return;
        }
        if mode == UpMode::DoubleAck && write_frame(r.get_mut(), &ack).await.is_err() {
            return;
        }
    }
}

fn adt(control_id: &str, facility: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|LAB|{facility}|EHR|HOSP|20240315083012||ADT^A01^ADT_A01|{control_id}|P|2.5.1\rEVN|A01|20240315083000\rPID|1||123456^^^HOSP^MR||Testperson^Alba||19700101|F\rPV1|1|I|WARD1^101^A\r"
    )
    .into_bytes()
}

fn framed(msg: &[u8]) -> Vec<u8> {
    [&[0x0b][..], msg, &[0x1c, 0x0d]].concat()
}

fn msa(ack: &[u8]) -> (String, String) {
    let (code, id) = ward::hl7v2::parse_ack(ack).expect("an ACK");
    (code.as_str().to_owned(), String::from_utf8(id).unwrap())
}

fn mllp_section(name: &str, upstream: &str, extra: &str) -> String {
    format!("mllp:\n  - name: {name}\n    bind: 127.0.0.1:0\n{extra}    upstream:\n{upstream}")
}

fn tls_section(client_auth: &str) -> String {
    format!("    tls:\n      certificates:\n        - cert: certs/server.pem\n          key: certs/server.key\n{client_auth}")
}

async fn start(env: &Env, mllp: &str) -> ward::Gateway {
    let (up, _) = upstream().await;
    let cfg = basic_config(up, "", "").replace("admin:\n", &format!("{mllp}admin:\n"));
    env.start(&cfg).await
}

fn mllp_addr(gw: &ward::Gateway) -> SocketAddr {
    gw.addr("hl7").unwrap()
}

/// Read ACK frames from a connection.
async fn read_acks<S: tokio::io::AsyncRead + Unpin>(
    r: &mut FrameReader<S>,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(
            Duration::from_secs(30),
            r.next(Duration::from_secs(30), Duration::from_secs(30)),
        )
        .await
        {
            Ok(Ok(Some(a))) => out.push(a),
            other => panic!("no ACK: {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn python_hl7_mllp_send_through_the_gateway_to_a_tls_upstream_byte_exact() {
    let env = Env::new();
    let (up, got) = mllp_upstream(Some(&env.pki), UpMode::Ack).await;
    let gw = start(
        &env,
        &mllp_section(
            "hl7",
            &format!(
                "      address: localhost:{}\n      ca: certs/ca.pem\n",
                up.port()
            ),
            "    plaintext: true\n",
        ),
    )
    .await;
    // Three messages, one with ISO-8859-1 bytes (declared in MSH-18), framed in one file.
    let mut latin1 = adt("PY-3", "HOSP");
    latin1 = String::from_utf8(latin1)
        .unwrap()
        .replace("|2.5.1\r", "|2.5.1|||||8859/1\r")
        .into_bytes();
    let pos = latin1.windows(10).position(|w| w == b"Testperson").unwrap();
    latin1.splice(pos..pos + 10, b"Ren\xe9".iter().copied());
    let msgs = [adt("PY-1", "HOSP"), adt("PY-2", "HOSP"), latin1];
    let file = env.write("msgs.hl7", "");
    std::fs::write(
        &file,
        msgs.iter().flat_map(|m| framed(m)).collect::<Vec<u8>>(),
    )
    .unwrap();
    let port = mllp_addr(&gw).port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mllp_send")
            .args(["--port", &port, "--file"])
            .arg(&file)
            .arg("127.0.0.1")
            .output()
    })
    .await
    .unwrap()
    .expect("mllp_send runs (pip install hl7; .ci/test does this)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mllp_send failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["PY-1", "PY-2", "PY-3"] {
        assert!(
            stdout.contains(&format!("MSA|AA|{id}")),
            "no AA for {id} in {stdout}"
        );
    }
    // mllp_send sends each message without its final segment terminator (python-hl7
    // strips it); the upstream must get exactly what mllp_send put on the wire.
    let sent: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| m.strip_suffix(b"\r").unwrap_or(m).to_vec())
        .collect();
    assert_eq!(
        got.all(),
        sent,
        "the upstream received every message byte for byte"
    );
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains(
            "ward_mllp_messages_total{listener=\"hl7\",result=\"delivered\",type=\"ADT\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ward_mllp_acks_total{code=\"AA\",listener=\"hl7\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn mutual_tls_senders_are_confined_to_their_facility() {
    let env = Env::new();
    let ca = ClientCa::new("HL7 Client CA");
    let lab = ca.issue("lab-analyser", ClientOpts::default());
    env.write("certs/clients-ca.pem", &ca.pem);
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let extra = format!(
        "{}    senders:\n      - subjects: [lab-analyser]\n        sending_facilities: [LAB]\n",
        tls_section(
            "      client_auth:\n        mode: required\n        ca: [certs/clients-ca.pem]\n"
        )
    );
    let gw = start(
        &env,
        &mllp_section(
            "hl7",
            &format!("      address: 127.0.0.1:{}\n", up.port()),
            &extra,
        ),
    )
    .await;
    let tls = client_tls_with_cert(&env.pki, &lab, &[]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let stream = connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut r = FrameReader::new(stream, 1 << 20);
    write_frame(r.get_mut(), &adt("OK-1", "LAB")).await.unwrap();
    let ack = read_acks(&mut r, 1).await.remove(0);
    assert_eq!(msa(&ack), ("AA".into(), "OK-1".into()));
    // Claiming another facility: refused by the gateway with AR, never forwarded.
    write_frame(r.get_mut(), &adt("SPOOF-1", "ICU"))
        .await
        .unwrap();
    let ack = read_acks(&mut r, 1).await.remove(0);
    assert_eq!(msa(&ack), ("AR".into(), "SPOOF-1".into()));
    let text = String::from_utf8_lossy(&ack);
    assert!(text.contains("ERR|") && text.contains("MSH^1^4"), "{text}");
    assert_eq!(got.all().len(), 1);
    // No client certificate: no handshake.
    let tls = client_tls(&env.pki, &[]);
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let res = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    match res {
        Err(_) => {}
        Ok(mut s) => {
            // TLS 1.3 reports the refusal on first read.
            let _ = s.write_all(&framed(&adt("NOCERT", "LAB"))).await;
            let mut buf = [0u8; 64];
            assert!(
                !matches!(s.read(&mut buf).await, Ok(n) if n > 0),
                "answered without a certificate"
            );
        }
    }
    assert_eq!(got.all().len(), 1);
}

/// A plaintext gateway listener for the framing tests, in front of a plain upstream.
async fn plain_gateway(env: &Env, upstream_addr: &str, extra: &str) -> ward::Gateway {
    start(
        env,
        &mllp_section(
            "hl7",
            &format!("      address: {upstream_addr}\n      ack_timeout: 5s\n"),
            &format!("    plaintext: true\n    max_message_bytes: 4096\n    frame_timeout: 300ms\n{extra}"),
        ),
    )
    .await
}

#[tokio::test]
async fn invalid_messages_get_ae_with_err_and_are_not_forwarded() {
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(
        &env,
        &format!("127.0.0.1:{}", up.port()),
        "    validate:\n      allowed_message_types: [ADT^A01]\n",
    )
    .await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    let bad_date = String::from_utf8(adt("BAD-1", "HOSP"))
        .unwrap()
        .replace("||19700101|", "||1970-01-01|");
    let oru = String::from_utf8(adt("ORU-1", "HOSP"))
        .unwrap()
        .replace("ADT^A01^ADT_A01", "ORU^R01");
    // Pipelined: three messages in one write, answered in order.
    let mut burst = framed(bad_date.as_bytes());
    burst.extend(framed(&adt("GOOD-1", "HOSP")));
    burst.extend(framed(oru.as_bytes()));
    r.get_mut().write_all(&burst).await.unwrap();
    let acks = read_acks(&mut r, 3).await;
    assert_eq!(msa(&acks[0]), ("AE".into(), "BAD-1".into()));
    assert!(
        String::from_utf8_lossy(&acks[0]).contains("PID^1^7"),
        "{:?}",
        String::from_utf8_lossy(&acks[0])
    );
    assert_eq!(msa(&acks[1]), ("AA".into(), "GOOD-1".into()));
    assert_eq!(msa(&acks[2]), ("AR".into(), "ORU-1".into()));
    assert_eq!(got.all(), vec![adt("GOOD-1", "HOSP")]);
}

#[tokio::test]
async fn an_unreachable_or_confused_upstream_never_yields_an_aa() {
    let env = Env::new();
    let dead = dead_addr().await;
    let gw = plain_gateway(&env, &dead.to_string(), "").await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    for i in 0..3 {
        let id = format!("DOWN-{i}");
        write_frame(r.get_mut(), &adt(&id, "HOSP")).await.unwrap();
        let ack = read_acks(&mut r, 1).await.remove(0);
        assert_eq!(msa(&ack), ("AE".into(), id));
        assert!(String::from_utf8_lossy(&ack).contains("not delivered"));
    }
    // An upstream answering with another message's ACK: not relayed as this one's.
    let (up, got) = mllp_upstream(None, UpMode::WrongControlId).await;
    let env2 = Env::new();
    let gw2 = plain_gateway(
        &env2,
        &format!("127.0.0.1:{}", up.port()),
        "    on_upstream_failure: AR\n",
    )
    .await;
    let tcp = TcpStream::connect(mllp_addr(&gw2)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    write_frame(r.get_mut(), &adt("MINE-1", "HOSP"))
        .await
        .unwrap();
    let ack = read_acks(&mut r, 1).await.remove(0);
    assert_eq!(msa(&ack), ("AR".into(), "MINE-1".into()));
    assert_eq!(got.all().len(), 1);
}

#[tokio::test]
async fn framing_attacks_are_contained() {
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(&env, &format!("127.0.0.1:{}", up.port()), "").await;
    let addr = mllp_addr(&gw);

    // Garbage before a start block is discarded (and counted); the message then passes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = b"\x00\xff\xfeGET / HTTP/1.1\r\n\r\n".to_vec();
    bytes.extend(framed(&adt("AFTER-JUNK", "HOSP")));
    s.write_all(&bytes).await.unwrap();
    let mut r = FrameReader::new(s, 1 << 20);
    assert_eq!(
        msa(&read_acks(&mut r, 1).await[0]),
        ("AA".into(), "AFTER-JUNK".into())
    );

    // Two start blocks: the interrupted message gets an AR, the next one goes through.
    let mut bytes = vec![0x0b];
    bytes.extend(b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240315083012||ADT^A01|CUT-1|P|2.5.1\rEVN|A0");
    bytes.extend(framed(&adt("WHOLE-1", "HOSP")));
    r.get_mut().write_all(&bytes).await.unwrap();
    let acks = read_acks(&mut r, 2).await;
    assert_eq!(msa(&acks[0]), ("AR".into(), "CUT-1".into()));
    assert_eq!(msa(&acks[1]), ("AA".into(), "WHOLE-1".into()));

    // Binary garbage inside a frame: AR with an empty MSA-2, nothing forwarded.
    write_frame(r.get_mut(), b"\x01\x02\x03 not hl7")
        .await
        .unwrap();
    assert_eq!(msa(&read_acks(&mut r, 1).await[0]).0, "AR");

    // Oversized: AR, then the connection is closed.
    let mut big = adt("BIG-1", "HOSP");
    big.extend(std::iter::repeat_n(b'x', 8000));
    r.get_mut().write_all(&framed(&big)).await.unwrap();
    assert_eq!(
        msa(&read_acks(&mut r, 1).await[0]),
        ("AR".into(), "BIG-1".into())
    );
    assert_closed(r.get_mut()).await;

    // No end block / a slow sender: the frame timeout closes the connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x0bMSH|^~\\&|LAB|HOSP|").await.unwrap();
    assert_closed(&mut s).await;

    assert_eq!(
        got.all(),
        vec![adt("AFTER-JUNK", "HOSP"), adt("WHOLE-1", "HOSP")]
    );
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    for want in [
        "ward_mllp_frame_errors_total{listener=\"hl7\",reason=\"nested_start\"} 1",
        "ward_mllp_frame_errors_total{listener=\"hl7\",reason=\"too_large\"} 1",
        "ward_mllp_frame_errors_total{listener=\"hl7\",reason=\"frame_timeout\"} 1",
    ] {
        assert!(metrics.contains(want), "missing {want}");
    }
    let discarded = metrics
        .lines()
        .find(|l| l.starts_with("ward_mllp_discarded_bytes_total{listener=\"hl7\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(discarded >= 21, "discarded {discarded}");
}

/// The peer closes: EOF (or reset) within a generous bound, never data.
async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // an ACK still in flight
            Err(_) => panic!("connection not closed"),
        }
    }
}

#[tokio::test]
async fn a_late_extra_ack_never_answers_the_next_message() {
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::DoubleAck).await;
    let gw = plain_gateway(&env, &format!("127.0.0.1:{}", up.port()), "").await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    for id in ["FIRST", "SECOND", "THIRD"] {
        write_frame(r.get_mut(), &adt(id, "HOSP")).await.unwrap();
        let ack = read_acks(&mut r, 1).await.remove(0);
        assert_eq!(
            msa(&ack),
            ("AA".into(), id.into()),
            "each message gets its own ACK"
        );
    }
    assert_eq!(got.all().len(), 3);
}

#[tokio::test]
async fn senders_are_rate_limited_and_matched_on_whole_fields() {
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(
        &env,
        &format!("127.0.0.1:{}", up.port()),
        "    rate_limit: {rate: 3, per: hour}\n    senders:\n      - sending_facilities: [HOSP]\n",
    )
    .await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    write_frame(r.get_mut(), &adt("RL-1", "HOSP"))
        .await
        .unwrap();
    assert_eq!(
        msa(&read_acks(&mut r, 1).await[0]),
        ("AA".into(), "RL-1".into())
    );
    // `HOSP` allows exactly `HOSP`, not HOSP with another universal id.
    write_frame(r.get_mut(), &adt("RL-2", "HOSP^9.9.9^ISO"))
        .await
        .unwrap();
    assert_eq!(
        msa(&read_acks(&mut r, 1).await[0]),
        ("AR".into(), "RL-2".into())
    );
    write_frame(r.get_mut(), &adt("RL-3", "HOSP"))
        .await
        .unwrap();
    assert_eq!(
        msa(&read_acks(&mut r, 1).await[0]),
        ("AA".into(), "RL-3".into())
    );
    // The quota (3 per hour) is spent: AE, retry later; nothing forwarded.
    write_frame(r.get_mut(), &adt("RL-4", "HOSP"))
        .await
        .unwrap();
    let ack = read_acks(&mut r, 1).await.remove(0);
    assert_eq!(msa(&ack), ("AE".into(), "RL-4".into()));
    assert!(String::from_utf8_lossy(&ack).contains("rate limit"));
    assert_eq!(got.all().len(), 2);
}

#[tokio::test]
async fn dlp_rewrites_messages_before_they_are_forwarded_and_blocks_with_ar() {
    let env = Env::new();
    env.write(
        "policies/hl7-deid.yaml",
        "dlp:\n  direction: request\n  detectors:\n    ssn: {}\n    card: { action: block }\n  hl7v2:\n    - field: PID-5\n      action: redact\n    - field: PID-7\n      action: generalize\n",
    );
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(
        &env,
        &format!("127.0.0.1:{}", up.port()),
        "    dlp: hl7-deid\n",
    )
    .await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    let with_ssn = String::from_utf8(adt("DLP-1", "HOSP")).unwrap().replace(
        "PV1|1|I|WARD1^101^A\r",
        "PV1|1|I|WARD1^101^A\rNTE|1||SSN 123-45-6789 on file\r",
    );
    let with_card = String::from_utf8(adt("DLP-2", "HOSP")).unwrap().replace(
        "PV1|1|I|WARD1^101^A\r",
        "PV1|1|I|WARD1^101^A\rNTE|1||card 4111 1111 1111 1111\r",
    );
    let mut burst = framed(with_ssn.as_bytes());
    burst.extend(framed(with_card.as_bytes()));
    r.get_mut().write_all(&burst).await.unwrap();
    let acks = read_acks(&mut r, 2).await;
    // The receiver's own AA for the rewritten message; the gateway's AR for the blocked one.
    assert_eq!(msa(&acks[0]), ("AA".into(), "DLP-1".into()));
    assert_eq!(msa(&acks[1]), ("AR".into(), "DLP-2".into()));
    let all = got.all();
    assert_eq!(all.len(), 1, "the blocked message must not be forwarded");
    let sent = String::from_utf8(all[0].clone()).unwrap();
    assert!(!sent.contains("123-45-6789"), "{sent:?}");
    assert!(sent.contains("NTE|1||SSN [REDACTED] on file\r"), "{sent:?}");
    let pid = sent.split('\r').find(|l| l.starts_with("PID")).unwrap();
    let f: Vec<&str> = pid.split('|').collect();
    assert_eq!(f[5], "");
    assert_eq!(f[7], "1970");
    assert_eq!(f[3], "123456^^^HOSP^MR");
    // MSH is untouched, so the ACK still matches.
    assert!(sent.starts_with("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240315083012||ADT^A01^ADT_A01|DLP-1|"));
    let (_, m) = admin_get(&gw, "/metrics").await;
    assert!(
        m.contains("ward_dlp_findings_total{action=\"redact\",detector=\"ssn\",route=\"hl7\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "ward_mllp_messages_total{listener=\"hl7\",result=\"dlp_blocked\",type=\"ADT\"} 1"
        ),
        "{m}"
    );
    assert!(!m.contains("123-45-6789"));
}

/// MSH-3 is optional in every v2.x version: a message without it is accepted and
/// forwarded byte for byte, unless the listener binds senders to sending applications —
/// then it fails closed (AR naming MSH-3, nothing forwarded). Generated over the shapes of
/// "empty" and the versions.
#[tokio::test]
async fn a_message_without_msh3_is_accepted_unless_a_sender_rule_needs_it() {
    let msgs = || {
        let mut out = Vec::new();
        for (i, empty) in ["", "\"\"", "^", "^^", "&"].iter().enumerate() {
            for (j, version) in ["2.3", "2.4", "2.5.1", "2.8"].iter().enumerate() {
                let id = format!("N3-{i}-{j}");
                let m = String::from_utf8(adt(&id, "HOSP"))
                    .unwrap()
                    .replacen("|LAB|", &format!("|{empty}|"), 1)
                    .replacen("|2.5.1\r", &format!("|{version}\r"), 1);
                out.push((id, m.into_bytes()));
            }
        }
        out
    };
    // No sender rules: every one is accepted and forwarded unchanged.
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(&env, &format!("127.0.0.1:{}", up.port()), "").await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    for (id, m) in msgs() {
        write_frame(r.get_mut(), &m).await.unwrap();
        let ack = read_acks(&mut r, 1).await.remove(0);
        assert_eq!(
            msa(&ack),
            ("AA".into(), id.clone()),
            "{}",
            String::from_utf8_lossy(&ack)
        );
    }
    assert_eq!(
        got.all(),
        msgs().into_iter().map(|(_, m)| m).collect::<Vec<_>>()
    );

    // A sender rule on MSH-3: the same messages are refused (AR, ERR at MSH-3), the
    // sender's own application still passes.
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(
        &env,
        &format!("127.0.0.1:{}", up.port()),
        "    senders:\n      - sending_applications: [LAB]\n",
    )
    .await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    for (id, m) in msgs() {
        write_frame(r.get_mut(), &m).await.unwrap();
        let ack = read_acks(&mut r, 1).await.remove(0);
        assert_eq!(msa(&ack), ("AR".into(), id.clone()));
        assert!(
            String::from_utf8_lossy(&ack).contains("MSH^1^3"),
            "{}",
            String::from_utf8_lossy(&ack)
        );
    }
    assert!(
        got.all().is_empty(),
        "a message without MSH-3 passed a sender rule"
    );
    write_frame(r.get_mut(), &adt("LAB-OK", "HOSP"))
        .await
        .unwrap();
    assert_eq!(
        msa(&read_acks(&mut r, 1).await[0]),
        ("AA".into(), "LAB-OK".into())
    );
    assert_eq!(got.all(), vec![adt("LAB-OK", "HOSP")]);

    // A blank sender entry would let exactly those messages through: a config error.
    for blank in ["\"\"", "\" \""] {
        let cfg = env.write(
            "bad.yaml",
            &basic_config("127.0.0.1:9".parse().unwrap(), "", "").replace(
                "admin:\n",
                &format!(
                    "{}admin:\n",
                    mllp_section(
                        "hl7",
                        "      address: 127.0.0.1:9\n",
                        &format!("    plaintext: true\n    senders:\n      - sending_applications: [{blank}]\n"),
                    )
                ),
            ),
        );
        let errs = config_errors(&cfg);
        assert!(errs.contains("must not be blank"), "{blank}: {errs}");
    }
}

/// A message whose MSH-2 is unusable is refused (AR), but its NAK still carries MSA-2 =
/// MSH-10 when that is plain text, so the sender can match it; an empty frame gets the
/// same AR as on the HTTP path (see tests/validate.rs).
#[tokio::test]
async fn unusable_encoding_characters_get_an_ar_the_sender_can_match() {
    let env = Env::new();
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = plain_gateway(&env, &format!("127.0.0.1:{}", up.port()), "").await;
    let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
    let mut r = FrameReader::new(tcp, 1 << 20);
    for (i, enc) in ["", "^~", "^~\\", "^^\\&", "^~\\&#!", "a~\\&", "^~\\\\"]
        .iter()
        .enumerate()
    {
        let id = format!("ENC-{i}");
        let m = String::from_utf8(adt(&id, "HOSP"))
            .unwrap()
            .replacen("^~\\&", enc, 1);
        write_frame(r.get_mut(), m.as_bytes()).await.unwrap();
        let ack = read_acks(&mut r, 1).await.remove(0);
        assert_eq!(
            msa(&ack),
            ("AR".into(), id),
            "{enc:?}: {}",
            String::from_utf8_lossy(&ack)
        );
    }
    r.get_mut().write_all(&framed(b"")).await.unwrap();
    let ack = read_acks(&mut r, 1).await.remove(0);
    let text = String::from_utf8_lossy(&ack).into_owned();
    assert_eq!(msa(&ack), ("AR".into(), String::new()), "{text}");
    assert!(text.contains("|100^empty message^HL70357|"), "{text}");
    assert!(got.all().is_empty());
}

/// The gateway's one off-worker size rule (`body::OFF_WORKER_BYTES`) holds for MLLP DLP
/// too: messages just below, at and above it are scanned with the same result — the SSN
/// redacted, every other byte forwarded as sent, the receiver's AA relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlp_gives_the_same_result_below_and_above_the_off_worker_size() {
    let env = Env::new();
    env.write(
        "policies/hl7-ssn.yaml",
        "dlp:\n  direction: request\n  detectors:\n    ssn: {}\n",
    );
    let (up, got) = mllp_upstream(None, UpMode::Ack).await;
    let gw = start(
        &env,
        &mllp_section(
            "hl7",
            &format!("      address: 127.0.0.1:{}\n      ack_timeout: 30s\n", up.port()),
            "    plaintext: true\n    max_message_bytes: 1048576\n    frame_timeout: 30s\n    dlp: hl7-ssn\n",
        ),
    )
    .await;
    let t = ward::body::OFF_WORKER_BYTES;
    let mut n = 0;
    for (i, len) in [t - 1, t, t + 1, t + 50_000].into_iter().enumerate() {
        for phi in [false, true] {
            let id = format!("OW-{i}-{phi}");
            let head = String::from_utf8(adt(&id, "HOSP")).unwrap();
            let note = if phi {
                "SSN 123-45-6789 on file"
            } else {
                "nothing to see"
            };
            let mut msg = format!("{head}NTE|1||{note}\r");
            // Filler notes (a field stays below the validator's field-length cap), the
            // last one cut to make the message exactly `len` bytes.
            let mut k = 2;
            while msg.len() < len {
                let seg = format!("NTE|{k}||");
                let rest = len - msg.len() - seg.len() - 1;
                // Never leave less than a whole next segment.
                let room = match rest {
                    0..=1000 => rest,
                    _ if rest - 1000 < 20 => rest - 20,
                    _ => 1000,
                };
                msg.push_str(&seg);
                msg.push_str(&"x".repeat(room));
                msg.push('\r');
                k += 1;
            }
            assert_eq!(msg.len(), len);
            let tcp = TcpStream::connect(mllp_addr(&gw)).await.unwrap();
            let mut r = FrameReader::new(tcp, 1 << 20);
            r.get_mut()
                .write_all(&framed(msg.as_bytes()))
                .await
                .unwrap();
            let ack = read_acks(&mut r, 1).await.remove(0);
            assert_eq!(
                msa(&ack),
                ("AA".into(), id.clone()),
                "len {len} phi {phi}: {}",
                String::from_utf8_lossy(&ack)
            );
            n += 1;
            let all = got.all();
            assert_eq!(all.len(), n);
            let sent = String::from_utf8(all[n - 1].clone()).unwrap();
            let want = if phi {
                msg.replace("SSN 123-45-6789 on file", "SSN [REDACTED] on file")
            } else {
                msg.clone()
            };
            assert!(sent == want, "len {len} phi {phi}: forwarded other bytes");
        }
    }
}
