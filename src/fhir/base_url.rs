//! Base-URL rewriting: the upstream's base URL (its internal host name, port and path) is
//! replaced by the gateway's public base wherever a FHIR server writes its own address —
//! `Location`/`Content-Location`/`Link` headers, `Bundle.link.url`, `entry.fullUrl`,
//! `entry.response.location`, `CapabilityStatement.implementation.url`, and the free text of
//! `OperationOutcome` issues — so an internal host name never reaches a client.
//!
//! Matching works on the parsed URL, not on spelling: scheme and host compare without case,
//! a trailing dot on the host and percent-escapes in it are undone, an explicit default port
//! equals the implicit one. JSON escapes (`https:\/\/ehr`, `\u0065hr`) are undone by parsing
//! the body; the byte prefilter ([`BaseSet::may_occur`]) therefore also fires on `\u00`.
//!
//! Three fates for a URL-valued member: under an upstream base → rewritten onto the public
//! base; on an upstream host but outside its base (another port, another path) → removed (a
//! gateway route for it cannot be assumed, and keeping it would name the internal host);
//! anything else → kept. In free text, base URLs are rewritten and any other mention of an
//! upstream host is masked as `[upstream]`.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use serde_json::Value;

/// Stands in for an upstream host mentioned in free text outside a base URL.
pub const MASK: &str = "[upstream]";

/// One upstream base: `scheme://host[:port][/path]`, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    host: String,
    port: u16,
    /// Without a trailing slash; empty for the root.
    path: String,
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

fn pct_decode_host(h: &str) -> String {
    let b = h.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|x| u8::from_str_radix(x, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// An absolute http(s) URL split as `(host, port, index where the path starts)`.
fn split_absolute(s: &str) -> Option<(String, u16, usize)> {
    let (scheme, rest) = s.split_once("://")?;
    let port_default = default_port(scheme)?;
    let start = scheme.len() + 3;
    let auth_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_len];
    // Userinfo is not part of the host.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        None | Some("") => port_default,
        Some(p) if p.bytes().all(|c| c.is_ascii_digit()) => {
            p.trim_start_matches('0').parse::<u16>().ok().or(Some(0))?
        }
        Some(_) => return None,
    };
    let host = pct_decode_host(&host);
    let host = host.trim_end_matches('.').to_owned();
    Some((host, port, start + auth_len))
}

