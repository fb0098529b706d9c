//! PHI/PII detectors and the one-pass scanner that runs them (Ward DLP).
//!
//! This module owns *finding* sensitive spans in a byte buffer; it knows nothing about HL7, FHIR
//! or redaction policy. The gateway compiles a [`Scanner`] once per policy load (it is
//! `Send + Sync`, share it in an `Arc`) and calls [`Scanner::scan`] on every text it inspects.
//!
//! # Detectors
//! Built-ins (`ssn card npi mbi email phone ip date vin url`) each pair a *shape* with a
//! *validator* (SSN area/group/serial rules, Luhn + IIN table for cards, the CMS `80840` Luhn for
//! NPI, MBI position classes, NANP area/exchange rules, octet ranges, calendar validity, the VIN
//! check digit, ...), so a shape alone is never a finding. Operators add `Regex` detectors (the
//! site MRN detector is simply a `Regex` named "mrn") and `Keywords` detectors (literal words or
//! phrases, ASCII-case-insensitive, whole words only).
//!
//! # Why the built-ins are not regexes
//! The first design put every built-in shape into one `regex_automata::meta::Regex::new_many`.
//! On a realistic 1 MB FHIR searchset Bundle that ran at 170-280 MB/s (400-470 MB/s on plain
//! prose) on the 2-vCPU build VM *before* any validation (`examples/meta_baseline.rs`): FHIR
//! JSON is dense with digits, so the lazy DFA keeps restarting and every match costs a reverse
//! search. This scanner, validation and context included, measured about 530 MB/s on the same
//! Bundle and 3.2-3.6 GB/s on prose (`examples/bench.rs`, best batch; the VM has heavy steal). Leftmost-first multi-pattern search also reports
//! only one pattern per position, so a candidate rejected by its validator (an NPI-shaped
//! number with a bad check digit) would hide a valid finding of another detector at the same
//! span (the same ten digits as a phone number). Both problems are solved by a hand-written
//! candidate scanner:
//!
//! * The main loop walks the input 64 bytes at a time. A vectorised digit bitmask yields the
//!   digit-run starts; `@` (email), `://` (URL) and `::` (compressed IPv6) come from
//!   `memchr`/`memmem`. Nothing else can start a built-in candidate: every numeric shape, MBI,
//!   VIN, month-name date and full-form IPv6 contains digits. A digit run is only examined if
//!   its first 16 bytes hold at least 4 digits (the sparsest shapes, `1.1.1.1`, `1/1/90`,
//!   `Jan 1, 1990`, have 4), which skips most of the small numbers JSON is full of
//!   (`"versionId":"3"`, `"rank":1`, `r4`) without looking at them.
//! * A digit run with its one- or two-byte separators (`123-45-6789`, `+1 (555) 234-5678`,
//!   `4111 1111 1111 1111`, `10.0.0.1`, `1990-01-31`) is parsed once into digit *groups*, and
//!   **every** numeric validator is tried at **every** group start. All valid readings become
//!   candidates (ten digits can be an NPI and a phone); context and thresholds decide later. A
//!   rejected candidate can therefore never hide a valid one at the same span or starting
//!   inside it (`000-12-3456 123-45-6789` finds the second SSN).
//! * Every byte is examined a bounded number of times: runs are parsed in windows of 64 groups
//!   that overlap by the longest candidate, backward scans stop at the consumed position (or a
//!   fixed cap), region scans are memoised. The scan is linear on any input, including
//!   megabytes of digits and separators.
//! * Word boundaries are ASCII (`[A-Za-z0-9_]`), except that the letter of a JSON escape (`\n`,
//!   `\t`, `\r`) is not a word byte, so raw JSON such as `"Phone:\n555-234-5678"` still matches.
//!
//! User regexes (including MRN) are still compiled into ONE `meta::Regex::new_many` over bytes
//! with Unicode off (ASCII `\b`, `\d`, `\w`, so the lazy DFA can run) and searched in one pass;
//! keywords use one Aho-Corasick automaton (leftmost-longest).
//!
//! # Confidence
//! Each candidate has a base confidence (0..=100) reflecting how likely the shape+validator is
//! PHI by itself: a dashed SSN is 80, an undashed 9-digit number 35, a bare 10-digit NPI 45.
//! Context words (built-in defaults per kind plus the spec's `boost` list) found within
//! [`CONTEXT_BEFORE`] bytes before or [`CONTEXT_AFTER`] bytes after a candidate add
//! [`BOOST`]; `suppress` words in the same window subtract [`SUPPRESS`]. Context words match
//! ASCII-case-insensitively on word boundaries with one more Aho-Corasick automaton that only
//! runs over the windows around candidates. A candidate is reported if its confidence reaches
//! its detector's `min_confidence` (default given to [`Scanner::new`], typically 50).
//!
//! # Output
//! Findings are sorted by start and never overlap. Overlapping accepted candidates (say an
//! MRN regex and the SSN detector on the same digits) are *coalesced*: the reported span is the
//! union, attributed to the most confident member (ties: the longer span, then the lower
//! detector index). A redactor working from the output therefore never leaks the tail of a
//! lower-ranked overlapping finding.
//!
//! Inputs are arbitrary bytes (invalid UTF-8, NULs, huge buffers): nothing here panics on input
//! and no input makes the scan super-linear.
//!
//! # Layout
//! This file holds the public surface (detector specs, hits, [`Scanner`] and its assembly of
//! user regexes, keywords and context). The rest: `bytes` (byte classes and bounds-safe
//! accessors), `validators` (check digits and range rules), `builtin` (the built-in candidate
//! scanner), `tests`.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;

