//! Second sink: RFC 5424 syslog messages over TLS with RFC 5425 octet-counting framing
//! (IHE ATNA's transport). Fed by the writer thread with what is already on disk; the
//! request path never waits on the collector.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

fn default_forward_buffer() -> usize {
    10_000
}

/// RFC 5424 messages over TLS (RFC 5425 octet-counted framing) to a SIEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `host:port` (6514 is the registered port).
    pub address: String,
    /// CA bundle for the collector's certificate.
    pub ca: String,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// Name in the collector's certificate; default: the host of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Records waiting to be forwarded. Beyond it new records are not forwarded (counted
    /// in `ward_audit_forward_total{result="dropped"}`; the file still has them).
    #[serde(default = "default_forward_buffer")]
    pub buffer: usize,
    /// What each message carries: `record` (the chained line, as written) or
    /// `audit_event` (the record as a FHIR R4 AuditEvent, IHE ATNA / BALP; needs
    /// `audit.audit_event`). Records with no AuditEvent form (MLLP, respond events) are
    /// still sent as their line, under MSGID `audit`.
    #[serde(default)]
    pub message: SyslogMessage,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyslogMessage {
    #[default]
    Record,
    AuditEvent,
}

/// RFC 5424 MSGID of a chained record line.
pub(super) const MSGID_RECORD: &str = "audit";
/// RFC 5424 MSGID of an AuditEvent (JSON) message.
pub(super) const MSGID_AUDIT_EVENT: &str = "IHE+FHIR";

pub(super) fn start_syslog(
    cfg: &SyslogConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
    metrics: &crate::metrics::Metrics,
) -> Result<Forwarder, String> {
    let client = match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
        _ => None,
    };
    let cc = crate::tls::upstream_client_config(
        &resolve(&cfg.ca),
        client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map_err(|e| format!("syslog: {e}"))?;
    let host = cfg.server_name.clone().unwrap_or_else(|| {
        cfg.address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .unwrap_or_default()
    });
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|_| "syslog: invalid server name".to_owned())?;
    let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
    let backlog = metrics.audit_forward_backlog.clone();
    tokio::spawn(syslog_sink(
        cfg.clone(),
        tokio_rustls::TlsConnector::from(Arc::new(cc)),
        name,
        rx,
        backlog.clone(),
        metrics.audit_forward.with_label_values(&["sent"]),
        metrics.audit_forward.with_label_values(&["error"]),
    ));
    Ok(Forwarder {
        tx,
        backlog,
        dropped: metrics.audit_forward.with_label_values(&["dropped"]),
    })
}

/// The second sink's queue, fed by the writer thread: (MSGID, MSG).
pub(super) struct Forwarder {
    tx: mpsc::Sender<(&'static str, String)>,
    backlog: prometheus::IntGauge,
    dropped: prometheus::IntCounter,
}

impl Forwarder {
    pub(super) fn offer(&self, msgid: &'static str, msg: String) {
        match self.tx.try_send((msgid, msg)) {
            Ok(()) => self.backlog.inc(),
            Err(_) => self.dropped.inc(),
        }
    }
}

/// Send forwarded records to the syslog collector, reconnecting with backoff; a record
/// is taken off the queue only once written to a connection.
async fn syslog_sink(
    cfg: SyslogConfig,
    tls: tokio_rustls::TlsConnector,
    name: rustls_pki_types::ServerName<'static>,
    mut rx: mpsc::Receiver<(&'static str, String)>,
    backlog: prometheus::IntGauge,
    sent: prometheus::IntCounter,
    failed: prometheus::IntCounter,
) {
    use tokio::io::AsyncWriteExt;
    let host = hostname();
    let mut conn: Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> = None;
    let mut pending: Option<(&'static str, String)> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let line = match pending.take() {
            Some(l) => l,
            None => match rx.recv().await {
                Some(l) => l,
                None => return,
            },
        };
        if conn.is_none() {
            let attempt = async {
                let tcp = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(&cfg.address),
                )
                .await
                .ok()?
                .ok()?;
                tokio::time::timeout(Duration::from_secs(10), tls.connect(name.clone(), tcp))
                    .await
                    .ok()?
                    .ok()
            };
            match attempt.await {
                Some(c) => conn = Some(c),
                None => {
                    failed.inc();
                    pending = Some(line);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        // A collector never writes back: anything readable (EOF, close_notify, a reset)
        // means the connection is gone, and a write would vanish into its buffer.
        if let Some(c) = conn.as_mut() {
            use tokio::io::AsyncReadExt;
            let mut probe = [0u8; 1];
            if tokio::time::timeout(Duration::ZERO, c.read(&mut probe))
                .await
                .is_ok()
            {
                conn = None;
                pending = Some(line);
                continue;
            }
        }
        let msg = syslog_frame(&host, line.0, line.1.trim_end());
        let written = match conn.as_mut() {
            Some(c) => tokio::time::timeout(Duration::from_secs(10), async {
                c.write_all(&msg).await?;
                c.flush().await
            })
            .await
            .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        if written {
            sent.inc();
            backlog.dec();
            backoff = Duration::from_millis(100);
        } else {
            // A collector that accepts and then resets must not be hammered either.
            failed.inc();
            conn = None;
            pending = Some(line);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// RFC 5424 message (facility authpriv, severity notice) with RFC 5425 octet counting.
pub(super) fn syslog_frame(host: &str, msgid: &str, record: &str) -> Vec<u8> {
    let msg = format!(
        "<85>1 {} {host} ward - {msgid} - {record}",
        crate::calendar::rfc3339_now()
    );
    format!("{} {msg}", msg.len()).into_bytes()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}
