//! The access log line, written directly: one request's [`Record`] formatted straight into a
//! reusable per-thread buffer and appended to the log writer's batch (`logwriter`).
//!
//! Why: through `tracing::info!` and `tracing_subscriber::fmt` the line cost ≈ 6 µs of CPU
//! per request (event dispatch, a field visitor per field, `serde_json` through a
//! `fmt::Write` adaptor, the timestamp formatted from scratch) on a ≈ 24 µs pass-through.
//! Here it is a handful of copies, hand-formatted integers, `zmij` for the two floats (the
//! formatter `serde_json` itself uses, so the digits are the same) and a timestamp whose
//! `YYYY-MM-DDTHH:MM:SS.` part is cached per second and per thread.
//!
//! The output is the line `tracing_subscriber::fmt` printed for the same event, so
//! operators' parsers keep working: JSON with the same keys, value types and order
//! (`timestamp`, `level`, the fields, `target`), or the text line (timestamp, level, target,
//! `key=value` fields, with the same ANSI styling when colours are on). Unit tests below
//! compare both forms with what `tracing_subscriber` prints for the same record.
//!
//! One source of truth for levels: the tracing filter (`WARD_LOG`, `log.level`) decides,
//! through `tracing::enabled!` on the `ward::access` target (a cached per-callsite verdict).
//! Without an installed direct writer (tests running the gateway in-process, library use),
//! the record goes through `tracing::info!` as before, so nothing is lost. (One difference
//! remains: spans a `trace` filter may enable around the record's drop — hyper's, h2's —
//! are not prefixed to the text line.)
//!
//! Every string field can carry bytes an operator or a client chose (route and listener
//! names from the config, a client certificate's CN): JSON strings are escaped as
//! `serde_json` escapes them; in the text form, strings are Rust-`Debug` quoted as tracing
//! quotes them, and the names tracing printed raw (`listener`, `route`) are printed raw only
//! when they cannot break, forge or disguise the line (nothing `Debug` would escape, no
//! whitespace or `=`), quoted otherwise. Only these fields are logged: no path, query, header or body (PHI).

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use crate::logwriter::BufferedStderr;

/// The tracing target of the access log (what `WARD_LOG=ward::access=off` names).
pub const TARGET: &str = "ward::access";

/// One request, as the access log line states it. Only these fields, never the path,
/// query, headers or body.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub request_id: &'a str,
    pub listener: &'a str,
    pub route: &'a str,
    /// The bounded method label (`metrics::method_label`), so a junk method cannot flood.
    pub method: &'a str,
    pub protocol: http::Version,
    pub status: u16,
    /// The refusal's stable code, `""` when none.
    pub code: &'a str,
    pub head_ms: f64,
    pub duration_ms: f64,
    pub bytes_out: u64,
    pub completed: bool,
    pub client_ip: IpAddr,
    /// The client certificate's display name, `""` when none.
    pub client_cert: &'a str,
    pub tls: bool,
}

/// The line's shape, as `log.format` chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Json,
    /// tracing's default text line; `ansi` as the rest of the log has it (colours unless
    /// `NO_COLOR` is set).
    Text {
        ansi: bool,
    },
}