use aho_corasick::automaton::Automaton;
use aho_corasick::{
    AhoCorasick, Anchored as AcAnchored, Input as AcInput, MatchKind as AcMatchKind, StartKind,
};
use regex_automata::{meta, Input, MatchKind};

use crate::dlp::canon::Canon;
mod builtin;
mod bytes;
#[cfg(test)]
mod differential;
#[cfg(test)]
mod tests;
mod validators;

#[cfg(test)]
use crate::dlp::canon::{oracle, set_oracle};

use builtin::*;
use bytes::*;
use validators::*;

/// Context window before a candidate, in bytes ("SSN: " up to a short label away).
pub const CONTEXT_BEFORE: usize = 40;
/// Context window after a candidate, in bytes ("1234567893 (NPI)").
pub const CONTEXT_AFTER: usize = 20;
/// Confidence added when a boost word is in the context window (applied once).
pub const BOOST: u8 = 30;
/// Confidence removed when a suppress word is in the context window (applied once).
pub const SUPPRESS: u8 = 40;
/// Base confidence of operator-defined detectors (regex, keywords): they fire by default, a
/// suppress word silences them at the default threshold, and `min_confidence: 90` makes them
/// require a boost word.
pub const USER_CONFIDENCE: u8 = 80;

/// Upper bound for the compiled NFA of all user regexes together; operator patterns such as
/// `\w{1000}{1000}` must fail at config load, not exhaust memory.
const USER_NFA_LIMIT: usize = 16 << 20;

/// What a detector looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// US Social Security Number (dashed, spaced, or - with context - undashed).
    Ssn,
    /// Payment card number (Luhn + known IIN range and length).
    Card,
    /// US National Provider Identifier (10 digits, CMS check digit); needs context by default.
    Npi,
    /// Medicare Beneficiary Identifier.
    Mbi,
    /// E-mail address.
    Email,
    /// North American (NANP) phone number.
    Phone,
    /// IPv4 or IPv6 address.
    Ip,
    /// Calendar date (numeric or with English month names).
    Date,
    /// Vehicle identification number (North American check digit).
    Vin,
    /// `http://` / `https://` URL.
    Url,
    /// Operator regex (bytes, Unicode off by default: `\d`, `\w`, `\b` are ASCII). The site MRN
    /// detector is a `Regex` named "mrn". The pattern must not match the empty string.
    Regex(String),
    /// Literal words/phrases, ASCII-case-insensitive, matched on word boundaries.
    Keywords(Vec<String>),
}

/// One detector of a DLP policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorSpec {
    /// Name used in findings and errors; unique within a policy.
    pub name: String,
    /// What to look for.
    pub kind: Kind,
    /// Threshold for this detector; `None` uses the scanner default.
    pub min_confidence: Option<u8>,
    /// Extra context words that raise confidence (added to the built-in defaults).
    pub boost: Vec<String>,
    /// Context words that lower confidence ("example", "test", "fax" for an SSN detector...).
    pub suppress: Vec<String>,
}

impl DetectorSpec {
    /// A spec with default threshold and no extra context words.
    pub fn new(name: impl Into<String>, kind: Kind) -> DetectorSpec {
        DetectorSpec {
            name: name.into(),
            kind,
            min_confidence: None,
            boost: Vec::new(),
            suppress: Vec::new(),
        }
    }
}