impl Base {
    /// `scheme://authority[/path]`: no query, fragment or credentials.
    pub fn parse(url: &str) -> Result<Base, String> {
        let (host, port, path_at) =
            split_absolute(url).ok_or("expected an http:// or https:// URL with a host")?;
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        if url[..path_at].contains('@') {
            return Err("credentials in the URL are not allowed".into());
        }
        let path = &url[path_at..];
        if path.contains(['?', '#']) {
            return Err("the URL must not have a query or fragment".into());
        }
        Ok(Base {
            host,
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Where the part after this base starts in `s`, if `s` is under it.
    fn rest_at(&self, s: &str) -> Option<usize> {
        let (host, port, path_at) = split_absolute(s)?;
        if host != self.host || port != self.port {
            return None;
        }
        self.path_rest(s, path_at)
    }

    /// `s[path_at..]` starts with this base's path at a segment boundary.
    fn path_rest(&self, s: &str, path_at: usize) -> Option<usize> {
        let rest = s[path_at..].strip_prefix(self.path.as_str())?;
        (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then_some(path_at + self.path.len())
    }
}

/// What happens to one URL-valued member or header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Keep,
    Replace(String),
    Drop,
}

/// The bases one route's upstream answers under (its URL with the route's upstream path,
/// and any aliases it calls itself by).
#[derive(Debug, Clone)]
pub struct BaseSet {
    bases: Vec<Base>,
    hosts: AhoCorasick,
    /// Hosts, the JSON `\u00` escape and `%` (a host could be spelled with escapes).
    prefilter: AhoCorasick,
}

fn is_host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_'
}

impl BaseSet {
    pub fn new(bases: Vec<Base>) -> Result<BaseSet, String> {
        let mut hosts: Vec<String> = bases.iter().map(|b| b.host.clone()).collect();
        hosts.sort();
        hosts.dedup();
        let build = |pats: &[String]| {
            AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(pats)
                .map_err(|e| e.to_string())
        };
        // `%`: a host may be percent-encoded (`%65hr.internal`).
        let mut pre = hosts.clone();
        pre.push("\\u00".into());
        pre.push("%".into());
        Ok(BaseSet {
            hosts: build(&hosts)?,
            prefilter: build(&pre)?,
            bases,
        })
    }

    /// Could these bytes name an upstream host? Cheap: one pass, no allocation. False
    /// positives only cost a parse.
    pub fn may_occur(&self, bytes: &[u8]) -> bool {
        self.prefilter.is_match(bytes)
    }

    /// Host mentions at name boundaries (`ehr.internal` in `myehr.internal.x` is not one).
    fn host_matches<'a>(&'a self, s: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
        let b = s.as_bytes();
        self.hosts.find_iter(s).filter_map(move |m| {
            let (i, j) = (m.start(), m.end());
            let before_ok = i == 0 || !is_host_char(b[i - 1]);
            let after_ok = j == b.len()
                || !(b[j].is_ascii_alphanumeric()
                    || b[j] == b'-'
                    || b[j] == b'_'
                    || (b[j] == b'.' && b.get(j + 1).is_some_and(|c| c.is_ascii_alphanumeric())));
            (before_ok && after_ok).then_some((i, j))
        })
    }

    /// A URL-valued member or header. `public` is the gateway's base for this route
    /// (`https://host[:port]/prefix`, no trailing slash).
    pub fn url(&self, s: &str, public: &str) -> Fate {
        for b in &self.bases {
            if let Some(at) = b.rest_at(s) {
                let rest = &s[at..];
                // The rest may itself carry an upstream URL (a query parameter).
                let rest = self.text(rest, public).unwrap_or_else(|| rest.to_owned());
                return Fate::Replace(format!("{public}{rest}"));
            }
        }
        // An absolute path on the upstream (`/baseR4/Patient/1`) is relative to its origin.
        if s.starts_with('/') && !s.starts_with("//") {
            for b in self.bases.iter().filter(|b| !b.path.is_empty()) {
                if let Some(at) = b.path_rest(s, 0) {
                    let rest = &s[at..];
                    let rest = self.text(rest, public).unwrap_or_else(|| rest.to_owned());
                    return Fate::Replace(format!("{public}{rest}"));
                }
            }
        }
        if self.text(s, public).is_some() {
            Fate::Drop
        } else {
            Fate::Keep
        }
    }

    /// Free text: base URLs rewritten, the authority of any other URL on an upstream host
    /// and any bare mention of an upstream host masked. `None` when nothing changed.
    pub fn text(&self, s: &str, public: &str) -> Option<String> {
        // A mask can put a mention that was glued to another (`ehr:1ehr`) at a name
        // boundary: go again until nothing changes (bounded, in case the public base itself
        // names an upstream host).
        let mut out = self.text_once(s, public)?;
        for _ in 0..8 {
            match self.text_once(&out, public) {
                Some(again) if again != out => out = again,
                _ => break,
            }
        }
        Some(out)
    }

    fn text_once(&self, s: &str, public: &str) -> Option<String> {
        // (start, end, replacement), found in order, never overlapping.
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        for (k, _) in s.match_indices("://") {
            let scheme_len = s[..k]
                .bytes()
                .rev()
                .take_while(u8::is_ascii_alphabetic)
                .count();
            let u = k - scheme_len;
            if edits.last().is_some_and(|e| u < e.1) {
                continue;
            }
            let url_end = s[u..]
                .find(|c: char| c.is_whitespace() || "\"'<>`^{}|\\,;()[]".contains(c))
                .map_or(s.len(), |n| u + n);
            // IPv6 literals keep their brackets.
            let url_end = if s[k + 3..].starts_with('[') {
                s[u..].find(char::is_whitespace).map_or(s.len(), |n| u + n)
            } else {
                url_end
            };
            let url = &s[u..url_end];
            let Some((host, _, path_at)) = split_absolute(url) else {
                continue;
            };
            if !self.bases.iter().any(|b| b.host == host) {
                continue;
            }
            match self.bases.iter().find_map(|b| b.rest_at(url)) {
                Some(at) => edits.push((u, u + at, public.to_owned())),
                None => edits.push((k + 3, u + path_at, MASK.to_owned())),
            }
        }
        let b = s.as_bytes();
        let mut bare = Vec::new();
        for (i, j) in self.host_matches(s) {
            if edits.iter().any(|e| i < e.1 && j > e.0) {
                continue;
            }
            // Masked with its port, if it has one.
            let mut end = j;
            if b.get(end) == Some(&b':') {
                let digits = b[end + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                if digits > 0 {
                    end += 1 + digits;
                }
            }
            bare.push((i, end, MASK.to_owned()));
        }
        edits.extend(bare);
        if edits.is_empty() {
            return None;
        }
        edits.sort_by_key(|e| e.0);
        let mut out = String::with_capacity(s.len());
        let mut copied = 0;
        for (i, j, r) in edits {
            if i < copied {
                continue;
            }
            out.push_str(&s[copied..i]);
            out.push_str(&r);
            copied = j;
        }
        out.push_str(&s[copied..]);
        Some(out)
    }

    /// Rewrite the members of a FHIR JSON resource where a server writes its own address.
    /// Returns whether anything changed.
    pub fn json(&self, v: &mut Value, public: &str) -> bool {
        match v.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => self.bundle(v, public),
            Some("OperationOutcome") => self.outcome(v, public),
            Some("CapabilityStatement") => {
                let mut changed = false;
                if let Some(imp) = v.get_mut("implementation") {
                    changed |= self.url_member(imp, "url", public);
                }
                changed
            }
            _ => false,
        }
    }

    /// Every string in a document that is nothing but URLs (`smart-configuration`).
    pub fn all_urls(&self, v: &mut Value, public: &str) -> bool {
        match v {
            Value::Object(m) => {
                let mut changed = false;
                let mut gone = Vec::new();
                for (k, x) in m.iter_mut() {
                    match x {
                        Value::String(s) => match self.url(s, public) {
                            Fate::Keep => {}
                            Fate::Replace(n) => {
                                *s = n;
                                changed = true;
                            }
                            Fate::Drop => gone.push(k.clone()),
                        },
                        other => changed |= self.all_urls(other, public),
                    }
                }
                for k in gone {
                    m.remove(&k);
                    changed = true;
                }
                changed
            }
            Value::Array(a) => {
                let before = a.len();
                let mut changed = false;
                a.retain_mut(|x| match x {
                    Value::String(s) => match self.url(s, public) {
                        Fate::Keep => true,
                        Fate::Replace(n) => {
                            *s = n;
                            changed = true;
                            true
                        }
                        Fate::Drop => false,
                    },
                    other => {
                        changed |= self.all_urls(other, public);
                        true
                    }
                });
                changed || a.len() != before
            }
            _ => false,
        }
    }

    /// `obj[key]` as a URL: rewritten, or removed.
    fn url_member(&self, obj: &mut Value, key: &str, public: &str) -> bool {
        let Some(s) = obj.get(key).and_then(Value::as_str) else {
            return false;
        };
        match self.url(s, public) {
            Fate::Keep => false,
            Fate::Replace(n) => {
                obj[key] = Value::from(n);
                true
            }
            Fate::Drop => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove(key);
                }
                true
            }
        }
    }

    fn text_member(&self, obj: &mut Value, key: &str, public: &str) -> bool {
        let Some(s) = obj.get(key).and_then(Value::as_str) else {
            return false;
        };
        match self.text(s, public) {
            Some(n) => {
                obj[key] = Value::from(n);
                true
            }
            None => false,
        }
    }

    /// `link[].url`: a link outside the base is removed (it could only lead around the
    /// gateway).
    fn links(&self, v: &mut Value, public: &str) -> bool {
        let Some(links) = v.get_mut("link").and_then(Value::as_array_mut) else {
            return false;
        };
        let before = links.len();
        let mut changed = false;
        links.retain_mut(|l| {
            let Some(s) = l.get("url").and_then(Value::as_str) else {
                return true;
            };
            match self.url(s, public) {
                Fate::Keep => true,
                Fate::Replace(n) => {
                    l["url"] = Value::from(n);
                    changed = true;
                    true
                }
                Fate::Drop => false,
            }
        });
        changed || links.len() != before
    }

    fn bundle(&self, v: &mut Value, public: &str) -> bool {
        let mut changed = self.links(v, public);
        let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) else {
            return changed;
        };
        for e in entries {
            changed |= self.url_member(e, "fullUrl", public);
            changed |= self.links(e, public);
            if let Some(r) = e.get_mut("request") {
                changed |= self.url_member(r, "url", public);
            }
            if let Some(r) = e.get_mut("response") {
                changed |= self.url_member(r, "location", public);
                if let Some(o) = r.get_mut("outcome") {
                    changed |= self.json(o, public);
                }
            }
            if let Some(r) = e.get_mut("resource") {
                // Nested Bundles and outcomes (batch results, `$everything` pages).
                changed |= self.json(r, public);
            }
        }
        changed
    }

    fn outcome(&self, v: &mut Value, public: &str) -> bool {
        let mut changed = false;
        let Some(issues) = v.get_mut("issue").and_then(Value::as_array_mut) else {
            return false;
        };
        for i in issues {
            changed |= self.text_member(i, "diagnostics", public);
            if let Some(d) = i.get_mut("details") {
                changed |= self.text_member(d, "text", public);
            }
        }
        changed
    }

    /// A `Link` header value (RFC 8288: `<url>; rel="next", <url>; rel="prev"`): targets
    /// rewritten, links outside the base removed. `None`: nothing changed; `Some("")`:
    /// every link went.
    pub fn link_header(&self, value: &str, public: &str) -> Option<String> {
        let mut out: Vec<String> = Vec::new();
        let mut changed = false;
        let mut rest = value;
        loop {
            let t = rest.trim_start_matches([' ', '\t', ',']);
            if t.is_empty() {
                break;
            }
            let Some(inner) = t.strip_prefix('<') else {
                // Not a link-value we can read: if it names the upstream, drop it all.
                return self.text(value, public).map(|_| String::new());
            };
            let Some(close) = inner.find('>') else {
                return self.text(value, public).map(|_| String::new());
            };
            let target = &inner[..close];
            let after = &inner[close + 1..];
            // Parameters run to the next comma outside quotes.
            let mut end = after.len();
            let mut quoted = false;
            for (k, c) in after.char_indices() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => {
                        end = k;
                        break;
                    }
                    _ => {}
                }
            }
            let params = &after[..end];
            rest = &after[end..];
            let params = match self.text(params, public) {
                Some(p) => {
                    changed = true;
                    p
                }
                None => params.to_owned(),
            };
            match self.url(target, public) {
                Fate::Keep => out.push(format!("<{target}>{params}")),
                Fate::Replace(n) => {
                    changed = true;
                    out.push(format!("<{n}>{params}"));
                }
                Fate::Drop => changed = true,
            }
        }
        changed.then(|| out.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> BaseSet {
        BaseSet::new(vec![
            Base::parse("https://ehr.internal:8443/fhir").unwrap(),
            Base::parse("https://ehr.internal/baseR4").unwrap(),
        ])
        .unwrap()
    }
    const PUB: &str = "https://gw.example/patient/fhir";

    #[test]
    fn url_spellings_of_the_base_are_rewritten() {
        let s = set();
        for u in [
            "https://ehr.internal:8443/fhir/Patient/1",
            "HTTPS://EHR.INTERNAL:8443/fhir/Patient/1",
            "https://Ehr.Internal.:8443/fhir/Patient/1",
            "https://ehr.internal:08443/fhir/Patient/1",
            "https://%65hr.internal:8443/fhir/Patient/1",
            "https://user@ehr.internal:8443/fhir/Patient/1",
            "https://ehr.internal/baseR4/Patient/1",
            "https://ehr.internal:443/baseR4/Patient/1",
            "/baseR4/Patient/1",
        ] {
            assert_eq!(
                s.url(u, PUB),
                Fate::Replace(format!("{PUB}/Patient/1")),
                "{u}"
            );
        }
        assert_eq!(
            s.url("https://ehr.internal:8443/fhir", PUB),
            Fate::Replace(PUB.into())
        );
        assert_eq!(
            s.url("https://ehr.internal:8443/fhir?_getpages=x", PUB),
            Fate::Replace(format!("{PUB}?_getpages=x"))
        );
    }

    #[test]
    fn same_host_elsewhere_is_dropped_foreign_kept() {
        let s = set();
        for u in [
            "https://ehr.internal:9443/fhir/Patient/1",
            "https://ehr.internal:8443/fhirx/Patient/1",
            "https://ehr.internal:8443/other",
            "http://ehr.internal/fhir",
            "https://x.example/?next=https://ehr.internal/secret",
        ] {
            assert_eq!(s.url(u, PUB), Fate::Drop, "{u}");
        }
        for u in [
            "https://other.example/fhir/Patient/1",
            "urn:uuid:1234",
            "Patient/1",
            "https://myehr.internal.example/fhir",
        ] {
            assert_eq!(s.url(u, PUB), Fate::Keep, "{u}");
        }
    }

    #[test]
    fn text_rewrites_and_masks() {
        let s = set();
        assert_eq!(
            s.text(
                "see https://EHR.internal:8443/fhir/Patient/1 and ehr.internal:5432 down",
                PUB
            )
            .unwrap(),
            format!("see {PUB}/Patient/1 and [upstream] down")
        );
        assert_eq!(s.text("nothing here", PUB), None);
        assert_eq!(
            s.text("http://ehr.internal:8443/admin", PUB).unwrap(),
            "http://[upstream]/admin"
        );
        assert_eq!(
            s.text(
                "at HTTP://%65hr.Internal:8443/fhir/x, or http://%65hr.internal:1/y",
                PUB
            )
            .unwrap(),
            format!("at {PUB}/x, or http://[upstream]/y")
        );
        assert_eq!(s.text("https://elsewhere.example/ehr", PUB), None);
    }

    #[test]
    fn json_escapes_trigger_the_prefilter_and_parse_away() {
        let s = set();
        let raw = br#"{"resourceType":"Bundle","link":[{"relation":"next","url":"https:\/\/\u0065hr.internal:8443\/fhir\/Patient?page=2"}]}"#;
        assert!(s.may_occur(raw));
        let mut v: Value = serde_json::from_slice(raw).unwrap();
        assert!(s.json(&mut v, PUB));
        assert_eq!(v["link"][0]["url"], format!("{PUB}/Patient?page=2"));
        assert!(!s.may_occur(br#"{"resourceType":"Patient","id":"1"}"#));
        assert!(s.may_occur(br#"{"u":"https://%65hr.internal/fhir"}"#));
    }

    #[test]
    fn link_headers() {
        let s = set();
        let h = r#"<https://ehr.internal:8443/fhir/Patient?p=2>; rel="next", <https://ehr.internal:9/x>; rel="other", <https://a.example/>; rel="x, y""#;
        assert_eq!(
            s.link_header(h, PUB).unwrap(),
            format!(r#"<{PUB}/Patient?p=2>; rel="next", <https://a.example/>; rel="x, y""#)
        );
        assert_eq!(s.link_header("<https://a.example/>; rel=x", PUB), None);
    }

    /// Deterministic fuzzing: no input panics (slicing stays on character boundaries), and
    /// what `text` returns names no upstream any more.
    #[test]
    fn random_strings() {
        let s = set();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let pieces = [
            "https://",
            "HTTP://",
            "://",
            "ehr.internal",
            "EHR.",
            "internal",
            ":8443",
            ":",
            "/fhir",
            "/baseR4",
            "/",
            "?",
            "#",
            "@",
            "[",
            "]",
            "%",
            "%65",
            "é",
            "ß",
            "\u{1F600}",
            " ",
            ",",
            "<",
            ">",
            ";",
            "\"",
            "0",
            "x",
            ".",
            "-",
        ];
        for _ in 0..30000 {
            let mut t = String::new();
            for _ in 0..(rnd() % 10) {
                t.push_str(pieces[(rnd() % pieces.len() as u64) as usize]);
            }
            let _ = s.url(&t, PUB);
            let _ = s.link_header(&t, PUB);
            if let Some(out) = s.text(&t, PUB) {
                assert_eq!(s.text(&out, PUB), None, "{t:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn bases_parse_strictly() {
        assert!(Base::parse("ftp://x").is_err());
        assert!(Base::parse("https://u:p@x/").is_err());
        assert!(Base::parse("https://x/fhir?x=1").is_err());
        assert_eq!(
            Base::parse("https://X.example:443/fhir/").unwrap(),
            Base::parse("https://x.example/fhir").unwrap()
        );
    }
}
