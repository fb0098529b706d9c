//! `ward sample-upstream` (the demo's EHR and the compose file's stand-in) is a correct FHIR
//! server: every answer it gives validates against Ward's own R4 validator, and its
//! CapabilityStatement has what clients such as SMART's `fhirclient` require (`date`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET over plain TCP (the sample EHR speaks plain HTTP on loopback).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: ehr\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    (status, buf[end + 4..].to_vec())
}

#[tokio::test]
async fn every_answer_is_valid_r4() {
    let addr = ward::demo::sample_upstream(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let paths = [
        "/fhir/metadata",
        "/fhir/Patient",
        "/fhir/Patient/example-1",
        "/fhir/Patient/example-2",
        "/fhir/Patient/example-3",
        "/fhir/Patient/example-4",
        "/fhir/Patient/example-5",
        "/fhir/Observation",
        "/fhir/Observation/obs-1",
        "/fhir/Observation/obs-2",
        "/fhir/Patient/no-such-id",
        "/fhir/Nothing",
    ];
    for p in paths {
        let (status, body) = get(addr, p).await;
        assert!(status == 200 || status == 404, "{p}: {status}");
        if let Err(issues) =
            ward::fhir::validate::validate_resource(&body, &Default::default(), None)
        {
            panic!(
                "{p}: invalid R4: {issues:?}\n{}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if p == "/fhir/metadata" {
            assert_eq!(v["resourceType"], "CapabilityStatement");
            assert!(v["date"].is_string(), "CapabilityStatement without date");
            assert_eq!(v["fhirVersion"], "4.0.1");
            assert!(v["rest"][0]["resource"][0]["interaction"].is_array());
        }
    }
}