/// One accepted finding: `hay[start..end]`, found by `specs[detector]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    /// Index into the `specs` slice given to [`Scanner::new`].
    pub detector: u16,
    /// 0..=100 after context adjustment.
    pub confidence: u8,
}

/// Built-in detector kinds, used as array indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum B {
    Ssn = 0,
    Card,
    Npi,
    Mbi,
    Email,
    Phone,
    Ip,
    Date,
    Vin,
    Url,
}
const NB: usize = 10;

/// Base confidences. They encode how often the validated shape is *not* PHI: a 9-digit number
/// that happens to satisfy the SSN rules is common (so it needs context), a Luhn-valid card
/// number with a real IIN is not.
mod conf {
    pub const SSN_DASHED: u8 = 80;
    pub const SSN_SPACED: u8 = 65;
    pub const SSN_BARE: u8 = 35;
    pub const CARD_GROUPED: u8 = 80;
    pub const CARD_BARE: u8 = 70;
    pub const NPI: u8 = 45;
    pub const MBI: u8 = 80;
    pub const EMAIL: u8 = 85;
    pub const PHONE_PAREN: u8 = 75;
    pub const PHONE_SEP: u8 = 70;
    pub const PHONE_SPACED: u8 = 60;
    pub const PHONE_BARE: u8 = 40;
    pub const PHONE_E164: u8 = 65;
    pub const IPV4: u8 = 60;
    pub const IPV6: u8 = 60;
    pub const DATE_ISO: u8 = 60;
    pub const DATE_NUMERIC: u8 = 55;
    pub const DATE_SHORT_YEAR: u8 = 50;
    pub const DATE_MONTH_NAME: u8 = 70;
    pub const VIN: u8 = 60;
    pub const URL: u8 = 60;
}

