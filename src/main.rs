//! The `ward` command: run, check, demo.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use ward::config::{self, LogFormat};

// glibc malloc showed up as ~12% of CPU under load (many small per-request allocations in
// hyper and http); mimalloc roughly halves that cost.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ward", version, about = "Ward: a hardened HL7/FHIR gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Once listening, write `<listener> <address>` lines here (the admin listener as
        /// `admin`): for scripts that bind port 0.
        #[arg(long)]
        addresses_file: Option<PathBuf>,
        /// Threads serving requests (default: the CPUs this process may run on, as limited
        /// by its affinity mask or cgroup). With 1, everything runs on one event loop.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// Validate a config and its policies; print every error as file:line: key: message.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a demo: example certificates, a sample FHIR upstream, and the gateway on
    /// https://127.0.0.1:8443 (admin on 127.0.0.1:9901).
    #[cfg(feature = "demo")]
    Demo,
    /// Write a safe first ward.yaml and policies/ from the EHR's CapabilityStatement and the
    /// identity provider's discovery document (asks, or `--non-interactive` with flags).
    Init(Box<ward::init::InitArgs>),
    /// Mint a signed JWT for demos and tests (never for production identities).
    #[cfg(feature = "demo")]
    Token(Box<TokenArgs>),
    /// Serve the demo's fictitious FHIR server alone (a stand-in EHR for compose setups).
    #[cfg(feature = "demo")]
    SampleUpstream {
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: std::net::SocketAddr,
        /// Once listening, write `sample-ehr <address>` here: for scripts that bind port 0.
        #[arg(long)]
        addresses_file: Option<PathBuf>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Block an identity or address through a running gateway's admin API.
    Block {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// Why (kept with the block, shown in `ward blocks`).
        #[arg(long)]
        reason: String,
        /// How long: `90s`, `15m`, `1h` (at most 168h).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Lift a block.
    Unblock {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List the blocks in force (JSON).
    Blocks {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a config (and a running gateway) for unsafe settings; ranked findings with
    /// the fix for each. Exit 0 none/info, 1 low/medium, 2 high, 3 critical.
    Doctor(Box<ward::doctor::DoctorArgs>),
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway's admin listener, `host:port`.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// File holding the operator token (first line).
    #[arg(long)]
    token_file: PathBuf,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// A token subject (`alice`, or `issuer|alice` for one issuer only).
    #[arg(long)]
    sub: Option<String>,
    #[arg(long)]
    client_id: Option<String>,
    /// SHA-256 of the client certificate, hex.
    #[arg(long)]
    cert: Option<String>,
    #[arg(long)]
    ip: Option<String>,
    #[arg(long)]
    cidr: Option<String>,
}

impl TargetArgs {
    fn json(&self) -> serde_json::Value {
        let (kind, v) = match self {
            TargetArgs { sub: Some(v), .. } => ("sub", v),
            TargetArgs {
                client_id: Some(v), ..
            } => ("client_id", v),
            TargetArgs { cert: Some(v), .. } => ("cert_sha256", v),
            TargetArgs { ip: Some(v), .. } => ("ip", v),
            TargetArgs { cidr: Some(v), .. } => ("cidr", v),
            _ => ("sub", &String::new()),
        };
        serde_json::json!({"kind": kind, "value": v})
    }
}

/// One call to the admin API (plain HTTP/1.1, the admin listener's protocol).
async fn admin_call(
    a: &AdminArgs,
    method: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = std::fs::read_to_string(&a.token_file)?;
    let token = token.lines().next().unwrap_or("").trim().to_owned();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(&a.admin).await?;
    let req = format!(
        "{method} /blocks HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        a.admin,
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked answers are not used by the admin listener for these small bodies.
    Ok((status, body.to_owned()))
}

fn admin_cli(
    rt: &tokio::runtime::Runtime,
    a: &AdminArgs,
    method: &str,
    body: Option<serde_json::Value>,
    ok: u16,
) -> ExitCode {
    match rt.block_on(admin_call(a, method, body)) {
        Ok((status, body)) if status == ok => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("admin API answered {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot reach the admin API at {}: {e}", a.admin);
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of audit files (oldest first: rotated files, then the current
    /// one). Exit 0 intact, 1 a record was modified, 2 records reordered, 3 a record is
    /// missing, 4 malformed or unreadable.
    Verify {
        /// HMAC key file, if the trail was written with `audit.key_file`.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[cfg(feature = "demo")]
#[derive(clap::Args)]
struct TokenArgs {
    /// Private key (PEM: EC P-256/P-384, RSA, or Ed25519).
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    sub: String,
    #[arg(long, default_value = "")]
    scope: String,
    /// SMART launch context patient id.
    #[arg(long)]
    patient: Option<String>,
    #[arg(long, default_value = "15m")]
    ttl: String,
    #[arg(long)]
    kid: Option<String>,
    #[arg(long, default_value = ward::demo::DEMO_ISSUER)]
    iss: String,
    #[arg(long, default_value = ward::demo::DEMO_AUDIENCE)]
    aud: String,
    /// Algorithm; by default ES256 (EC P-256), ES384 (P-384), RS256 (RSA) or EdDSA.
    #[arg(long)]
    alg: Option<String>,
    /// Bind the token to this client certificate (RFC 8705 cnf.x5t#S256).
    #[arg(long)]
    bind_cert: Option<PathBuf>,
}

/// Logs go to stderr through a batching writer thread (see `ward::logwriter`); keep the
/// returned guard until exit so the last lines are written. The access log line is
/// formatted by `ward::accesslog` straight into that writer (same line, a fraction of the
/// cost), with the same format and colours as the subscriber and under its filter.
fn init_logging(format: LogFormat, level: &str) -> Option<ward::logwriter::Guard> {
    let filter = EnvFilter::try_from_env("WARD_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = match ward::logwriter::start() {
        Ok((w, g)) => (Some(w), Some(g)),
        Err(e) => {
            eprintln!("cannot start the log writer thread ({e}); logging unbuffered");
            (None, None)
        }
    };
    // tracing_subscriber's own default (colours unless NO_COLOR is set and non-empty),
    // made explicit so the direct access line agrees with the rest of the log.
    let ansi = std::env::var("NO_COLOR").map_or(true, |v| v.is_empty());
    if let Some(w) = &writer {
        let style = match format {
            LogFormat::Json => ward::accesslog::Style::Json,
            LogFormat::Text => ward::accesslog::Style::Text { ansi },
        };
        ward::accesslog::install(style, w.clone());
    }
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match (format, writer) {
        (LogFormat::Json, Some(w)) => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(w)
            .init(),
        (LogFormat::Json, None) => b
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Text, Some(w)) => b.with_ansi(ansi).with_writer(w).init(),
        (LogFormat::Text, None) => b.with_ansi(ansi).with_writer(std::io::stderr).init(),
    }
    guard
}

fn print_errors(errs: &[config::ConfigError]) {
    for e in errs {
        eprintln!("{e}");
    }
    eprintln!("{} error(s)", errs.len());
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The event loop(s). On one CPU (the common small VM beside an EHR, or a gateway pinned to
/// a core) a single-threaded runtime: the work-stealing scheduler's cross-thread wakeups and
/// atomics buy nothing there and cost ~8-12 % of CPU per proxied request (measured with
/// `taskset -c 1` against the multi-threaded runtime with one worker). Blocking work (file
/// reloads, large-body DLP) still goes to tokio's blocking pool either way.
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let n = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if n <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.cmd {
        Cmd::Run { workers, .. } => workers.map(usize::from),
        _ => None,
    };
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.cmd {
        Cmd::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                // Warnings go to stderr and do not fail the check.
                for w in config::warnings(&config, &cfg) {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} listeners, {} upstreams, {} routes, {} policies)",
                    config.display(),
                    cfg.listeners.len(),
                    cfg.upstreams.len(),
                    cfg.routes.len(),
                    cfg.policies.len()
                );
                ExitCode::SUCCESS
            }
            Err(errs) => {
                print_errors(&errs);
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            config,
            addresses_file,
            ..
        } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(errs) => {
                    print_errors(&errs);
                    return ExitCode::FAILURE;
                }
            };
            let _log = init_logging(cfg.log.format, &cfg.log.level);
            match rt.block_on(ward::run_with(
                cfg,
                shutdown_signal(),
                addresses_file.as_deref(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "ward failed");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { key, files },
        } => {
            let verdict = ward::audit::verify(&files, key.as_deref());
            match &verdict {
                ward::audit::Verdict::Ok {
                    records,
                    first,
                    last,
                } => println!("ok: {records} records, seq {first} to {last}, chain intact"),
                other => eprintln!("audit verify: {other:?}"),
            }
            ExitCode::from(verdict.exit_code())
        }
        Cmd::Block {
            admin,
            target,
            reason,
            ttl,
        } => {
            let Some(d) = ward::config::parse_duration(&ttl) else {
                eprintln!("--ttl: expected a duration such as 15m or 1h (at most 168h)");
                return ExitCode::FAILURE;
            };
            let body = serde_json::json!({"target": target.json(), "reason": reason, "ttl_secs": d.as_secs()});
            admin_cli(&rt, &admin, "POST", Some(body), 201)
        }
        Cmd::Unblock { admin, target } => {
            let body = serde_json::json!({"target": target.json()});
            admin_cli(&rt, &admin, "DELETE", Some(body), 200)
        }
        Cmd::Blocks { admin } => admin_cli(&rt, &admin, "GET", None, 200),
        Cmd::Doctor(args) => ExitCode::from(rt.block_on(ward::doctor::main(&args))),
        #[cfg(feature = "demo")]
        Cmd::SampleUpstream {
            bind,
            addresses_file,
        } => {
            let _log = init_logging(LogFormat::Json, "info");
            let served = rt.block_on(async {
                let addr = ward::demo::sample_upstream(bind).await?;
                tracing::info!(%addr, "sample FHIR upstream (fictitious data) listening");
                if let Some(f) = &addresses_file {
                    ward::gateway::write_atomically(f, &format!("sample-ehr {addr}\n"))?;
                }
                shutdown_signal().await;
                Ok::<_, std::io::Error>(())
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sample-upstream: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Init(a) => ward::init::main(&rt, *a),
        #[cfg(feature = "demo")]
        Cmd::Token(t) => match mint(&t) {
            Ok(tok) => {
                println!("{tok}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ward token: {e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "demo")]
        Cmd::Demo => {
            let _log = init_logging(LogFormat::Text, "info");
            match rt.block_on(demo()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(feature = "demo")]
fn mint(t: &TokenArgs) -> Result<String, String> {
    let ttl = config::parse_duration(&t.ttl).ok_or("--ttl: use e.g. 15m, 1h")?;
    let pem = std::fs::read(&t.key)
        .map_err(|e| format!("cannot read {}: {}", t.key.display(), e.kind()))?;
    let cnf = match &t.bind_cert {
        Some(p) => {
            let certs = ward::tls::load_certs(p)?;
            let id = ward::identity::ClientIdentity::from_der(&certs[0])
                .ok_or("cannot parse --bind-cert")?;
            Some(id.x5t_s256)
        }
        None => None,
    };
    ward::demo::mint_token(
        &pem,
        t.alg.as_deref(),
        &ward::demo::TokenSpec {
            iss: &t.iss,
            aud: &t.aud,
            sub: &t.sub,
            scope: &t.scope,
            patient: t.patient.as_deref(),
            ttl,
            kid: t.kid.as_deref(),
            cnf_x5t: cnf.as_deref(),
        },
    )
}

#[cfg(feature = "demo")]
async fn demo() -> anyhow::Result<()> {
    let dir = ward::demo::demo_dir();
    if ward::demo::ensure_certs(&dir)? {
        println!("made demo certificates and token keys in {}", dir.display());
    } else {
        println!("reusing demo certificates in {}", dir.display());
    }
    // Absolute paths keep the generated config valid wherever it is loaded from.
    let dir = std::fs::canonicalize(&dir)?;
    ward::demo::write_demo_policies(&dir.join("policies"))?;
    if ward::demo::ensure_demo_state(&dir)? {
        println!(
            "made the demo operator token {}",
            dir.join(ward::demo::OPERATOR_TOKEN).display()
        );
    }
    let upstream = ward::demo::sample_upstream(([127, 0, 0, 1], 0).into()).await?;
    let mllp_upstream = ward::demo::sample_mllp_upstream(([127, 0, 0, 1], 0).into()).await?;
    let cfg_path = dir.join("ward-demo.yaml");
    std::fs::write(
        &cfg_path,
        ward::demo::demo_config(&dir, upstream, mllp_upstream),
    )?;
    // The sample message, framed for MLLP (0x0B … 0x1C 0x0D), ready to send.
    let mut framed = vec![0x0b];
    framed.extend_from_slice(ward::demo::DEMO_ADT_A01.as_bytes());
    framed.extend_from_slice(&[0x1c, 0x0d]);
    std::fs::write(dir.join("adt_a01.mllp"), framed)?;
    let cfg = config::load(&cfg_path).map_err(|errs| {
        print_errors(&errs);
        anyhow::anyhow!("demo config invalid")
    })?;
    let token_key = dir.join(ward::demo::TOKEN_KEY);
    let token = ward::demo::mint_token(
        &std::fs::read(&token_key)?,
        None,
        &ward::demo::TokenSpec {
            iss: ward::demo::DEMO_ISSUER,
            aud: ward::demo::DEMO_AUDIENCE,
            sub: "demo-clinician",
            scope: "patient/*.read",
            patient: None,
            ttl: std::time::Duration::from_secs(3600),
            kid: None,
            cnf_x5t: None,
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let patient_token = ward::demo::mint_token(
        &std::fs::read(&token_key)?,
        None,
        &ward::demo::TokenSpec {
            iss: ward::demo::DEMO_ISSUER,
            aud: ward::demo::DEMO_AUDIENCE,
            sub: "demo-patient-app",
            scope: "launch/patient patient/*.read",
            patient: Some("example-1"),
            ttl: std::time::Duration::from_secs(3600),
            kid: None,
            cnf_x5t: None,
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ward".into());
    let d = dir.display();
    // The audit, detect-and-respond and break-glass walkthrough is printed from the
    // tutorial script itself, so what the demo prints is what the tests run.
    let mut walkthrough = format!(
        "  # audit trail, detect and respond, break-glass, SMART discovery (the same commands as docs/tutorial.sh):\n  D='{d}' GW=https://localhost:8443 ADMIN=127.0.0.1:9901 WARD='{exe}'\n"
    );
    for name in [
        "tokens",
        "exfiltration",
        "operators",
        "break-glass",
        "audit",
        "discovery",
    ] {
        for line in ward::demo::tutorial_section(name)
            .unwrap_or_default()
            .lines()
        {
            walkthrough.push_str(&format!("  {line}\n").replace("  \n", "\n"));
        }
        walkthrough.push('\n');
    }
    println!(
        r#"
Ward demo: gateway https://127.0.0.1:8443 -> sample FHIR upstream http://{upstream} (fictitious data)
Config written to {cfg}. Try:

  # open route
  curl --cacert {d}/ca.pem https://localhost:8443/fhir/Patient/example-1
  curl --cacert {d}/ca.pem --http2 https://localhost:8443/fhir/Observation
  curl --cacert {d}/ca.pem -X POST -H 'content-type: application/fhir+json' \
       -d '{{"resourceType":"Patient","name":[{{"family":"Demo"}}]}}' https://localhost:8443/fhir/Patient
  # validated before the EHR sees it: 400 with an OperationOutcome naming each problem
  # (Patient.gender not in its value set, Patient.birthDate not a date, Patient.name required):
  curl --cacert {d}/ca.pem -X POST -H 'content-type: application/fhir+json' \
       -d '{{"resourceType":"Patient","gender":"robot","birthDate":"1970-13-01"}}' https://localhost:8443/fhir/Patient
  curl --cacert {d}/ca.pem -X POST -H 'content-type: application/fhir+xml' -d '<Patient/>' https://localhost:8443/fhir/Patient  # 415
  curl --cacert {d}/ca.pem 'https://localhost:8443/fhir/%2e%2e/admin'      # 400 path_encoded_dot
  curl --cacert {d}/ca.pem https://localhost:8443/nothing-here             # 404, OperationOutcome

  # data-loss prevention (HIPAA Safe Harbor preset): the same Patient, raw and de-identified
  curl --cacert {d}/ca.pem https://localhost:8443/fhir/Patient/example-3
  curl --cacert {d}/ca.pem https://localhost:8443/deid/fhir/Patient/example-3
  #   -> SSN, phone, name, street gone; card **** **** **** 1111; ZIP 011; birth year only
  #      (1931 is more than 89 years ago: aggregated); meta.security REDACTED
  curl -s http://127.0.0.1:9901/metrics | grep ^ward_dlp_findings_total

  # client certificate required (401 client_cert_required without --cert)
  curl --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client.key https://localhost:8443/mtls/fhir/Patient/example-1

  # bearer token required (401 token_missing without it); valid for 1 hour:
  TOKEN={token}
  curl --cacert {d}/ca.pem -H "Authorization: Bearer $TOKEN" https://localhost:8443/secure/fhir/Patient
  # mint another:
  TOKEN=$({exe} token --key {d}/{key} --sub demo-clinician --scope 'patient/*.read')
  # this route allows each user a burst of 5 reads (a search costs 2; 10 per minute after):
  LOOPTOKEN=$({exe} token --key {d}/{key} --sub demo-loop --scope 'patient/*.read')
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' --cacert {d}/ca.pem \
    -H "Authorization: Bearer $LOOPTOKEN" https://localhost:8443/secure/fhir/Patient/example-1; done; echo
  #   -> 200 200 200 200 200 429; the 429 carries Retry-After and RateLimit headers:
  curl -si --cacert {d}/ca.pem -H "Authorization: Bearer $LOOPTOKEN" https://localhost:8443/secure/fhir/Patient/example-1 | grep -i -E '^(HTTP|retry-after|ratelimit)'

  # patient-facing app for example-1 (SMART patient scope + launch context):
  PTOKEN={patient_token}
  curl --cacert {d}/ca.pem -H "Authorization: Bearer $PTOKEN" https://localhost:8443/patient/fhir/Observation        # only example-1's
  curl --cacert {d}/ca.pem -H "Authorization: Bearer $PTOKEN" https://localhost:8443/patient/fhir/Observation/obs-2  # 404: example-2's record
  curl --cacert {d}/ca.pem -H "Authorization: Bearer $PTOKEN" 'https://localhost:8443/patient/fhir/Observation?patient=example-2'  # 403

  # HL7 v2 over MLLP with mutual TLS (sample receiver behind; ADT^A01 framed in adt_a01.mllp):
  openssl s_client -quiet -connect 127.0.0.1:2575 -CAfile {d}/ca.pem -cert {d}/client.pem \
    -key {d}/client.key < {d}/adt_a01.mllp | tr '\r' '\n'        # MSA|AA|DEMO-0001; Ctrl-C
  # or, with python-hl7 (pip install hl7) through a local TLS tunnel of your choice:
  #   mllp_send --file {d}/adt_a01.mllp --port <tunnel port> 127.0.0.1

  # operations
  curl http://127.0.0.1:9901/readyz
  curl -s http://127.0.0.1:9901/metrics | grep ^ward_requests_total
  curl -s http://127.0.0.1:9901/metrics | grep ^ward_rate_limited_total

{walkthrough}Audit trail: {audit} (the /secure and /patient routes).
Ctrl-C to stop.
"#,
        audit = dir.join(ward::demo::AUDIT_FILE).display(),
        cfg = cfg_path.display(),
        key = ward::demo::TOKEN_KEY,
    );
    ward::run(cfg, shutdown_signal()).await
}