struct Direct {
    style: Style,
    writer: BufferedStderr,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// Write access lines directly into `writer` from now on (once per process; the CLI calls
/// this beside installing the tracing subscriber, with the same format). A second call is
/// ignored (returns `false`).
pub fn install(style: Style, writer: BufferedStderr) -> bool {
    DIRECT.set(Direct { style, writer }).is_ok()
}

thread_local! {
    /// The line being built (reused: no allocation per request once warm).
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// `(unix second, "YYYY-MM-DDTHH:MM:SS.")`: the timestamp's per-second part.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Log one request, if the filter lets `ward::access` INFO through.
pub fn log(rec: &Record<'_>) {
    log_via(DIRECT.get(), rec);
}

fn log_via(direct: Option<&Direct>, rec: &Record<'_>) {
    // The tracing filter's verdict for this callsite (cached by tracing: an atomic load
    // when the filter's answer does not depend on the span). An event callsite with the
    // event's fields (the default kind, a "hint", would let `EnvFilter` ignore field-name
    // directives such as `[{client_cert}]=info`), so it decides as the event did.
    if !tracing::enabled!(
        kind: tracing::metadata::Kind::EVENT,
        target: "ward::access",
        tracing::Level::INFO,
        request_id,
        listener,
        route,
        method,
        protocol,
        status,
        code,
        head_ms,
        duration_ms,
        bytes_out,
        completed,
        client_ip,
        client_cert,
        tls
    ) {
        return;
    }
    let Some(d) = direct else {
        return emit_tracing(rec);
    };
    let now = std::time::SystemTime::now();
    LINE.with(|line| {
        // Re-entry is impossible (nothing here logs), but never panic on it.
        let Ok(mut line) = line.try_borrow_mut() else {
            return emit_tracing(rec);
        };
        line.clear();
        format(d.style, rec, now, &mut line);
        d.writer.append(&line);
        if line.capacity() > 16 * 1024 {
            *line = Vec::with_capacity(512);
        }
    })
}

/// The record through `tracing::info!`, as the access log was written before: the fallback
/// without a direct writer, and the reference the tests compare against.
pub fn emit_tracing(rec: &Record<'_>) {
    tracing::info!(
        target: "ward::access",
        request_id = rec.request_id,
        listener = %rec.listener,
        route = %rec.route,
        method = rec.method,
        protocol = ?rec.protocol,
        status = rec.status,
        code = rec.code,
        head_ms = rec.head_ms,
        duration_ms = rec.duration_ms,
        bytes_out = rec.bytes_out,
        completed = rec.completed,
        client_ip = %rec.client_ip,
        client_cert = rec.client_cert,
        tls = rec.tls,
    );
}

/// Format one line (with its `\n`) for `now` into `out`.
pub fn format(style: Style, rec: &Record<'_>, now: std::time::SystemTime, out: &mut Vec<u8>) {
    match style {
        Style::Json => format_json(rec, now, out),
        Style::Text { ansi } => format_text(rec, now, ansi, out),
    }
}

/// `{"timestamp":…,"level":"INFO",<fields>,"target":"ward::access"}` — the key order of
/// `tracing_subscriber`'s JSON with `flatten_event(true)`.
pub fn format_json(rec: &Record<'_>, now: std::time::SystemTime, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(now, out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
    json_str(rec.request_id, out);
    out.extend_from_slice(b",\"listener\":");
    json_str(rec.listener, out);
    out.extend_from_slice(b",\"route\":");
    json_str(rec.route, out);
    out.extend_from_slice(b",\"method\":");
    json_str(rec.method, out);
    out.extend_from_slice(b",\"protocol\":\"");
    protocol(rec.protocol, out);
    out.extend_from_slice(b"\",\"status\":");
    push_u64(u64::from(rec.status), out);
    out.extend_from_slice(b",\"code\":");
    json_str(rec.code, out);
    out.extend_from_slice(b",\"head_ms\":");
    json_f64(rec.head_ms, out);
    out.extend_from_slice(b",\"duration_ms\":");
    json_f64(rec.duration_ms, out);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(rec.bytes_out, out);
    out.extend_from_slice(b",\"completed\":");
    out.extend_from_slice(if rec.completed { b"true" } else { b"false" });
    out.extend_from_slice(b",\"client_ip\":\"");
    ip(rec.client_ip, out);
    out.extend_from_slice(b"\",\"client_cert\":");
    json_str(rec.client_cert, out);
    out.extend_from_slice(b",\"tls\":");
    out.extend_from_slice(if rec.tls { b"true" } else { b"false" });
    out.extend_from_slice(b",\"target\":\"ward::access\"}\n");
}

// nu-ansi-term's sequences, as tracing_subscriber's `Full` format paints with them.
const DIM: &[u8] = b"\x1b[2m";
const ITALIC: &[u8] = b"\x1b[3m";
const GREEN: &[u8] = b"\x1b[32m";
const RESET: &[u8] = b"\x1b[0m";

/// tracing_subscriber's default (`Full`) text line:
/// `<timestamp>  INFO ward::access: request_id="…" listener=… …`.
pub fn format_text(rec: &Record<'_>, now: std::time::SystemTime, ansi: bool, out: &mut Vec<u8>) {
    if ansi {
        out.extend_from_slice(DIM);
        timestamp(now, out);
        out.extend_from_slice(RESET);
        out.push(b' ');
        out.extend_from_slice(GREEN);
        out.extend_from_slice(b" INFO");
        out.extend_from_slice(RESET);
        out.push(b' ');
        out.extend_from_slice(DIM);
        out.extend_from_slice(TARGET.as_bytes());
        out.extend_from_slice(RESET);
        out.extend_from_slice(DIM);
        out.push(b':');
        out.extend_from_slice(RESET);
        out.push(b' ');
    } else {
        timestamp(now, out);
        out.extend_from_slice(b"  INFO ward::access: ");
    }
    let key = |name: &str, first: bool, out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        if ansi {
            out.extend_from_slice(ITALIC);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(RESET);
            out.extend_from_slice(DIM);
            out.push(b'=');
            out.extend_from_slice(RESET);
        } else {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
        }
    };
    key("request_id", true, out);
    debug_str(rec.request_id, out);
    key("listener", false, out);
    text_name(rec.listener, out);
    key("route", false, out);
    text_name(rec.route, out);
    key("method", false, out);
    debug_str(rec.method, out);
    key("protocol", false, out);
    protocol(rec.protocol, out);
    key("status", false, out);
    push_u64(u64::from(rec.status), out);
    key("code", false, out);
    debug_str(rec.code, out);
    key("head_ms", false, out);
    let _ = write!(out, "{:?}", rec.head_ms);
    key("duration_ms", false, out);
    let _ = write!(out, "{:?}", rec.duration_ms);
    key("bytes_out", false, out);
    push_u64(rec.bytes_out, out);
    key("completed", false, out);
    out.extend_from_slice(if rec.completed { b"true" } else { b"false" });
    key("client_ip", false, out);
    ip(rec.client_ip, out);
    key("client_cert", false, out);
    debug_str(rec.client_cert, out);
    key("tls", false, out);
    out.extend_from_slice(if rec.tls { b"true" } else { b"false" });
    out.push(b'\n');
}

/// `http::Version`'s `Debug` form, as `protocol = ?version` printed it.
fn protocol(v: http::Version, out: &mut Vec<u8>) {
    let s: &[u8] = match v {
        http::Version::HTTP_09 => b"HTTP/0.9",
        http::Version::HTTP_10 => b"HTTP/1.0",
        http::Version::HTTP_11 => b"HTTP/1.1",
        http::Version::HTTP_2 => b"HTTP/2.0",
        http::Version::HTTP_3 => b"HTTP/3.0",
        // A future version: its Debug form is ASCII without quotes or controls.
        other => {
            let _ = write!(out, "{other:?}");
            return;
        }
    };
    out.extend_from_slice(s);
}

fn ip(a: IpAddr, out: &mut Vec<u8>) {
    match a {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(u64::from(o), out);
            }
        }
        // Rare on the request path; std's formatting handles the zero-run compression.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// `n` as exactly `width` digits (zero-padded; `n` is below 10^width).
fn push_fixed(n: u32, width: usize, out: &mut Vec<u8>) {
    let mut tmp = [b'0'; 10];
    let mut n = n;
    for k in (0..width).rev() {
        tmp[k] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&tmp[..width]);
}

/// A JSON number as `serde_json` writes an `f64` (same formatter), `null` when not finite.
fn json_f64(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string with `serde_json`'s escapes: `\"`, `\\`, `\b \f \n \r \t`, other C0
/// controls as `\u00xx`; everything else (UTF-8 included) as is.
pub fn json_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// A string as Rust's `Debug` quotes it (what tracing's text format prints for a `&str`
/// field): plain printable ASCII is copied, anything else goes through `Debug` itself.
fn debug_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes()
        .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// A name tracing printed with `Display` (`listener`, `route`): raw when it cannot break,
/// forge or disguise the line — nothing `Debug` would escape (controls, bidi overrides and
/// other invisible characters), no whitespace, `=` or quote — `Debug`-quoted otherwise.
fn text_name(s: &str, out: &mut Vec<u8>) {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c == '\'' || (c.escape_debug().len() == 1 && !c.is_whitespace() && c != '='));
    if plain {
        out.extend_from_slice(s.as_bytes());
    } else {
        debug_str(s, out);
    }
}

/// A text access line read back (colours already removed): its timestamp and its
/// `key=value` fields in order, values unquoted — the inverse of [`format_text`], for tools
/// that read the log (and the tests). `None` when the line is not an access line or a quoted
/// value is cut short or malformed.
pub fn text_fields(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let (ts, rest) = line.split_once("  INFO ward::access: ")?;
    let rest = rest.strip_suffix('\n').unwrap_or(rest);
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        'n' => val.push('\n'),
                        'r' => val.push('\r'),
                        't' => val.push('\t'),
                        '0' => val.push('\0'),
                        'u' => {
                            if chars.next()? != '{' {
                                return None;
                            }
                            let hex: String = chars.by_ref().take_while(|c| *c != '}').collect();
                            val.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        other => val.push(other),
                    },
                    c => val.push(c),
                }
            }
            if !matches!(chars.next(), None | Some(' ')) {
                return None;
            }
        } else {
            for c in chars.by_ref() {
                if c == ' ' {
                    break;
                }
                val.push(c);
            }
        }
        out.push((key, val));
    }
    Some((ts.to_owned(), out))
}