/// Context words every built-in gets for free. Words match on word boundaries, so FHIR system
/// URIs (`.../sid/us-ssn`, `.../sid/us-npi`) and JSON keys (`"birthDate"`, `"phone"`) count.
fn default_boost(b: B) -> &'static [&'static str] {
    match b {
        B::Ssn => &[
            "ssn",
            "ss#",
            "ss #",
            "social security",
            "soc sec",
            "social sec",
            "ssa",
        ],
        B::Card => &[
            "card",
            "credit",
            "debit",
            "visa",
            "mastercard",
            "amex",
            "american express",
            "discover",
            "cc#",
            "ccn",
            "payment",
            "pan",
        ],
        B::Npi => &["npi", "provider", "prescriber", "practitioner", "physician"],
        B::Mbi => &["mbi", "medicare", "beneficiary", "hicn"],
        B::Phone => &[
            "phone",
            "tel",
            "telephone",
            "mobile",
            "cell",
            "fax",
            "call",
            "contact",
            "pager",
            "ph",
        ],
        B::Ip => &["ip", "ipv4", "ipv6", "host", "client", "remote"],
        B::Date => &[
            "dob",
            "birth",
            "born",
            "birthdate",
            "birthday",
            "date of birth",
            "admitted",
            "admission",
            "discharged",
            "discharge",
            "deceased",
            "died",
            "death",
        ],
        B::Vin => &["vin", "vehicle", "chassis"],
        // The structure is conclusive on its own, and no windows around the thousands of system
        // URIs in a FHIR Bundle keeps the context pass small.
        B::Email | B::Url => &[],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Boost,
    Suppress,
}

#[derive(Debug)]
struct UserRegexes {
    re: meta::Regex,
    /// Detector index per pattern id.
    det: Vec<u16>,
}

#[derive(Debug)]
struct KeywordSet {
    ac: AhoCorasick,
    /// Detectors per automaton pattern (the same word may appear in several detectors).
    dets: Vec<Vec<u16>>,
}

#[derive(Debug)]
struct ContextSet {
    /// A raw Aho-Corasick DFA (standard semantics, unanchored, no prefilter) walked byte by
    /// byte over the context windows: every state transition is a table lookup, and a match
    /// state lists every word ending there (overlapping words included), with none of the
    /// per-call overhead of the iterator API, which dominated on small windows.
    dfa: aho_corasick::dfa::DFA,
    effects: Vec<Vec<(u16, Effect)>>,
}

/// Which bytes can start a built-in candidate; depends on the enabled kinds.
#[derive(Clone, Copy, Debug)]
struct Triggers {
    /// Digit runs (every numeric kind, MBI, VIN).
    digit: bool,
    /// '@' (email).
    at: bool,
    /// "://" (URL); "::" is followed whenever IP is enabled.
    colon: bool,
}

/// All detectors of a policy, compiled once. Cheap to share (`Arc<Scanner>`), `Send + Sync`.
#[derive(Debug)]
pub struct Scanner {
    names: Vec<String>,
    min_conf: Vec<u8>,
    builtin: [Vec<u16>; NB],
    en: [bool; NB],
    any_builtin: bool,
    numeric: bool,
    trig: Triggers,
    user: Option<UserRegexes>,
    keywords: Option<KeywordSet>,
    context: Option<ContextSet>,
    /// Per detector: does any context word concern it?
    has_ctx: Vec<bool>,
    /// Per detector: a *container* shape (`url`, `date`) that never takes the attribution of
    /// a coalesced finding from another detector. A URL holding an SSN is reported as the
    /// SSN (over the URL's span), so a typed `uri` element that the `url` detector does not
    /// apply to still loses the SSN.
    weak: Vec<bool>,
    /// Per detector: how much its findings matter to the engine that uses this scanner
    /// (the strength of its action, and whether it applies to typed values), set with
    /// [`Scanner::set_priority`]. When overlapping findings merge, the span is attributed
    /// to the highest priority first: a `report` e-mail overlapping a `block` SSN
    /// (`123-45-6789@example.org`) must not turn the SSN into a report.
    priority: Vec<u8>,
    finders: Finders,
}

/// The literal searches of the candidate scanner, compiled once per policy.
#[derive(Debug)]
struct Finders {
    /// "://" (URL schemes).
    scheme: memchr::memmem::Finder<'static>,
    /// "::" (compressed IPv6).
    v6: memchr::memmem::Finder<'static>,
}

impl Finders {
    fn new() -> Finders {
        Finders {
            scheme: memchr::memmem::Finder::new(b"://"),
            v6: memchr::memmem::Finder::new(b"::"),
        }
    }
}

fn builtin_of(k: &Kind) -> Option<B> {
    Some(match k {
        Kind::Ssn => B::Ssn,
        Kind::Card => B::Card,
        Kind::Npi => B::Npi,
        Kind::Mbi => B::Mbi,
        Kind::Email => B::Email,
        Kind::Phone => B::Phone,
        Kind::Ip => B::Ip,
        Kind::Date => B::Date,
        Kind::Vin => B::Vin,
        Kind::Url => B::Url,
        Kind::Regex(_) | Kind::Keywords(_) => return None,
    })
}

/// Parse an operator regex the way the scanner runs it: bytes, Unicode off unless the pattern
/// opts in with `(?u)`, so ASCII `\b` keeps the lazy DFA usable.
fn parse_user_regex(name: &str, pat: &str) -> Result<regex_syntax::hir::Hir, String> {
    if pat.is_empty() {
        return Err(format!("detector '{name}': empty regex"));
    }
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .nest_limit(100)
        .build()
        .parse(pat)
        .map_err(|e| format!("detector '{name}': invalid regex: {e}"))?;
    if hir.properties().minimum_len() == Some(0) {
        return Err(format!(
            "detector '{name}': regex can match the empty string"
        ));
    }
    Ok(hir)
}

fn build_user_regex(hirs: &[regex_syntax::hir::Hir]) -> Result<meta::Regex, String> {
    meta::Builder::new()
        .configure(
            meta::Regex::config()
                .match_kind(MatchKind::LeftmostFirst)
                // Byte offsets, not char offsets: empty matches may split UTF-8 (none exist,
                // empty-matching patterns are rejected, but the engine must not care).
                .utf8_empty(false)
                .nfa_size_limit(Some(USER_NFA_LIMIT)),
        )
        .build_many_from_hir(hirs)
        .map_err(|e| e.to_string())
}

impl Scanner {
    /// Compile a policy. Errors name the offending detector: invalid or empty-matching regex,
    /// empty keyword list or word, empty context word, threshold above 100, duplicate or
    /// empty name, more than 65536 detectors.
    pub fn new(specs: &[DetectorSpec], default_min_confidence: u8) -> Result<Scanner, String> {
        if default_min_confidence > 100 {
            return Err(format!(
                "default min_confidence {default_min_confidence} is above 100"
            ));
        }
        let mut names = Vec::with_capacity(specs.len());
        let mut seen = HashSet::new();
        let mut min_conf = Vec::with_capacity(specs.len());
        let mut builtin: [Vec<u16>; NB] = Default::default();
        let mut hirs = Vec::new();
        let mut re_det = Vec::new();
        let mut kw_words: Vec<Vec<u8>> = Vec::new();
        let mut kw_index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut kw_dets: Vec<Vec<u16>> = Vec::new();
        let mut ctx_words: Vec<Vec<u8>> = Vec::new();
        let mut ctx_index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut ctx_effects: Vec<Vec<(u16, Effect)>> = Vec::new();
        let mut has_ctx = vec![false; specs.len()];

        let mut add_ctx = |det: u16, word: &str, eff: Effect| {
            let key = word.as_bytes().to_ascii_lowercase();
            let i = *ctx_index.entry(key.clone()).or_insert_with(|| {
                ctx_words.push(key);
                ctx_effects.push(Vec::new());
                ctx_words.len() - 1
            });
            if let Some(v) = ctx_effects.get_mut(i) {
                if !v.contains(&(det, eff)) {
                    v.push((det, eff));
                }
            }
        };

        for (i, spec) in specs.iter().enumerate() {
            let name = spec.name.as_str();
            let det = u16::try_from(i).map_err(|_| "more than 65536 detectors".to_string())?;
            if name.trim().is_empty() {
                return Err(format!("detector #{i}: empty name"));
            }
            if !seen.insert(name) {
                return Err(format!("detector '{name}': duplicate name"));
            }
            let mc = spec.min_confidence.unwrap_or(default_min_confidence);
            if mc > 100 {
                return Err(format!(
                    "detector '{name}': min_confidence {mc} is above 100"
                ));
            }
            for w in spec.boost.iter().chain(&spec.suppress) {
                if w.trim().is_empty() {
                    return Err(format!("detector '{name}': empty context word"));
                }
            }
            match &spec.kind {
                Kind::Regex(pat) => {
                    hirs.push(parse_user_regex(name, pat)?);
                    re_det.push(det);
                }
                Kind::Keywords(words) => {
                    if words.is_empty() {
                        return Err(format!("detector '{name}': empty keyword list"));
                    }
                    for w in words {
                        if w.trim().is_empty() {
                            return Err(format!("detector '{name}': empty keyword"));
                        }
                        let key = w.as_bytes().to_ascii_lowercase();
                        let k = *kw_index.entry(key.clone()).or_insert_with(|| {
                            kw_words.push(key);
                            kw_dets.push(Vec::new());
                            kw_words.len() - 1
                        });
                        if let Some(v) = kw_dets.get_mut(k) {
                            if !v.contains(&det) {
                                v.push(det);
                            }
                        }
                    }
                }
                k => {
                    if let Some(b) = builtin_of(k) {
                        builtin[b as usize].push(det);
                        for w in default_boost(b) {
                            add_ctx(det, w, Effect::Boost);
                        }
                        has_ctx[i] |= !default_boost(b).is_empty();
                    }
                }
            }
            for w in &spec.boost {
                add_ctx(det, w, Effect::Boost);
            }
            for w in &spec.suppress {
                add_ctx(det, w, Effect::Suppress);
            }
            has_ctx[i] |= !spec.boost.is_empty() || !spec.suppress.is_empty();
            names.push(spec.name.clone());
            min_conf.push(mc);
        }

        let user = if hirs.is_empty() {
            None
        } else {
            let re = match build_user_regex(&hirs) {
                Ok(re) => re,
                Err(e) => {
                    // Name the culprit: compile each pattern alone (cold path, config load).
                    for (h, &d) in hirs.iter().zip(&re_det) {
                        if let Err(e1) = build_user_regex(std::slice::from_ref(h)) {
                            let n = names.get(usize::from(d)).map_or("?", |s| s.as_str());
                            return Err(format!("detector '{n}': regex does not compile: {e1}"));
                        }
                    }
                    return Err(format!("user regex detectors together: {e}"));
                }
            };
            Some(UserRegexes { re, det: re_det })
        };
        let keywords = if kw_words.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(AcMatchKind::LeftmostLongest)
                // Anchored searches retry a shorter keyword when the longest one at a position
                // fails the word-boundary check ("hiv" inside "hiv-1x" after "hiv-1" fails).
                .start_kind(StartKind::Both)
                .build(&kw_words)
                .map_err(|e| format!("keyword detectors: {e}"))?;
            Some(KeywordSet { ac, dets: kw_dets })
        };
        let context = if ctx_words.is_empty() {
            None
        } else {
            let dfa = aho_corasick::dfa::Builder::new()
                .ascii_case_insensitive(true)
                .match_kind(AcMatchKind::Standard)
                .start_kind(StartKind::Unanchored)
                .prefilter(false)
                .build(&ctx_words)
                .map_err(|e| format!("context words: {e}"))?;
            Some(ContextSet {
                dfa,
                effects: ctx_effects,
            })
        };

        let mut weak = vec![false; names.len()];
        for b in [B::Url, B::Date] {
            for &d in &builtin[b as usize] {
                if let Some(w) = weak.get_mut(usize::from(d)) {
                    *w = true;
                }
            }
        }
        let en: [bool; NB] = std::array::from_fn(|i| !builtin[i].is_empty());
        let numeric = [B::Ssn, B::Card, B::Npi, B::Phone, B::Ip, B::Date]
            .iter()
            .any(|&b| en[b as usize]);
        let trig = Triggers {
            digit: numeric || en[B::Mbi as usize] || en[B::Vin as usize],
            at: en[B::Email as usize],
            colon: en[B::Url as usize],
        };
        Ok(Scanner {
            names,
            min_conf,
            any_builtin: en.iter().any(|&e| e),
            builtin,
            en,
            numeric,
            trig,
            user,
            keywords,
            context,
            has_ctx,
            priority: vec![0; specs.len()],
            weak,
            finders: Finders::new(),
        })
    }

    /// Detector names in spec order (the index is [`Hit::detector`]).
    /// Set each detector's priority (index = detector): higher wins the attribution of a
    /// merged finding before confidence does. Missing entries are 0.
    pub fn set_priority(&mut self, priority: &[u8]) {
        for (p, &v) in self.priority.iter_mut().zip(priority) {
            *p = v;
        }
    }

    pub fn detector_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Name of detector `idx`.
    pub fn name(&self, idx: u16) -> Option<&str> {
        self.names.get(usize::from(idx)).map(String::as_str)
    }

    /// Number of detectors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if the policy has no detectors (scans find nothing).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Appends every accepted finding in `hay` to `out`, sorted by start, non-overlapping.
    /// Existing contents of `out` are left alone.
    ///
    /// The detectors read the canonical form of `hay` (`canon.rs`: Unicode digits as ASCII,
    /// invisible characters removed, look-alike spaces and dashes folded, NFKC); findings are
    /// reported as spans of `hay` that cover every original byte of the finding. ASCII input
    /// is scanned as it is.
    pub fn scan(&self, hay: &[u8], out: &mut Vec<Hit>) {
        thread_local! {
            static CANON: std::cell::RefCell<Canon> = std::cell::RefCell::new(Canon::default());
        }
        if hay.is_ascii() {
            return self.scan_raw(hay, out);
        }
        CANON.with(|cell| {
            // A scan never re-enters itself; should it ever, it works on a fresh copy.
            let mut fresh = Canon::default();
            let mut guard = cell.try_borrow_mut();
            let canon: &mut Canon = match guard.as_mut() {
                Ok(c) => c,
                Err(_) => &mut fresh,
            };
            if !canon.build(hay) {
                return self.scan_raw(hay, out);
            }
            let first = out.len();
            self.scan_raw(&canon.text, out);
            for h in out[first..].iter_mut() {
                h.start = canon.map_start(h.start);
                h.end = canon.map_end(h.end);
            }
            // Two findings inside one replaced character (a ligature) now overlap: merge.
            let mut w = first;
            for r in first..out.len() {
                if w > first && out[r].start < out[w - 1].end {
                    out[w - 1].end = out[w - 1].end.max(out[r].end);
                    continue;
                }
                out[w] = out[r];
                w += 1;
            }
            out.truncate(w);
            // Very large canonical copies are not kept for the next scan.
            if canon.text.capacity() > 1 << 20 {
                *canon = Canon::default();
            }
        })
    }

    /// [`Scanner::scan`] through the code paths as they were before the speed work.
    #[cfg(test)]
    pub(crate) fn scan_oracle(&self, hay: &[u8], out: &mut Vec<Hit>) {
        set_oracle(true);
        self.scan(hay, out);
        set_oracle(false);
    }

    fn scan_raw(&self, hay: &[u8], out: &mut Vec<Hit>) {
        // Dense JSON yields about one candidate per 150 bytes; avoid regrowth copies.
        let mut cands = Vec::with_capacity(hay.len() / 128 + 16);
        if self.any_builtin {
            Builtin {
                h: hay,
                sc: self,
                out: &mut cands,
                v6_memo: 0,
                url_memo: (0, 0),
                groups: Vec::new(),
            }
            .run();
        }
        self.regex_pass(hay, &mut cands);
        self.keyword_pass(hay, &mut cands);
        if cands.is_empty() {
            return;
        }
        cands.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        self.apply_context(hay, &mut cands);
        self.resolve(&cands, out);
    }

    /// All user regexes (MRN included) in one leftmost-first pass of the combined `meta::Regex`.
    /// As with any alternation, where two user patterns match at the same start the earlier
    /// one is reported; re-searching the others there would make adversarial inputs quadratic
    /// (an anchored `x.*y` retried at every `x`), so operators order specific patterns first.
    fn regex_pass(&self, hay: &[u8], out: &mut Vec<Cand>) {
        let Some(u) = &self.user else { return };
        for m in u.re.find_iter(Input::new(hay)) {
            if let Some(&det) = u.det.get(m.pattern().as_usize()) {
                out.push(Cand::new(m.start(), m.end(), det, USER_CONFIDENCE));
            }
        }
    }

    fn keyword_pass(&self, hay: &[u8], out: &mut Vec<Cand>) {
        let Some(kw) = &self.keywords else { return };
        let mut at = 0;
        while at < hay.len() {
            let Ok(Some(m)) = kw.ac.try_find(AcInput::new(hay).range(at..)) else {
                break;
            };
            let s = m.start();
            let mut accepted = None;
            if !word_before(hay, s) || !is_word(hay[s]) {
                let (mut e, mut pid) = (m.end(), m.pattern());
                loop {
                    let last = e
                        .checked_sub(1)
                        .and_then(|i| hay.get(i))
                        .copied()
                        .unwrap_or(0);
                    if !is_word(last) || !word_at(hay, e) {
                        accepted = Some((e, pid));
                        break;
                    }
                    // The longest keyword here ends inside a word; a shorter one may not.
                    if e <= s + 1 {
                        break;
                    }
                    let retry = AcInput::new(hay).range(s..e - 1).anchored(AcAnchored::Yes);
                    match kw.ac.try_find(retry) {
                        Ok(Some(m2)) if m2.end() > s => {
                            e = m2.end();
                            pid = m2.pattern();
                        }
                        _ => break,
                    }
                }
            }
            match accepted {
                Some((e, pid)) => {
                    for &det in kw.dets.get(pid.as_usize()).into_iter().flatten() {
                        out.push(Cand::new(s, e, det, USER_CONFIDENCE));
                    }
                    at = e.max(s + 1);
                }
                // A rejected match must not hide one that starts inside it.
                None => at = s + 1,
            }
        }
    }

    /// Adjust candidate confidences by context words near them. Only the windows around
    /// candidates that have context words are searched, never the whole input.
    fn apply_context(&self, hay: &[u8], cands: &mut [Cand]) {
        let Some(ctx) = &self.context else { return };
        let wants = |c: &Cand| {
            self.has_ctx
                .get(usize::from(c.det))
                .copied()
                .unwrap_or(false)
        };
        let mut occ: Vec<(usize, usize, usize)> = Vec::with_capacity(cands.len());
        let mut win: Option<(usize, usize)> = None;
        let dfa = &ctx.dfa;
        let Ok(start) = dfa.start_state(AcAnchored::No) else {
            return;
        };
        let search = |ws: usize, we: usize, occ: &mut Vec<(usize, usize, usize)>| {
            let win = hay.get(ws..we).unwrap_or(&[]);
            let mut sid = start;
            let mut k = 0;
            while k < win.len() {
                let (j, next) = walk_to_special(dfa, &win[k..], sid);
                sid = next;
                k += j;
                if k >= win.len() {
                    break;
                }
                if dfa.is_dead(sid) {
                    break;
                }
                // A match state: every word ending at this byte (overlapping ones included).
                let e = ws + k + 1;
                for i in 0..dfa.match_len(sid) {
                    let pid = dfa.match_pattern(sid, i);
                    let s = e.saturating_sub(dfa.pattern_len(pid));
                    if bounded_word(hay, s, e) {
                        occ.push((s, e, pid.as_usize()));
                    }
                }
                k += 1;
            }
        };
        // Candidates are sorted by start, so window starts are monotone and merging is a sweep.
        for c in cands.iter().filter(|c| wants(c)) {
            let ws = c.start.saturating_sub(CONTEXT_BEFORE);
            let we = c.end.saturating_add(CONTEXT_AFTER).min(hay.len());
            win = match win {
                Some((a, b)) if ws <= b => Some((a, b.max(we))),
                Some((a, b)) => {
                    search(a, b, &mut occ);
                    Some((ws, we))
                }
                None => Some((ws, we)),
            };
        }
        if let Some((a, b)) = win {
            search(a, b, &mut occ);
        }
        if occ.is_empty() {
            return;
        }
        occ.sort_unstable();
        // Candidates are sorted by start, so the first relevant word only moves forward.
        let mut first = 0;
        for c in cands.iter_mut() {
            if !wants(c) {
                continue;
            }
            let lo = c.start.saturating_sub(CONTEXT_BEFORE);
            let hi = c.end.saturating_add(CONTEXT_AFTER);
            while occ.get(first).is_some_and(|o| o.0 < lo) {
                first += 1;
            }
            let (mut boost, mut suppress) = (false, false);
            for &(s, e, w) in occ.get(first..).unwrap_or(&[]) {
                if s >= hi {
                    break;
                }
                // Words overlapping the candidate itself do not count.
                if !(e <= c.start || (s >= c.end && e <= hi)) {
                    continue;
                }
                for &(d, eff) in ctx.effects.get(w).into_iter().flatten() {
                    if d == c.det {
                        match eff {
                            Effect::Boost => boost = true,
                            Effect::Suppress => suppress = true,
                        }
                    }
                }
            }
            let mut v = i16::from(c.conf);
            if boost {
                v += i16::from(BOOST);
            }
            if suppress {
                v -= i16::from(SUPPRESS);
            }
            c.conf = v.clamp(0, 100) as u8;
        }
    }

    /// Threshold, then coalesce overlapping accepted candidates (see module docs).
    fn resolve(&self, cands: &[Cand], out: &mut Vec<Hit>) {
        let mut cur: Option<(Hit, usize)> = None;
        for c in cands {
            let min = self
                .min_conf
                .get(usize::from(c.det))
                .copied()
                .unwrap_or(100);
            if c.conf < min {
                continue;
            }
            let len = c.end - c.start;
            match &mut cur {
                Some((h, best_len)) if c.start < h.end => {
                    let strong = |d: u16| !self.weak.get(usize::from(d)).copied().unwrap_or(false);
                    let prio = |d: u16| self.priority.get(usize::from(d)).copied().unwrap_or(0);
                    let better = (
                        prio(c.det),
                        strong(c.det),
                        c.conf,
                        len,
                        std::cmp::Reverse(c.det),
                    ) > (
                        prio(h.detector),
                        strong(h.detector),
                        h.confidence,
                        *best_len,
                        std::cmp::Reverse(h.detector),
                    );
                    if better {
                        h.detector = c.det;
                        h.confidence = c.conf;
                        *best_len = len;
                    }
                    h.end = h.end.max(c.end);
                }
                _ => {
                    if let Some((h, _)) = cur.take() {
                        out.push(h);
                    }
                    let h = Hit {
                        start: c.start,
                        end: c.end,
                        detector: c.det,
                        confidence: c.conf,
                    };
                    cur = Some((h, len));
                }
            }
        }
        if let Some((h, _)) = cur {
            out.push(h);
        }
    }
}

/// Walk the context DFA over `hay` from state `sid` until it enters a special (match or dead)
/// state. Returns the index of that byte (or `hay.len()`) and the state. Kept tiny so the
/// state, the table and the loop counter stay in registers: this loop runs over every byte of
/// every context window.
#[inline(always)]
fn walk_to_special(
    dfa: &aho_corasick::dfa::DFA,
    hay: &[u8],
    mut sid: aho_corasick::automaton::StateID,
) -> (usize, aho_corasick::automaton::StateID) {
    for (k, &b) in hay.iter().enumerate() {
        sid = dfa.next_state(AcAnchored::No, sid, b);
        if dfa.is_special(sid) {
            return (k, sid);
        }
    }
    (hay.len(), sid)
}

/// A candidate before context and thresholds.
#[derive(Clone, Copy, Debug)]
struct Cand {
    start: usize,
    end: usize,
    det: u16,
    conf: u8,
}

impl Cand {
    fn new(start: usize, end: usize, det: u16, conf: u8) -> Cand {
        Cand {
            start,
            end,
            det,
            conf,
        }
    }
}