/// tracing_subscriber's RFC 3339 form: `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (UTC, microseconds).
fn timestamp(now: std::time::SystemTime, out: &mut Vec<u8>) {
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let cached = SECOND.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return false;
        };
        if c.0 != secs {
            c.1.clear();
            second_prefix(secs, &mut c.1);
            c.0 = secs;
        }
        out.extend_from_slice(&c.1);
        true
    });
    if !cached {
        second_prefix(secs, out);
    }
    push_fixed(d.subsec_micros(), 6, out);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for a Unix second (years past 9999 as tracing prints them).
fn second_prefix(secs: u64, out: &mut Vec<u8>) {
    let (y, m, d) = crate::calendar::civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    if y > 9999 {
        let _ = write!(out, "+{y}");
    } else {
        push_fixed(u32::try_from(y).unwrap_or(0), 4, out);
    }
    out.push(b'-');
    push_fixed(m, 2, out);
    out.push(b'-');
    push_fixed(d, 2, out);
    out.push(b'T');
    push_fixed((rem / 3600) as u32, 2, out);
    out.push(b':');
    push_fixed((rem % 3600 / 60) as u32, 2, out);
    out.push(b':');
    push_fixed((rem % 60) as u32, 2, out);
    out.push(b'.');
}

#[cfg(test)]
mod tests;
