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
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;

use aho_corasick::automaton::Automaton;
use aho_corasick::{
    AhoCorasick, Anchored as AcAnchored, Input as AcInput, MatchKind as AcMatchKind, StartKind,
};
use regex_automata::{meta, Input, MatchKind};

use crate::dlp::canon::Canon;

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
            weak,
        })
    }

    /// Detector names in spec order (the index is [`Hit::detector`]).
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
                    let better = (strong(c.det), c.conf, len, std::cmp::Reverse(c.det))
                        > (
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

// ---------------------------------------------------------------------------------------------
// Byte classes and bounds-safe accessors. `at` returns 0 outside the buffer; 0 is neither a
// word byte, a digit nor a separator, so "end of input" behaves like a boundary everywhere.

const C_WORD: u8 = 1;
const C_SEP: u8 = 2;
const C_LOCAL: u8 = 4;
const C_DOMAIN: u8 = 8;
const C_V6: u8 = 16;
const C_URL_STOP: u8 = 32;

/// Byte classes as one table: the scanner's inner loops test a class per byte, and a lookup
/// is branch-free where a chain of comparisons mispredicts on mixed JSON.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mut c = 0;
        if alnum || b == b'_' {
            c |= C_WORD;
        }
        if matches!(b, b' ' | b'-' | b'.' | b'/' | b'(' | b')') {
            c |= C_SEP;
        }
        if alnum || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-') {
            c |= C_LOCAL;
        }
        if alnum || b == b'.' || b == b'-' {
            c |= C_DOMAIN;
        }
        if b.is_ascii_hexdigit() || b == b':' || b == b'.' {
            c |= C_V6;
        }
        // URLs end at controls, space, DEL, quotes and RFC 3986's excluded `<>\^`{|}`;
        // bytes >= 0x80 are kept (IRIs).
        if b <= b' '
            || b == 0x7f
            || matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            c |= C_URL_STOP;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline(always)]
fn at(h: &[u8], i: usize) -> u8 {
    h.get(i).copied().unwrap_or(0)
}

#[inline(always)]
fn is_word(b: u8) -> bool {
    CLASS[usize::from(b)] & C_WORD != 0
}

/// Is `h[i]` a word byte for boundary purposes? The letter of a JSON/C escape (`\n`, `\t`,
/// `\r`) is not: `"Phone:\n555-234-5678"` in raw JSON must still find the number.
#[inline(always)]
fn word_at(h: &[u8], i: usize) -> bool {
    is_word(at(h, i)) && !escape_letter(h, i)
}

#[inline(always)]
fn escape_letter(h: &[u8], i: usize) -> bool {
    matches!(at(h, i), b'n' | b't' | b'r') && i > 0 && at(h, i - 1) == b'\\'
}

/// Is the byte before position `i` a word byte (i.e. no word boundary at `i`, looking left)?
#[inline(always)]
fn word_before(h: &[u8], i: usize) -> bool {
    i > 0 && word_at(h, i - 1)
}

#[inline(always)]
fn end_ok(h: &[u8], e: usize) -> bool {
    !is_word(at(h, e))
}

/// A context word occurrence must be a whole word where it starts/ends with a word byte.
fn bounded_word(h: &[u8], s: usize, e: usize) -> bool {
    let first = at(h, s);
    let last = if e > s { at(h, e - 1) } else { 0 };
    (!is_word(first) || !word_before(h, s)) && (!is_word(last) || !word_at(h, e))
}

/// Separator bytes inside a numeric run.
#[inline(always)]
fn is_sep(b: u8) -> bool {
    CLASS[usize::from(b)] & C_SEP != 0
}

#[inline(always)]
fn is_local(b: u8) -> bool {
    CLASS[usize::from(b)] & C_LOCAL != 0
}

#[inline(always)]
fn is_domain(b: u8) -> bool {
    CLASS[usize::from(b)] & C_DOMAIN != 0
}

#[inline(always)]
fn is_v6(b: u8) -> bool {
    CLASS[usize::from(b)] & C_V6 != 0
}

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HI1: u64 = 0x8080_8080_8080_8080;

/// SWAR: bit 7 of each byte lane of `w` set iff that byte is in `lo..=hi` (both < 0x80).
/// Lane sums stay below 0x100, so no carry crosses lanes and the result is exact per byte.
#[inline(always)]
fn lanes_in(w: u64, lo: u8, hi: u8) -> u64 {
    let lanes = |b: u8| u64::from(b) * 0x0101_0101_0101_0101;
    let low = w & LO7;
    (low + lanes(0x80 - lo)) & !(low + lanes(0x7f - hi)) & !w & HI1
}

/// End of the digit run starting at `i`, eight bytes per step: a byte loop mispredicts its
/// exit on every number, and FHIR JSON has tens of thousands of numbers per megabyte.
#[inline(always)]
fn digits_end(h: &[u8], mut i: usize) -> usize {
    while let Some(c) = h.get(i..i.saturating_add(8)) {
        let Ok(c) = <[u8; 8]>::try_from(c) else { break };
        let non_digit = !lanes_in(u64::from_le_bytes(c), b'0', b'9') & HI1;
        if non_digit != 0 {
            return i + (non_digit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < h.len() && h[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// Digit bitmask of `h[base..base + 64]`: bit j is set iff `h[base + j]` is an ASCII digit.
///
/// The per-byte flags come from a branch-free loop the compiler vectorises; they are packed
/// eight lanes at a time with one multiply. Without `unsafe` SIMD intrinsics this was the
/// fastest variant measured here (about 6 GB/s, against about 3.5 GB/s for pure SWAR and
/// 1.7 GB/s for a table loop).
#[inline(always)]
fn digit_mask(h: &[u8], base: usize) -> u64 {
    let block: Option<&[u8; 64]> = h
        .get(base..base.saturating_add(64))
        .and_then(|s| s.try_into().ok());
    let Some(c) = block else {
        let mut d = 0u64;
        for (j, &b) in h.get(base..).unwrap_or(&[]).iter().enumerate() {
            d |= u64::from(b.is_ascii_digit()) << j;
        }
        return d;
    };
    let mut f = [0u8; 64];
    let mut any = 0u8;
    for (o, &b) in f.iter_mut().zip(c) {
        *o = u8::from(b.wrapping_sub(b'0') < 10);
        any |= *o;
    }
    if any == 0 {
        // Prose: most blocks have no digit at all.
        return 0;
    }
    // Lane j holds 0 or 1; the multiply moves lane j's bit to bit 56 + j without carries.
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let mut d = 0u64;
    for (k, w8) in f.chunks_exact(8).enumerate() {
        let mut x = [0u8; 8];
        x.copy_from_slice(w8);
        d |= (u64::from_le_bytes(x).wrapping_mul(GATHER) >> 56) << (8 * k);
    }
    d
}

/// First position >= `from` whose byte cannot be part of a URL. Eight table lookups are
/// OR-ed per step (one branch per 8 bytes); the exact byte is then found in that block. (A
/// vectorised comparison variant measured more instructions than the table.)
fn url_end(h: &[u8], from: usize) -> usize {
    let stop = |b: u8| CLASS[usize::from(b)] & C_URL_STOP;
    let mut i = from;
    while let Some(c) = h.get(i..i.saturating_add(8)) {
        let Ok(c) = <[u8; 8]>::try_from(c) else { break };
        let any = c.iter().fold(0, |acc, &b| acc | stop(b));
        if any != 0 {
            break;
        }
        i += 8;
    }
    h.get(i..)
        .and_then(|r| r.iter().position(|&b| stop(b) != 0))
        .map_or(h.len(), |j| i + j)
}

// Separator codes: the one or two separator bytes between two digit groups as one integer.

const S_SP: u16 = b' ' as u16;
const S_DASH: u16 = b'-' as u16;
const S_DOT: u16 = b'.' as u16;
const S_SLASH: u16 = b'/' as u16;
const S_LP: u16 = b'(' as u16;
const S_RP: u16 = b')' as u16;
const S_RP_SP: u16 = ((b')' as u16) << 8) | b' ' as u16;
const S_SP_LP: u16 = ((b' ' as u16) << 8) | b'(' as u16;

/// Value of a short ASCII digit string (callers pass at most 4 digits).
fn num(d: &[u8]) -> u32 {
    d.iter().fold(0u32, |acc, &b| {
        acc.saturating_mul(10)
            .saturating_add(u32::from(b.wrapping_sub(b'0')))
    })
}

fn all_same(d: &[u8]) -> bool {
    d.first().is_some_and(|&f| d.iter().all(|&b| b == f))
}

// ---------------------------------------------------------------------------------------------
// Validators. All take ASCII digits/letters already shaped by the scanner.

/// SSA rules: area not 000/666/9xx, group not 00, serial not 0000, and two famous numbers
/// (the Woolworth wallet card 078-05-1120 and the 219-09-9999 advertisement).
fn ssn_ok(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = num(&d[..3]);
    let group = num(&d[3..5]);
    let serial = num(&d[5..]);
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && d != b"078051120"
        && d != b"219099999"
}

/// Luhn over ASCII digits (check digit last).
fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &b) in d.iter().rev().enumerate() {
        let mut v = u32::from(b.wrapping_sub(b'0'));
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// Known issuer ranges with their lengths. Lengths are strict per brand so the broad Maestro
/// "6" range does not accept arbitrary 6-prefixed numbers outside 13..=19 digits.
fn iin_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| num(d.get(..k).unwrap_or(b""));
    let first = d.first().copied().unwrap_or(0);
    let visa = first == b'4' && matches!(n, 13 | 16 | 19);
    let mc = n == 16 && ((51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4)));
    let amex = n == 15 && matches!(p(2), 34 | 37);
    let discover = (16..=19).contains(&n)
        && (p(4) == 6011
            || (644..=649).contains(&p(3))
            || p(2) == 65
            || (622_126..=622_925).contains(&p(6)));
    let jcb = (16..=19).contains(&n) && (3528..=3589).contains(&p(4));
    let diners = (14..=19).contains(&n)
        && ((300..=305).contains(&p(3)) || p(2) == 36 || (38..=39).contains(&p(2)));
    let unionpay = (16..=19).contains(&n) && p(2) == 62;
    let maestro =
        (12..=19).contains(&n) && (p(2) == 50 || (56..=58).contains(&p(2)) || first == b'6');
    visa || mc || amex || discover || jcb || diners || unionpay || maestro
}

fn card_ok(d: &[u8]) -> bool {
    (13..=19).contains(&d.len()) && !all_same(d) && luhn(d) && iin_ok(d)
}

/// NPI: 10 digits starting 1 or 2; Luhn over the number prefixed with the ISO health
/// industry prefix 80840 (CMS rule).
fn npi_ok(d: &[u8]) -> bool {
    if d.len() != 10 || !matches!(d[0], b'1' | b'2') {
        return false;
    }
    let mut buf = [0u8; 15];
    buf[..5].copy_from_slice(b"80840");
    buf[5..].copy_from_slice(d);
    luhn(&buf)
}

/// NANP: area and exchange start 2-9, area is not an N11 service code, not all one digit.
fn nanp_ok(d: &[u8]) -> bool {
    d.len() == 10
        && (b'2'..=b'9').contains(&d[0])
        && !(d[1] == b'1' && d[2] == b'1')
        && (b'2'..=b'9').contains(&d[3])
        && !all_same(d)
}

/// MBI letters exclude S, L, O, I, B, Z (to avoid confusion with digits).
fn mbi_letter(b: u8) -> bool {
    let u = b.to_ascii_uppercase();
    u.is_ascii_uppercase() && !matches!(u, b'S' | b'L' | b'O' | b'I' | b'B' | b'Z')
}

fn mbi_ok(c: &[u8; 11]) -> bool {
    let d = |b: u8| b.is_ascii_digit();
    let an = |b: u8| mbi_letter(b) || d(b);
    (b'1'..=b'9').contains(&c[0])
        && mbi_letter(c[1])
        && an(c[2])
        && d(c[3])
        && mbi_letter(c[4])
        && an(c[5])
        && d(c[6])
        && mbi_letter(c[7])
        && mbi_letter(c[8])
        && d(c[9])
        && d(c[10])
}

fn vin_value(b: u8) -> Option<u32> {
    Some(match b {
        b'0'..=b'9' => u32::from(b - b'0'),
        b'A' | b'J' => 1,
        b'B' | b'K' | b'S' => 2,
        b'C' | b'L' | b'T' => 3,
        b'D' | b'M' | b'U' => 4,
        b'E' | b'N' | b'V' => 5,
        b'F' | b'W' => 6,
        b'G' | b'P' | b'X' => 7,
        b'H' | b'Y' => 8,
        b'R' | b'Z' => 9,
        _ => return None, // I, O, Q, lowercase, punctuation
    })
}

/// North American VIN check digit (position 9). Uppercase only: VINs are printed uppercase,
/// and accepting mixed case would let 1 in 11 random 17-char tokens (ids, hashes) through.
fn vin_ok(v: &[u8]) -> bool {
    const W: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    if v.len() != 17 || all_same(v) {
        return false;
    }
    let mut sum = 0;
    for (&b, &w) in v.iter().zip(&W) {
        match vin_value(b) {
            Some(x) => sum += x * w,
            None => return false,
        }
    }
    let check = match sum % 11 {
        10 => b'X',
        r => b'0' + r as u8,
    };
    v[8] == check
}

fn leap(y: u32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Calendar validity. Four-digit years are limited to 1800..=2199 (birth dates to far future
/// appointments; "9999-12-31" sentinels are not PHI); two-digit years allow Feb 29 because the
/// century is unknown.
fn date_ok(y: u32, m: u32, d: u32, full_year: bool) -> bool {
    if !(1..=12).contains(&m) || d == 0 || (full_year && !(1800..=2199).contains(&y)) {
        return false;
    }
    let dim = match m {
        2 if !full_year || leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    d <= dim
}

/// English month name, full or 3-letter abbreviation (and "Sept"), any ASCII case.
fn month_of(w: &[u8]) -> Option<u32> {
    const M: [&[u8]; 12] = [
        b"january",
        b"february",
        b"march",
        b"april",
        b"may",
        b"june",
        b"july",
        b"august",
        b"september",
        b"october",
        b"november",
        b"december",
    ];
    if !(3..=9).contains(&w.len()) {
        return None;
    }
    for (i, m) in M.iter().enumerate() {
        if w.eq_ignore_ascii_case(m)
            || (w.len() == 3 && w.eq_ignore_ascii_case(&m[..3]))
            || (i == 8 && w.eq_ignore_ascii_case(b"sept"))
        {
            return Some(i as u32 + 1);
        }
    }
    None
}

fn domain_ok(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    let mut labels = 0;
    let mut last: &[u8] = b"";
    for l in d.split(|&b| b == b'.') {
        let ok = (1..=63).contains(&l.len())
            && l.first().is_some_and(u8::is_ascii_alphanumeric)
            && l.last().is_some_and(u8::is_ascii_alphanumeric);
        if !ok {
            return false;
        }
        labels += 1;
        last = l;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

// ---------------------------------------------------------------------------------------------
// The built-in candidate scanner.

/// Longest run window parsed at once. Runs longer than this (adversarial digit soups) are
/// processed in windows overlapping by `SPAN_GROUPS`, so memory stays bounded and every group
/// is parsed at most twice.
const MAX_GROUPS: usize = 64;
/// Most groups one candidate can span (a 19-digit card as 4+3+3+3+3+3).
const SPAN_GROUPS: usize = 6;

/// One digit group of a numeric run, with the separator that joins it to the next group.
#[derive(Clone, Copy, Debug, Default)]
struct Grp {
    s: usize,
    e: usize,
    /// Separator code (see `sep_code`) to the next group; 0 for the last group.
    sep: u16,
}

impl Grp {
    #[inline(always)]
    fn len(self) -> usize {
        self.e - self.s
    }
}

/// Parse digit groups joined by 1-2 separator bytes from digit `start` into `g`. Returns true if
/// it stopped at `MAX_GROUPS` (the run may continue).
fn parse_groups(h: &[u8], start: usize, g: &mut Vec<Grp>) -> bool {
    let mut q = start;
    loop {
        let s = q;
        let e = digits_end(h, q);
        let nb = at(h, e);
        if is_word(nb) {
            // "1990-01-31T12:00": the date group before 'T' stays (only the date shapes accept
            // it); any other group glued to letters is not a number and ends the run before it.
            if nb == b'T' && at(h, e + 1).is_ascii_digit() {
                g.push(Grp { s, e, sep: 0 });
            } else if let Some(last) = g.last_mut() {
                last.sep = 0;
            }
            return false;
        }
        g.push(Grp { s, e, sep: 0 });
        if g.len() == MAX_GROUPS {
            return true;
        }
        if !is_sep(nb) {
            return false;
        }
        let c2 = at(h, e + 1);
        let (next, code) = if c2.is_ascii_digit() {
            (e + 1, u16::from(nb))
        } else if is_sep(c2) && at(h, e + 2).is_ascii_digit() {
            (e + 2, (u16::from(nb) << 8) | u16::from(c2))
        } else {
            return false;
        };
        if let Some(last) = g.last_mut() {
            last.sep = code;
        }
        q = next;
    }
}

/// Is the digit run `p..p + len` a standalone number: not glued to a word (MBI, VIN, UUID
/// pieces), not next to ':' (IPv6) and not joined by a separator to more digits?
#[inline(always)]
fn lone(h: &[u8], p: usize, len: usize) -> bool {
    let (prev, next) = (if p > 0 { h[p - 1] } else { 0 }, at(h, p + len));
    let joined = is_sep(next)
        && (at(h, p + len + 1).is_ascii_digit()
            || (is_sep(at(h, p + len + 1)) && at(h, p + len + 2).is_ascii_digit()));
    !word_before(h, p) && !is_word(next) && prev != b':' && next != b':' && !joined
}

/// The digits of consecutive groups, concatenated into `buf` (at most 32). Returns the count.
fn collect_digits(h: &[u8], g: &[Grp], buf: &mut [u8; 32]) -> usize {
    let mut n = 0;
    for x in g {
        for &b in h.get(x.s..x.e).unwrap_or(&[]) {
            if let Some(slot) = buf.get_mut(n) {
                *slot = b;
                n += 1;
            }
        }
    }
    n
}

/// A digit run is only examined if its first 16 bytes hold at least this many digits. Every
/// numeric candidate qualifies (the sparsest, `1.1.1.1`, `1/1/90`, `Jan 1, 1990`, has 4), while
/// most digit runs in FHIR JSON (`"versionId":"3"`, `"rank":1`, `prac-5`, `r4`) are skipped
/// without a single branch misprediction. IPv6 forms with fewer digits are found from `::`.
const MIN_DIGITS: u32 = 4;

struct Builtin<'a> {
    h: &'a [u8],
    sc: &'a Scanner,
    out: &'a mut Vec<Cand>,
    /// Hex/colon regions that end before this position were already tried as IPv6.
    v6_memo: usize,
    /// The raw and trimmed end of the last URL: a `://` inside it (`http://x/?u=http://…`)
    /// reuses them, so nested schemes cannot make URL scanning quadratic.
    url_memo: (usize, usize),
    /// Scratch: digit groups of the current numeric run.
    groups: Vec<Grp>,
}

/// Sorted positions of a rare literal ('@', "://", "::"), found with `memchr`/`memmem` (SIMD
/// inside the dependency) and consumed in position order. (A filtered `memchr` for every ':'
/// measured slower: JSON has a ':' after every key.)
enum Stream<'h> {
    Off,
    Byte(memchr::Memchr<'h>),
    Str(Box<memchr::memmem::FindIter<'h, 'static>>),
}

impl Stream<'_> {
    fn next_pos(&mut self) -> usize {
        match self {
            Stream::Off => None,
            Stream::Byte(it) => it.next(),
            Stream::Str(it) => it.next(),
        }
        .unwrap_or(usize::MAX)
    }
}

/// A stream with one position of lookahead.
struct Peek<'h> {
    s: Stream<'h>,
    next: usize,
}

impl<'h> Peek<'h> {
    fn new(mut s: Stream<'h>) -> Peek<'h> {
        let next = s.next_pos();
        Peek { s, next }
    }

    /// Bits for the positions in `base..base + 64`; positions before `base` lie in bytes an
    /// earlier finding consumed and are dropped.
    fn bits(&mut self, base: usize) -> u64 {
        let mut m = 0u64;
        while self.next < base.saturating_add(64) {
            if self.next >= base {
                m |= 1u64 << (self.next - base);
            }
            self.next = self.s.next_pos();
        }
        m
    }
}

impl Builtin<'_> {
    #[inline(always)]
    fn en(&self, b: B) -> bool {
        self.sc.en[b as usize]
    }

    fn emit(&mut self, b: B, start: usize, end: usize, conf: u8) {
        let sc = self.sc;
        for &det in &sc.builtin[b as usize] {
            self.out.push(Cand::new(start, end, det, conf));
        }
    }

    /// The main loop: visit candidate starts in position order, 64 bytes at a time. A start is
    /// the first digit of a digit run, an '@', the ':' of "://" or the first ':' of "::". Each
    /// handler returns how far it consumed; starts inside consumed bytes are dropped.
    fn run(&mut self) {
        let h = self.h;
        let sc = self.sc;
        let dmask = if sc.trig.digit { u64::MAX } else { 0 };
        let mut ats = Peek::new(match sc.trig.at {
            true => Stream::Byte(memchr::memchr_iter(b'@', h)),
            false => Stream::Off,
        });
        let mut urls = Peek::new(match sc.trig.colon {
            true => Stream::Str(Box::new(memchr::memmem::find_iter(h, b"://"))),
            false => Stream::Off,
        });
        let mut v6s = Peek::new(match self.en(B::Ip) {
            true => Stream::Str(Box::new(memchr::memmem::find_iter(h, b"::"))),
            false => Stream::Off,
        });
        // `i`: everything before it is consumed (and is the floor for backward scans).
        let mut i = 0usize;
        let mut base = 0usize;
        while base < h.len() {
            let end = base + 64;
            let d = digit_mask(h, base) & dmask;
            // A digit continues a run if the byte before it is an unconsumed digit.
            let carry = u64::from(base > i && h[base - 1].is_ascii_digit());
            let mut cand = d & !((d << 1) | carry);
            if ats.next.min(urls.next).min(v6s.next) < end {
                cand |= ats.bits(base) | urls.bits(base) | v6s.bits(base);
            }
            let mut ahead: Option<u64> = None;
            while cand != 0 {
                let j = cand.trailing_zeros() as usize;
                cand &= cand - 1;
                let p = base + j;
                let next = match h[p] {
                    b'@' => self.on_at(p),
                    b':' if at(h, p + 1) == b'/' => self.on_url(p),
                    b':' => self.on_v6_colon(p, i),
                    _ => {
                        let win = if j <= 48 {
                            d >> j
                        } else {
                            let d1 = *ahead.get_or_insert_with(|| digit_mask(h, end) & dmask);
                            (d >> j) | (d1 << (64 - j))
                        };
                        if (win & 0xffff).count_ones() < MIN_DIGITS {
                            continue;
                        }
                        // A lone number of a length no shape has (zip codes, record numbers,
                        // ids - most numbers in JSON), between non-word bytes: nothing to do.
                        let rl = (!win).trailing_zeros() as usize;
                        if rl < 16 && !matches!(rl, 1 | 2 | 9..=11 | 13..=19) && lone(h, p, rl) {
                            continue;
                        }
                        self.on_digit(p, i)
                    }
                };
                // Every handler consumes at least its start byte: guaranteed progress.
                i = next.max(p + 1);
                if i >= end {
                    break;
                }
                cand &= u64::MAX << (i - base);
            }
            base = end.max(i);
        }
    }

    /// The first digit of a digit run at `p`; `floor` is where consumed bytes end (backward
    /// scans never cross it).
    fn on_digit(&mut self, p: usize, floor: usize) -> usize {
        let h = self.h;
        let mut ts = p;
        while ts > floor && word_at(h, ts - 1) {
            ts -= 1;
        }
        let de = digits_end(h, p + 1);
        let mut te = de;
        while te < h.len() && is_word(h[te]) {
            te += 1;
        }
        if self.en(B::Ip)
            && p >= self.v6_memo
            && (at(h, te) == b':' || (ts > 0 && h[ts - 1] == b':'))
        {
            if let Some(end) = self.try_v6(p, floor) {
                return end;
            }
        }
        let glued = word_before(h, ts);
        if ts < p || te > de || glued {
            // Letters and digits mixed (MBI, VIN, UUID pieces, "2nd"), or glued to the
            // previous token: never a standalone number.
            return if glued { te } else { self.mixed_token(ts, te) };
        }
        if !self.sc.numeric {
            return te;
        }
        self.numeric_run(p, de)
    }

    /// Alphanumeric token `ts..te` containing letters and digits, at a word boundary.
    fn mixed_token(&mut self, ts: usize, te: usize) -> usize {
        let h = self.h;
        let len = te - ts;
        let mut next = te;
        if self.en(B::Mbi) {
            let mut c = [0u8; 11];
            if len == 11 {
                c.copy_from_slice(&h[ts..te]);
                if mbi_ok(&c) {
                    self.emit(B::Mbi, ts, te, conf::MBI);
                }
            } else if len == 4 && at(h, te) == b'-' && at(h, te + 4) == b'-' && te + 9 <= h.len() {
                // 1EG4-TE5-MK73
                let mid = &h[te + 1..te + 4];
                let last = &h[te + 5..te + 9];
                if mid.iter().chain(last).all(u8::is_ascii_alphanumeric) && end_ok(h, te + 9) {
                    c[..4].copy_from_slice(&h[ts..te]);
                    c[4..7].copy_from_slice(mid);
                    c[7..].copy_from_slice(last);
                    if mbi_ok(&c) {
                        self.emit(B::Mbi, ts, te + 9, conf::MBI);
                        next = te + 9;
                    }
                }
            }
        }
        if self.en(B::Vin) && len == 17 && vin_ok(&h[ts..te]) {
            self.emit(B::Vin, ts, te, conf::VIN);
        }
        next
    }

    /// IPv6 in the maximal hex/colon/dot region around `p`. Returns the end if one was found.
    fn try_v6(&mut self, p: usize, floor: usize) -> Option<usize> {
        let h = self.h;
        let mut rs = p;
        while rs > floor && is_v6(h[rs - 1]) {
            rs -= 1;
        }
        let mut re = p;
        while re < h.len() && is_v6(h[re]) {
            re += 1;
        }
        self.v6_memo = re;
        // "IP:2001:db8::1" - a single leading colon belongs to the label, not the address.
        if at(h, rs) == b':' && at(h, rs + 1) != b':' {
            rs += 1;
        }
        if word_before(h, rs) || is_word(at(h, re)) {
            return None;
        }
        let mut e = re;
        while e > rs && h[e - 1] == b'.' {
            e -= 1;
        }
        if e >= rs + 2 && h[e - 1] == b':' && h[e - 2] != b':' {
            e -= 1;
        }
        let cand = h.get(rs..e)?;
        // 45 = longest textual IPv6 (with embedded IPv4). A digit is required so identifier
        // paths like "ab::cd" are not addresses.
        if cand.len() < 2
            || cand.len() > 45
            || cand.iter().filter(|&&b| b == b':').count() < 2
            || !cand.iter().any(u8::is_ascii_digit)
        {
            return None;
        }
        std::str::from_utf8(cand).ok()?.parse::<Ipv6Addr>().ok()?;
        self.emit(B::Ip, rs, e, conf::IPV6);
        Some(e)
    }

    /// An '@'. The local part is found by scanning back without regard to the consumed floor:
    /// its digits ("jsmith1990@", "5552345678@txt.example") may already have been visited as
    /// numbers, and the overlapping candidates are coalesced with the address later. The scan
    /// is capped (RFC 5321 allows 64 bytes), so it stays linear.
    fn on_at(&mut self, p: usize) -> usize {
        const MAX_LOCAL: usize = 256;
        let h = self.h;
        if !self.en(B::Email) {
            return p + 1;
        }
        let mut ls = p;
        while ls > 0 && p - ls < MAX_LOCAL && is_local(h[ls - 1]) && !escape_letter(h, ls - 1) {
            ls -= 1;
        }
        // Leading punctuation ("...", "-", "+") is not part of an address.
        while ls < p && !(h[ls].is_ascii_alphanumeric() || h[ls] == b'_') {
            ls += 1;
        }
        let local = &h[ls..p];
        if local.is_empty() || local.ends_with(b".") || local.windows(2).any(|w| w == b"..") {
            return p + 1;
        }
        let mut de = p + 1;
        while de < h.len() && is_domain(h[de]) {
            de += 1;
        }
        // Sentence punctuation after the address.
        while de > p + 1 && matches!(h[de - 1], b'.' | b'-') {
            de -= 1;
        }
        if !domain_ok(h.get(p + 1..de).unwrap_or(b"")) {
            return p + 1;
        }
        self.emit(B::Email, ls, de, conf::EMAIL);
        de
    }

    /// A "::" from the stream: compressed IPv6 ("fe80::1", "::1") may have too few digits to
    /// pass the digit-run filter.
    fn on_v6_colon(&mut self, p: usize, floor: usize) -> usize {
        if p < self.v6_memo {
            return p + 1;
        }
        self.try_v6(p, floor).unwrap_or(p + 1)
    }

    /// The ':' of a "://" from the stream.
    fn on_url(&mut self, p: usize) -> usize {
        let h = self.h;
        if !self.en(B::Url) || at(h, p + 2) != b'/' {
            return p + 1;
        }
        let scheme_start = if p >= 5 && h[p - 5..p].eq_ignore_ascii_case(b"https") {
            p - 5
        } else if p >= 4 && h[p - 4..p].eq_ignore_ascii_case(b"http") {
            p - 4
        } else {
            return p + 1;
        };
        if word_before(h, scheme_start)
            || !(at(h, p + 3).is_ascii_alphanumeric() || at(h, p + 3) == b'[')
        {
            return p + 1;
        }
        if p + 3 < self.url_memo.0 {
            // Inside the previous URL's run: same end. Its bytes are still scanned (below).
            let e = self.url_memo.1;
            if e > p + 4 {
                self.emit(B::Url, scheme_start, e, conf::URL);
            }
            return p + 3;
        }
        let raw_end = url_end(h, p + 3);
        let mut e = raw_end;
        while e > p + 4 {
            let b = h[e - 1];
            // A closing parenthesis belongs to the URL only if it opened one (Wikipedia-style).
            let trim = matches!(
                b,
                b'.' | b',' | b';' | b':' | b'!' | b'?' | b'\'' | b']' | b'*'
            ) || (b == b')' && !h[p + 3..e].contains(&b'('));
            if !trim {
                break;
            }
            e -= 1;
        }
        self.url_memo = (raw_end, e);
        self.emit(B::Url, scheme_start, e, conf::URL);
        // Not consumed: an SSN, e-mail or IP inside the URL is a finding of its own, which
        // coalesces with the URL and takes the attribution (see `Scanner::weak`).
        p + 3
    }

    /// The numeric run starting at digit `p` (first group `p..de`, at a word boundary, token
    /// all digits): parse it into digit groups and try every numeric shape at every group start.
    fn numeric_run(&mut self, p: usize, de: usize) -> usize {
        let h = self.h;
        let nb = at(h, de);
        let continues = is_sep(nb)
            && (at(h, de + 1).is_ascii_digit()
                || (is_sep(at(h, de + 1)) && at(h, de + 2).is_ascii_digit()));
        if !continues {
            // A lone number, the common case: only a few lengths can be anything.
            let l = de - p;
            if !matches!(l, 1 | 2 | 9..=11 | 13..=19) {
                return de;
            }
            return de.max(self.analyze(
                &[Grp {
                    s: p,
                    e: de,
                    sep: 0,
                }],
                0,
            ));
        }
        let mut g = std::mem::take(&mut self.groups);
        let mut start = p;
        let next = loop {
            g.clear();
            let cut = parse_groups(h, start, &mut g);
            let Some(&Grp { e: last_end, .. }) = g.last() else {
                break start + 1;
            };
            let limit = if cut {
                MAX_GROUPS + 1 - SPAN_GROUPS
            } else {
                g.len()
            };
            let mut end = last_end;
            for a in 0..limit {
                end = end.max(self.analyze(&g, a));
            }
            match (cut, g.get(limit)) {
                // Continue with a window that overlaps the last SPAN_GROUPS - 1 groups, so no
                // candidate straddles the cut unseen; each group is parsed at most twice.
                (true, Some(x)) => start = x.s,
                _ => break end,
            }
        };
        self.groups = g;
        next
    }

    /// Every numeric interpretation starting at group `a` of run `g`. Returns the furthest end
    /// emitted (month-name dates reach past the run). Dispatches on the first group's length:
    /// each shape starts with a group of known size, so most groups reach one or two tests.
    fn analyze(&mut self, g: &[Grp], a: usize) -> usize {
        let h = self.h;
        let en = self.sc.en;
        let on = |b: B| en[b as usize];
        let Grp { s, e, .. } = g[a];
        // Groups available from `a` (no shape spans more than SPAN_GROUPS).
        let n = (g.len() - a).min(SPAN_GROUPS);
        let mut far = 0;
        match e - s {
            l @ (1 | 2) => {
                if l == 1 && h[s] == b'1' && n >= 2 && on(B::Phone) {
                    self.phone_cc(g, a);
                }
                if n >= 3 && on(B::Date) {
                    self.date_numeric(g, a);
                }
                if n >= 4 && on(B::Ip) {
                    self.ipv4(g, a);
                }
                if on(B::Date) {
                    far = self.month_dates(s, e);
                }
            }
            3 => {
                if n >= 3 && on(B::Ssn) {
                    self.ssn_grouped(g, a);
                }
                if n >= 3 && on(B::Phone) && g[a + 1].len() == 3 && g[a + 2].len() == 4 {
                    if let Some((st, en, c)) = self.phone3(g, a) {
                        self.emit(B::Phone, st, en, c);
                    }
                }
                if n >= 4 && on(B::Ip) {
                    self.ipv4(g, a);
                }
            }
            4 => {
                if n >= 3 && on(B::Date) {
                    self.date_numeric(g, a);
                }
                if n >= 2 && on(B::Card) {
                    self.card_grouped(g, a, n);
                }
            }
            9..=11 | 13..=19 if end_ok(h, e) => self.single(s, e),
            _ => {}
        }
        far
    }

    /// A group standing alone: bare SSN, NPI, bare phone, 1+10-digit phone, bare card.
    fn single(&mut self, s: usize, e: usize) {
        let h = self.h;
        let d = &h[s..e];
        match d.len() {
            9 if self.en(B::Ssn) && ssn_ok(d) => self.emit(B::Ssn, s, e, conf::SSN_BARE),
            10 => {
                if self.en(B::Npi) && npi_ok(d) {
                    self.emit(B::Npi, s, e, conf::NPI);
                }
                if self.en(B::Phone) && nanp_ok(d) {
                    self.emit(B::Phone, s, e, conf::PHONE_BARE);
                }
            }
            11 if self.en(B::Phone) && d[0] == b'1' && nanp_ok(&d[1..]) => {
                if s > 0 && h[s - 1] == b'+' && !word_before(h, s - 1) {
                    self.emit(B::Phone, s - 1, e, conf::PHONE_E164);
                } else {
                    self.emit(B::Phone, s, e, conf::PHONE_BARE);
                }
            }
            13..=19 if self.en(B::Card) && card_ok(d) => self.emit(B::Card, s, e, conf::CARD_BARE),
            _ => {}
        }
    }

    /// 123-45-6789 / 123 45 6789 (groups a..a + 3 exist, the first has 3 digits).
    fn ssn_grouped(&mut self, g: &[Grp], a: usize) {
        let h = self.h;
        let (x, y, z) = (g[a], g[a + 1], g[a + 2]);
        if y.len() != 2 || z.len() != 4 || x.sep != y.sep || !(x.sep == S_DASH || x.sep == S_SP) {
            return;
        }
        let mut buf = [0u8; 32];
        let k = collect_digits(h, &g[a..a + 3], &mut buf);
        if end_ok(h, z.e) && ssn_ok(&buf[..k]) {
            let c = if x.sep == S_DASH {
                conf::SSN_DASHED
            } else {
                conf::SSN_SPACED
            };
            self.emit(B::Ssn, x.s, z.e, c);
        }
    }

    /// "1" (optionally "+1") followed by a NANP number: `+1 555 234 5678`, `1-555-234-5678`,
    /// `1 (555) 234-5678`, `+1 5552345678`.
    fn phone_cc(&mut self, g: &[Grp], a: usize) {
        let h = self.h;
        let cc = g[a];
        if !matches!(cc.sep, S_SP | S_DASH | S_DOT | S_SP_LP | S_LP) {
            return;
        }
        let lens = |k: usize| g.get(a + k).map_or(0, |x| x.len());
        let core = if (lens(1), lens(2), lens(3)) == (3, 3, 4) {
            self.phone3(g, a + 1)
        } else if lens(1) == 10 && cc.sep != S_SP_LP && cc.sep != S_LP {
            let Grp { s: x, e: y, .. } = g[a + 1];
            (end_ok(h, y) && nanp_ok(&h[x..y])).then_some((x, y, conf::PHONE_BARE))
        } else {
            None
        };
        if let Some((_, end, c)) = core {
            let s = cc.s;
            if s > 0 && h[s - 1] == b'+' && !word_before(h, s - 1) {
                self.emit(B::Phone, s - 1, end, c.saturating_add(10).min(100));
            } else {
                self.emit(B::Phone, s, end, c.saturating_add(5).min(100));
            }
        }
    }

    /// Numeric dates: 1990-01-31, 01/31/1990, 1/31/90, 31.01.1990 (groups a..a + 3 exist).
    fn date_numeric(&mut self, g: &[Grp], a: usize) {
        let h = self.h;
        let (x, y, z) = (g[a], g[a + 1], g[a + 2]);
        if x.sep != y.sep || !matches!(x.sep, S_DASH | S_SLASH | S_DOT) || y.len() > 2 {
            return;
        }
        let c = x.sep as u8;
        let ymd = x.len() == 4 && z.len() <= 2;
        let mdy = x.len() <= 2 && (z.len() == 4 || (z.len() == 2 && c != b'.'));
        // Part of a longer chain with the same separator ("1.2.3.4", "2020-01-02-3")?
        let ext = (x.s >= 2 && h[x.s - 1] == c && h[x.s - 2].is_ascii_digit())
            || (at(h, z.e) == c && at(h, z.e + 1).is_ascii_digit());
        if !(ymd || mdy) || ext {
            return;
        }
        let (p, q, r) = (num(&h[x.s..x.e]), num(&h[y.s..y.e]), num(&h[z.s..z.e]));
        if ymd {
            let iso_t = c == b'-' && at(h, z.e) == b'T' && at(h, z.e + 1).is_ascii_digit();
            if (end_ok(h, z.e) || iso_t) && date_ok(p, q, r, true) {
                let cf = if c == b'-' {
                    conf::DATE_ISO
                } else {
                    conf::DATE_NUMERIC
                };
                self.emit(B::Date, x.s, z.e, cf);
            }
        } else if end_ok(h, z.e) {
            // Month-first (US) or day-first; either reading makes it a date.
            let full = z.len() == 4;
            if date_ok(r, p, q, full) || date_ok(r, q, p, full) {
                let cf = if full {
                    conf::DATE_NUMERIC
                } else {
                    conf::DATE_SHORT_YEAR
                };
                self.emit(B::Date, x.s, z.e, cf);
            }
        }
    }

    /// IPv4 in groups a..a + 4, not inside a longer dotted run (versions, OIDs).
    fn ipv4(&mut self, g: &[Grp], a: usize) {
        let h = self.h;
        let oct = &g[a..a + 4];
        if oct[..3].iter().any(|x| x.sep != S_DOT) || oct.iter().any(|x| x.len() > 3) {
            return;
        }
        let (s, end) = (oct[0].s, oct[3].e);
        let ext = (s >= 2 && h[s - 1] == b'.' && h[s - 2].is_ascii_digit())
            || (at(h, end) == b'.' && at(h, end + 1).is_ascii_digit());
        let octets_ok = oct.iter().all(|x| {
            let o = &h[x.s..x.e];
            (o.len() == 1 || o[0] != b'0') && num(o) <= 255
        });
        if !ext && end_ok(h, end) && octets_ok {
            self.emit(B::Ip, s, end, conf::IPV4);
        }
    }

    /// Grouped card: 4 digits, then groups of 3..=6 (the last may be shorter), one consistent
    /// space or dash separator; at most SPAN_GROUPS groups (4 + 3 * 5 = 19 digits). Keeps the
    /// longest valid reading.
    fn card_grouped(&mut self, g: &[Grp], a: usize, n: usize) {
        let h = self.h;
        let sep = g[a].sep;
        if sep != S_SP && sep != S_DASH {
            return;
        }
        let mut buf = [0u8; 32];
        let mut total = 4;
        let mut best = None;
        for k in 1..n {
            let (prev, x) = (g[a + k - 1], g[a + k]);
            if prev.sep != sep {
                break;
            }
            total += x.len();
            if total > 19 {
                break;
            }
            if total >= 13 && x.len() <= 6 && end_ok(h, x.e) {
                let m = collect_digits(h, &g[a..=a + k], &mut buf);
                if card_ok(&buf[..m]) {
                    best = Some(x.e);
                }
            }
            if !(3..=6).contains(&x.len()) {
                break;
            }
        }
        if let Some(end) = best {
            self.emit(B::Card, g[a].s, end, conf::CARD_GROUPED);
        }
    }

    /// Month-name dates around the 1-2 digit day `s..e`. Returns the furthest end emitted.
    fn month_dates(&mut self, s: usize, e: usize) -> usize {
        let h = self.h;
        let mut far = 0;
        // Cheap gates first: a month word needs a space before, or a space/dash after.
        let before =
            s >= 4 && h[s - 1] == b' ' && h[s - 2].is_ascii_alphabetic() | (h[s - 2] == b'.');
        let after = matches!(at(h, e), b' ' | b'-') && at(h, e + 1).is_ascii_alphabetic();
        if !(before || after) {
            return 0;
        }
        let day = num(&h[s..e]);
        if before {
            if let Some((st, en)) = self.month_before(s, e, day) {
                self.emit(B::Date, st, en, conf::DATE_MONTH_NAME);
                far = en;
            }
        }
        if after {
            if let Some((st, en)) = self.month_after(s, e, day) {
                self.emit(B::Date, st, en, conf::DATE_MONTH_NAME);
                far = far.max(en);
            }
        }
        far
    }

    /// NANP number in groups `c..c + 3` (lengths 3, 3, 4 checked by the caller) with
    /// separators `s1`, `s2`: `(555) 234-5678`, `555-234-5678`, `555.234.5678`,
    /// `555 234 5678`, `555 234-5678`.
    fn phone3(&self, g: &[Grp], c: usize) -> Option<(usize, usize, u8)> {
        let h = self.h;
        let (Grp { s, e, sep: s1 }, m, l) = (*g.get(c)?, *g.get(c + 1)?, *g.get(c + 2)?);
        let s2 = m.sep;
        if (e - s, m.len(), l.len()) != (3, 3, 4) || !end_ok(h, l.e) {
            return None;
        }
        let paren = s > 0 && h[s - 1] == b'(' && (s1 == S_RP || s1 == S_RP_SP);
        let cf = if paren {
            if !matches!(s2, S_DASH | S_SP | S_DOT) || word_before(h, s - 1) {
                return None;
            }
            conf::PHONE_PAREN
        } else {
            match (s1, s2) {
                (S_DASH, S_DASH) | (S_DOT, S_DOT) | (S_SP, S_DASH) => conf::PHONE_SEP,
                (S_SP, S_SP) => conf::PHONE_SPACED,
                _ => return None,
            }
        };
        let mut buf = [0u8; 32];
        let k = collect_digits(h, &g[c..c + 3], &mut buf);
        if !nanp_ok(&buf[..k]) {
            return None;
        }
        Some((if paren { s - 1 } else { s }, l.e, cf))
    }

    /// `Jan 31, 1990`, `January 31 1990`, `Jan. 31, 1990`: month word before the day at `s..e`.
    fn month_before(&self, s: usize, e: usize, day: u32) -> Option<(usize, usize)> {
        let h = self.h;
        if s < 4 || h[s - 1] != b' ' {
            return None;
        }
        let mut we = s - 1;
        if h[we - 1] == b'.' {
            we -= 1;
        }
        let mut ws = we;
        while ws > 0 && h[ws - 1].is_ascii_alphabetic() && we - ws < 10 {
            ws -= 1;
        }
        if word_before(h, ws) {
            return None;
        }
        let month = month_of(&h[ws..we])?;
        let mut y = e;
        if at(h, y) == b',' {
            y += 1;
        }
        if at(h, y) != b' ' {
            return None;
        }
        y += 1;
        let year = h.get(y..y + 4)?;
        if !year.iter().all(u8::is_ascii_digit) || !end_ok(h, y + 4) {
            return None;
        }
        date_ok(num(year), month, day, true).then_some((ws, y + 4))
    }

    /// `31 January 1990`, `31 Jan. 1990`, `31-Jan-1990`: month word after the day at `s..e`.
    fn month_after(&self, s: usize, e: usize, day: u32) -> Option<(usize, usize)> {
        let h = self.h;
        let c = at(h, e);
        if !(c == b' ' || c == b'-') || word_before(h, s) {
            return None;
        }
        let ws = e + 1;
        let mut we = ws;
        while we < h.len() && h[we].is_ascii_alphabetic() && we - ws < 10 {
            we += 1;
        }
        if is_word(at(h, we)) {
            return None;
        }
        let month = month_of(&h[ws..we])?;
        let mut y = we;
        if c == b' ' {
            if at(h, y) == b'.' {
                y += 1;
            }
            if at(h, y) == b',' {
                y += 1;
            }
        }
        if at(h, y) != c {
            return None;
        }
        y += 1;
        let year = h.get(y..y + 4)?;
        if !year.iter().all(u8::is_ascii_digit) || !end_ok(h, y + 4) {
            return None;
        }
        date_ok(num(year), month, day, true).then_some((s, y + 4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILTINS: [(&str, Kind); 10] = [
        ("ssn", Kind::Ssn),
        ("card", Kind::Card),
        ("npi", Kind::Npi),
        ("mbi", Kind::Mbi),
        ("email", Kind::Email),
        ("phone", Kind::Phone),
        ("ip", Kind::Ip),
        ("date", Kind::Date),
        ("vin", Kind::Vin),
        ("url", Kind::Url),
    ];

    fn builtin_specs() -> Vec<DetectorSpec> {
        BUILTINS
            .iter()
            .map(|(n, k)| DetectorSpec::new(*n, k.clone()))
            .collect()
    }

    fn all() -> Scanner {
        Scanner::new(&builtin_specs(), 50).unwrap()
    }

    /// (detector name, matched text, confidence) for every hit.
    fn hits_with(sc: &Scanner, text: &[u8]) -> Vec<(String, String, u8)> {
        let mut out = Vec::new();
        sc.scan(text, &mut out);
        out.iter()
            .map(|h| {
                (
                    sc.name(h.detector).unwrap().to_string(),
                    String::from_utf8_lossy(&text[h.start..h.end]).into_owned(),
                    h.confidence,
                )
            })
            .collect()
    }

    fn hits(text: &str) -> Vec<(String, String)> {
        hits_with(&all(), text.as_bytes())
            .into_iter()
            .map(|(n, m, _)| (n, m))
            .collect()
    }

    fn found(text: &str, name: &str, matched: &str) -> bool {
        hits(text).iter().any(|(n, m)| n == name && m == matched)
    }

    fn none_of(text: &str, name: &str) -> bool {
        !hits(text).iter().any(|(n, _)| n == name)
    }

    #[track_caller]
    fn assert_found(text: &str, name: &str, matched: &str) {
        assert!(
            found(text, name, matched),
            "{name} {matched:?} not in {text:?}: {:?}",
            hits(text)
        );
    }

    #[track_caller]
    fn assert_none(text: &str, name: &str) {
        assert!(
            none_of(text, name),
            "unexpected {name} in {text:?}: {:?}",
            hits(text)
        );
    }

    /// Sorted, non-overlapping, in bounds.
    fn check_hits(hay: &[u8], out: &[Hit]) {
        for w in out.windows(2) {
            assert!(w[0].end <= w[1].start, "overlap or disorder: {:?}", w);
        }
        for h in out {
            assert!(h.start < h.end && h.end <= hay.len() && h.confidence <= 100);
        }
    }

    // --- SSN -------------------------------------------------------------------------------

    #[test]
    fn ssn_forms() {
        assert_found("SSN 123-45-6789.", "ssn", "123-45-6789");
        assert_found("member 123-45-6789", "ssn", "123-45-6789");
        assert_found("ssn: 123 45 6789", "ssn", "123 45 6789");
        assert_found("(123-45-6789)", "ssn", "123-45-6789");
        // Mixed separators and extra digits are not SSNs.
        assert_none("123-45 6789", "ssn");
        assert_none("1234-45-6789", "ssn");
        assert_none("123-45-67890", "ssn");
        assert_none("x123-45-6789", "ssn");
        assert_none("123-45-6789x", "ssn");
    }

    #[test]
    fn ssn_validity_rules() {
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "078-05-1120",
            "219-09-9999",
        ] {
            assert_none(&format!("SSN {bad}"), "ssn");
        }
        assert_found("SSN 899-99-9999", "ssn", "899-99-9999");
    }

    #[test]
    fn undashed_ssn_needs_context() {
        assert_none("order 123456789 shipped", "ssn");
        assert_found("SSN: 123456789", "ssn", "123456789");
        assert_found("ss# 123456789", "ssn", "123456789");
        assert_found("Social Security number 123456789", "ssn", "123456789");
        assert_found("123456789 (ssn)", "ssn", "123456789");
        // A context word must be a whole word.
        assert_none("lessn 123456789", "ssn");
        // And close: 40 bytes before at most.
        let far = format!("ssn{}123456789", " ".repeat(45));
        assert_none(&far, "ssn");
    }

    #[test]
    fn rejected_candidate_does_not_hide_the_next() {
        assert_found("000-12-3456 123-45-6789", "ssn", "123-45-6789");
        assert_found("666-66-6666 078-05-1120 123-45-6789", "ssn", "123-45-6789");
        // Invalid 16-digit card run followed by a valid one in the same separator chain.
        assert_found(
            "4111 1111 1111 1112 4111 1111 1111 1111",
            "card",
            "4111 1111 1111 1111",
        );
        let h = hits("4111 1111 1111 1111 123-45-6789");
        assert!(
            h.contains(&("card".into(), "4111 1111 1111 1111".into())),
            "{h:?}"
        );
        assert!(h.contains(&("ssn".into(), "123-45-6789".into())), "{h:?}");
    }

    // --- cards -----------------------------------------------------------------------------

    #[test]
    fn card_test_numbers() {
        for n in [
            "4111111111111111",
            "4012888888881881",
            "4222222222222",
            "5555555555554444",
            "5105105105105100",
            "2223003122003222",
            "378282246310005",
            "371449635398431",
            "6011111111111117",
            "6011000990139424",
            "3530111333300000",
            "3566002020360505",
            "30569309025904",
            "38520000023237",
            "6200000000000005",
            "6759649826438453",
        ] {
            assert!(card_ok(n.as_bytes()), "{n}");
            assert_found(&format!("card {n} on file"), "card", n);
        }
        assert_found("pay 4111 1111 1111 1111 now", "card", "4111 1111 1111 1111");
        assert_found("pay 4111-1111-1111-1111", "card", "4111-1111-1111-1111");
        assert_found("amex 3782 822463 10005", "card", "3782 822463 10005");
    }

    #[test]
    fn card_rejections() {
        assert!(!card_ok(b"4111111111111112"), "Luhn");
        assert!(
            !card_ok(b"6666666666666"),
            "all one digit (Luhn-valid Maestro shape)"
        );
        assert!(luhn(b"6666666666666"));
        assert!(!card_ok(b"411111111111116"), "Visa has no 15-digit numbers");
        assert!(!card_ok(b"1234567812345670"), "no issuer starts with 1");
        assert!(!card_ok(b"7000000000000000"), "unknown issuer range");
        assert_none("pay 4111 1111 1111 1112", "card");
        assert_none("pay 4111-1111 1111-1111", "card");
        assert_none("41111111111111111111111", "card");
    }

    // --- NPI -------------------------------------------------------------------------------

    #[test]
    fn npi_check_digit_and_context() {
        assert!(npi_ok(b"1234567893"));
        assert!(!npi_ok(b"1234567890"));
        assert!(!npi_ok(b"3234567893"));
        assert_none("ref 1234567893", "npi");
        assert_found("NPI: 1234567893", "npi", "1234567893");
        assert_found("rendering provider 1234567893", "npi", "1234567893");
        assert_none("NPI: 1234567890", "npi");
        let fhir = br#"{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567893"}"#;
        let h = hits_with(&all(), fhir);
        assert!(
            h.iter().any(|(n, m, _)| n == "npi" && m == "1234567893"),
            "{h:?}"
        );
    }

    /// The trap of multi-pattern search: ten digits rejected as an NPI must still be found as
    /// a phone number, and when both readings are valid, context picks the winner.
    #[test]
    fn npi_and_phone_share_ten_digits() {
        let bad_npi = (2_000_000_000u64..)
            .map(|v| v.to_string())
            .find(|d| !npi_ok(d.as_bytes()) && nanp_ok(d.as_bytes()))
            .unwrap();
        assert_found(&format!("phone {bad_npi}"), "phone", &bad_npi);
        let both = (2_000_000_000u64..)
            .map(|v| v.to_string())
            .find(|d| npi_ok(d.as_bytes()) && nanp_ok(d.as_bytes()))
            .unwrap();
        assert_found(&format!("NPI {both}"), "npi", &both);
        assert_found(&format!("phone {both}"), "phone", &both);
        assert!(hits(&format!("value {both}")).is_empty());
    }

    // --- MBI -------------------------------------------------------------------------------

    #[test]
    fn mbi_forms() {
        assert_found("MBI 1EG4-TE5-MK73", "mbi", "1EG4-TE5-MK73");
        assert_found("1EG4TE5MK73", "mbi", "1EG4TE5MK73");
        assert_found("mbi 1eg4te5mk73", "mbi", "1eg4te5mk73");
        assert_found("9AA9AA9AA99", "mbi", "9AA9AA9AA99");
        for bad in [
            "0EG4TE5MK73",
            "1SG4TE5MK73",
            "1EG4TE5MK7",
            "1EG4TE5MK733",
            "1EG4-TE5MK73",
            "1EL4TE5MK73",
        ] {
            assert_none(bad, "mbi");
        }
    }

    // --- email -----------------------------------------------------------------------------

    #[test]
    fn email_forms() {
        assert_found(
            "mail john.smith+tag@example.co.uk.",
            "email",
            "john.smith+tag@example.co.uk",
        );
        assert_found("<a@b.io>", "email", "a@b.io");
        assert_found("jsmith1990@example.org", "email", "jsmith1990@example.org");
        // Digits of the local part do not become a separate finding.
        assert_eq!(
            hits("5552345678@txt.example.com"),
            vec![("email".into(), "5552345678@txt.example.com".into())]
        );
        for bad in [
            "a@b",
            "x@localhost",
            "@example.com",
            "a..b@example.com",
            "a.@example.com",
            "a@example.c0m",
            "a@-x.com",
        ] {
            assert_none(bad, "email");
        }
    }

    // --- phone -----------------------------------------------------------------------------

    #[test]
    fn phone_forms() {
        for (text, m) in [
            ("call (555) 234-5678", "(555) 234-5678"),
            ("call (555)234-5678", "(555)234-5678"),
            ("555-234-5678", "555-234-5678"),
            ("555.234.5678", "555.234.5678"),
            ("555 234 5678", "555 234 5678"),
            ("555 234-5678", "555 234-5678"),
            ("+1 555 234 5678", "+1 555 234 5678"),
            ("1-555-234-5678", "1-555-234-5678"),
            ("+1 (555) 234-5678", "+1 (555) 234-5678"),
            ("+15552345678", "+15552345678"),
            ("phone: 5552345678", "5552345678"),
            ("tel 15552345678", "15552345678"),
        ] {
            assert_found(text, "phone", m);
        }
    }

    #[test]
    fn phone_rejections() {
        assert_none("ref 5552345678", "phone");
        for bad in [
            "(155) 234-5678",
            "(055) 234-5678",
            "(911) 234-5678",
            "555-134-5678",
            "555-034-5678",
            "555-234-567",
            "555-234-56789",
            "555/234/5678",
            "555-234.5678",
            "phone 2222222222",
        ] {
            assert_none(bad, "phone");
        }
    }

    // --- IP --------------------------------------------------------------------------------

    #[test]
    fn ipv4() {
        assert_found("host 10.0.0.1.", "ip", "10.0.0.1");
        assert_found("from 192.168.1.254:8080", "ip", "192.168.1.254");
        assert_found("1.1.1.1", "ip", "1.1.1.1");
        for bad in [
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3.4.5",
            "v 1.2.3.4.5",
            "1.2.3",
            "urn:oid:2.16.840.1.113883.4.1",
        ] {
            assert_none(bad, "ip");
        }
    }

    #[test]
    fn ipv6() {
        for (text, m) in [
            ("addr 2001:db8::1 up", "2001:db8::1"),
            ("fe80::1ff:fe23:4567:890a", "fe80::1ff:fe23:4567:890a"),
            (
                "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
                "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            ),
            ("::ffff:192.168.1.1", "::ffff:192.168.1.1"),
            ("lo ::1.", "::1"),
            ("fe80::1", "fe80::1"),
            ("IP:2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
        ] {
            assert_found(text, "ip", m);
        }
        for bad in [
            "12:34:56",
            "std::vec",
            "ab::cd",
            "00:1A:2B:3C:4D:5E",
            "1:2:3",
            "zfe80::1",
            "fe80::1g",
        ] {
            assert_none(bad, "ip");
        }
    }

    // --- dates -----------------------------------------------------------------------------

    #[test]
    fn date_forms() {
        for (text, m) in [
            ("born 1990-01-31", "1990-01-31"),
            ("01/31/1990", "01/31/1990"),
            ("1/31/90", "1/31/90"),
            ("31.01.1990", "31.01.1990"),
            ("13/01/1990", "13/01/1990"),
            ("Jan 31, 1990", "Jan 31, 1990"),
            ("jan 31, 1990", "jan 31, 1990"),
            ("Jan. 31, 1990", "Jan. 31, 1990"),
            ("31 January 1990", "31 January 1990"),
            ("January 31 1990", "January 31 1990"),
            ("DOB 31-Jan-1990", "31-Jan-1990"),
            ("Sept 5, 2001", "Sept 5, 2001"),
            ("2000-02-29", "2000-02-29"),
            ("02/29/90", "02/29/90"),
            ("\"lastUpdated\":\"2023-10-01T12:34:56Z\"", "2023-10-01"),
        ] {
            assert_found(text, "date", m);
        }
    }

    #[test]
    fn date_rejections() {
        for bad in [
            "1990-02-30",
            "2001-02-29",
            "1900-02-29",
            "1990-13-01",
            "1990-00-10",
            "1990-01-32",
            "13/13/1990",
            "1.2.3",
            "1.2.34",
            "2020-01-02-3",
            "Feb 30, 1990",
            "Jun 31 1990",
            "Janu 31, 1990",
            "May 5 patients",
            "9999-12-31",
            "31 Foo 1990",
        ] {
            assert_none(bad, "date");
        }
    }

    // --- VIN -------------------------------------------------------------------------------

    #[test]
    fn vin_check_digit() {
        assert!(vin_ok(b"1M8GDM9AXKP042788"));
        assert!(vin_ok(b"1HGCM82633A004352"));
        assert_found("VIN 1M8GDM9AXKP042788", "vin", "1M8GDM9AXKP042788");
        assert_found("JH4KA7561PC008269", "vin", "JH4KA7561PC008269");
        assert_none("1M8GDM9AXKP042789", "vin");
        assert_none("1M8GDM9AXKP04278", "vin");
        assert_none("1m8gdm9axkp042788", "vin");
        assert_none("1M8GDM9AXKP04278O", "vin");
    }

    // --- URL -------------------------------------------------------------------------------

    #[test]
    fn url_forms() {
        assert_found(
            "see https://example.org/a/b?x=1.",
            "url",
            "https://example.org/a/b?x=1",
        );
        assert_found("(http://x.com/a)", "url", "http://x.com/a");
        assert_found(
            "wiki HTTP://en.wikipedia.org/wiki/A_(b)",
            "url",
            "HTTP://en.wikipedia.org/wiki/A_(b)",
        );
        assert_found(
            "\"url\":\"http://hl7.org/fhir\"",
            "url",
            "http://hl7.org/fhir",
        );
        for bad in ["xhttp://a.com", "http://", "ftp://a.com", "http:/a.com"] {
            assert_none(bad, "url");
        }
        // Digits inside a URL are findings of their own: the coalesced span is the URL's,
        // attributed to the stronger detector (a typed `uri` element still loses the SSN).
        assert_eq!(
            hits("https://h.example/Patient/123-45-6789"),
            vec![("ssn".into(), "https://h.example/Patient/123-45-6789".into())]
        );
        assert_eq!(
            hits("see https://h.example/a?b=1 now"),
            vec![("url".into(), "https://h.example/a?b=1".into())]
        );
    }

    // --- user regexes, MRN, keywords -------------------------------------------------------

    #[test]
    fn user_regex_and_mrn() {
        let mut specs = builtin_specs();
        specs.push(DetectorSpec::new(
            "mrn",
            Kind::Regex(r"\bMRN[:# ]?\d{6,10}\b".into()),
        ));
        specs.push(DetectorSpec::new(
            "acct",
            Kind::Regex(r"(?i)\bacct-[a-z]{3}\d{4}\b".into()),
        ));
        let sc = Scanner::new(&specs, 50).unwrap();
        let h = hits_with(
            &sc,
            b"MRN:0012345 and ACCT-abc1234; mrn 1234567 is lowercase",
        );
        let names: Vec<_> = h.iter().map(|(n, m, _)| (n.as_str(), m.as_str())).collect();
        assert_eq!(names, [("mrn", "MRN:0012345"), ("acct", "ACCT-abc1234")]);
    }

    #[test]
    fn regex_errors_name_the_detector() {
        let bad = DetectorSpec::new("mrn", Kind::Regex("MRN(\\d+".into()));
        let err = Scanner::new(&[bad], 50).unwrap_err();
        assert!(
            err.contains("'mrn'") && err.contains("invalid regex"),
            "{err}"
        );
        let empty = DetectorSpec::new("opt", Kind::Regex(r"\d*".into()));
        let err = Scanner::new(&[empty], 50).unwrap_err();
        assert!(err.contains("'opt'") && err.contains("empty"), "{err}");
        let huge = DetectorSpec::new("huge", Kind::Regex(r"\w{1000}{1000}".into()));
        let err = Scanner::new(&[huge], 50).unwrap_err();
        assert!(err.contains("'huge'"), "{err}");
    }

    #[test]
    fn user_regex_on_invalid_utf8() {
        let specs = [DetectorSpec::new(
            "mrn",
            Kind::Regex(r"\bMRN\d{4}\b".into()),
        )];
        let sc = Scanner::new(&specs, 50).unwrap();
        let h = hits_with(&sc, b"\xff\xfeMRN1234\x00\xc3");
        assert_eq!(h, vec![("mrn".into(), "MRN1234".into(), USER_CONFIDENCE)]);
    }

    #[test]
    fn keywords() {
        let specs = [DetectorSpec::new(
            "dx",
            Kind::Keywords(vec!["HIV".into(), "hepatitis C".into(), "hiv-1".into()]),
        )];
        let sc = Scanner::new(&specs, 50).unwrap();
        let m = |t: &str| -> Vec<String> {
            hits_with(&sc, t.as_bytes())
                .into_iter()
                .map(|(_, m, _)| m)
                .collect()
        };
        assert_eq!(m("Pt is HIV+ and has Hepatitis c."), ["HIV", "Hepatitis c"]);
        assert_eq!(m("hivemind, chiv, hepatitis cx"), Vec::<String>::new());
        assert_eq!(m("hiv-1 positive"), ["hiv-1"]);
        // Longest keyword fails its boundary; the shorter one at the same start still counts.
        assert_eq!(m("hiv-1x"), ["hiv"]);
    }

    // --- context, thresholds, overlap ------------------------------------------------------

    #[test]
    fn context_boost_and_suppress() {
        let sc = all();
        let conf = |t: &str| hits_with(&sc, t.as_bytes()).first().map(|h| h.2);
        assert_eq!(conf("123-45-6789"), Some(conf::SSN_DASHED));
        assert_eq!(conf("SSN 123-45-6789"), Some(100));
        let mut spec = DetectorSpec::new("ssn", Kind::Ssn);
        spec.suppress = vec!["example".into()];
        spec.min_confidence = Some(60);
        let sc = Scanner::new(&[spec], 50).unwrap();
        assert_eq!(hits_with(&sc, b"Example: 123-45-6789").len(), 0);
        assert_eq!(hits_with(&sc, b"example ssn 123-45-6789")[0].2, 70);
        assert_eq!(hits_with(&sc, b"123-45-6789").len(), 1);
        // Operator boost words work like the defaults.
        let mut spec = DetectorSpec::new("npi", Kind::Npi);
        spec.boost = vec!["rendering #".into()];
        let sc = Scanner::new(&[spec], 50).unwrap();
        assert_eq!(hits_with(&sc, b"Rendering # 1234567893").len(), 1);
    }

    #[test]
    fn min_confidence_per_detector() {
        let mut spec = DetectorSpec::new("date", Kind::Date);
        spec.min_confidence = Some(80);
        let sc = Scanner::new(&[spec], 50).unwrap();
        assert!(hits_with(&sc, b"seen 1990-01-31").is_empty());
        assert_eq!(hits_with(&sc, b"DOB 1990-01-31").len(), 1);
        let sc = Scanner::new(&[DetectorSpec::new("date", Kind::Date)], 0).unwrap();
        assert_eq!(hits_with(&sc, b"1/31/90").len(), 1);
    }

    #[test]
    fn overlapping_findings_are_coalesced() {
        let mut specs = builtin_specs();
        specs.push(DetectorSpec::new(
            "mrn",
            Kind::Regex(r"\b\d{3}-\d{2}\b".into()),
        ));
        specs.push(DetectorSpec::new("tail", Kind::Regex(r"6789 ok".into())));
        let sc = Scanner::new(&specs, 50).unwrap();
        let text = b"id 123-45-6789 ok";
        let mut out = Vec::new();
        sc.scan(text, &mut out);
        check_hits(text, &out);
        assert_eq!(out.len(), 1);
        // Union of SSN, the MRN prefix and the overlapping tail; attributed to the SSN
        // (equal confidence, longest span).
        assert_eq!(&text[out[0].start..out[0].end], b"123-45-6789 ok");
        assert_eq!(sc.name(out[0].detector), Some("ssn"));
    }

    #[test]
    fn scan_appends() {
        let sc = all();
        let mut out = vec![Hit {
            start: 0,
            end: 1,
            detector: 0,
            confidence: 1,
        }];
        sc.scan(b"SSN 123-45-6789", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].confidence, 1);
    }

    // --- API and configuration -------------------------------------------------------------

    #[test]
    fn api_surface() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Scanner>();
        let sc = all();
        assert_eq!(sc.len(), 10);
        assert!(!sc.is_empty());
        assert_eq!(
            sc.detector_names().collect::<Vec<_>>()[..3],
            ["ssn", "card", "npi"]
        );
        assert_eq!(sc.name(9), Some("url"));
        assert_eq!(sc.name(10), None);
        let empty = Scanner::new(&[], 50).unwrap();
        assert!(empty.is_empty());
        let mut out = Vec::new();
        empty.scan(b"SSN 123-45-6789", &mut out);
        assert!(out.is_empty());
        all().scan(b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn config_errors() {
        let s = |n: &str, k: Kind| DetectorSpec::new(n, k);
        assert!(Scanner::new(&[s("a", Kind::Ssn)], 101).is_err());
        assert!(Scanner::new(&[s("", Kind::Ssn)], 50).is_err());
        let err = Scanner::new(&[s("a", Kind::Ssn), s("a", Kind::Card)], 50).unwrap_err();
        assert!(err.contains("duplicate"), "{err}");
        let mut hi = s("a", Kind::Ssn);
        hi.min_confidence = Some(120);
        assert!(Scanner::new(&[hi], 50).unwrap_err().contains("'a'"));
        assert!(Scanner::new(&[s("k", Kind::Keywords(vec![]))], 50).is_err());
        assert!(Scanner::new(&[s("k", Kind::Keywords(vec![" ".into()]))], 50).is_err());
        let mut b = s("b", Kind::Ssn);
        b.boost = vec![String::new()];
        assert!(Scanner::new(&[b], 50).unwrap_err().contains("'b'"));
        assert!(Scanner::new(&[s("r", Kind::Regex(String::new()))], 50).is_err());
    }

    // --- robustness ------------------------------------------------------------------------

    #[test]
    fn raw_json_escapes_are_boundaries() {
        assert_found(r"Phone:\n555-234-5678", "phone", "555-234-5678");
        assert_found(r"SSN\t123-45-6789\r", "ssn", "123-45-6789");
        assert_found(r"\njohn@example.com", "email", "john@example.com");
    }

    #[test]
    fn invalid_utf8_and_nuls() {
        let text = b"\xff\xfe\x00SSN 123-45-6789\x00\xc3\x28 555-234-5678\xe2\x82";
        let h = hits_with(&all(), text);
        let names: Vec<_> = h.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["ssn", "phone"]);
    }

    /// Runs longer than one parse window (64 groups) must find a candidate anywhere, once.
    #[test]
    fn long_runs_are_windowed_without_gaps() {
        for k in [0usize, 1, 50, 55, 57, 58, 59, 60, 62, 63, 64, 65, 120, 200] {
            let mut s = "7 ".repeat(k);
            s.push_str("123-45-6789");
            s.push_str(&" 7".repeat(70));
            let h: Vec<_> = hits(&s).into_iter().filter(|(n, _)| n == "ssn").collect();
            assert_eq!(h, vec![("ssn".into(), "123-45-6789".into())], "k={k}");
        }
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A megabyte of digits and separators (and other adversarial shapes) must simply finish:
    /// the scan is linear, so this takes milliseconds in release and well under a second in
    /// debug builds.
    #[test]
    fn megabyte_adversarial_inputs_finish() {
        let sc = all();
        let mut out = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"0123456789 -./()+:";
        let soup: Vec<u8> = (0..1 << 20)
            .map(|_| alphabet[(xorshift(&mut x) % alphabet.len() as u64) as usize])
            .collect();
        sc.scan(&soup, &mut out);
        check_hits(&soup, &out);
        let units: [&[u8]; 12] = [
            b"1", b"1 ", b"12-", b"1.", b"1:", b"::", b"@", b"a@", b"a.", b"http://", b"Jan 1, ",
            b"1a",
        ];
        for unit in units {
            let hay: Vec<u8> = unit.iter().copied().cycle().take(1 << 20).collect();
            out.clear();
            sc.scan(&hay, &mut out);
            check_hits(&hay, &out);
        }
    }

    #[test]
    fn fuzz_never_panics_and_hits_are_well_formed() {
        let mut specs = builtin_specs();
        specs.push(DetectorSpec::new("mrn", Kind::Regex(r"\bMRN\d+".into())));
        specs.push(DetectorSpec::new(
            "kw",
            Kind::Keywords(vec!["ssn".into(), "a b".into()]),
        ));
        let sc = Scanner::new(&specs, 0).unwrap();
        let alphabet = b"0123456789 -./()+:@#,abcdefxTJanMRNssnhttp\\\n\xff\x00\xc2";
        let mut x = 42u64;
        let mut out = Vec::new();
        for _ in 0..3000 {
            let len = (xorshift(&mut x) % 96) as usize;
            let hay: Vec<u8> = (0..len)
                .map(|_| alphabet[(xorshift(&mut x) % alphabet.len() as u64) as usize])
                .collect();
            out.clear();
            sc.scan(&hay, &mut out);
            check_hits(&hay, &out);
        }
    }

    #[test]
    fn fhir_json_sample() {
        let json = br#"{"resourceType":"Patient","id":"pat-00017","meta":{"versionId":"3","lastUpdated":"2024-02-13T01:11:42.385Z"},
"identifier":[{"system":"http://hl7.org/fhir/sid/us-ssn","value":"123-45-6789"},{"system":"http://hl7.org/fhir/sid/us-mbi","value":"1EG4TE5MK73"}],
"telecom":[{"system":"phone","value":"(555) 234-5678"},{"system":"email","value":"mary.jones@example.com"}],
"birthDate":"1948-01-07","address":[{"postalCode":"05401","line":["534 Erewhon St"]}],
"extension":[{"url":"urn:oid:2.16.840.1.113883.6.238","valueCode":"2106-3"}]}"#;
        let h = hits_with(&all(), json);
        let got: Vec<(&str, &str)> = h.iter().map(|(n, m, _)| (n.as_str(), m.as_str())).collect();
        for want in [
            ("date", "2024-02-13"),
            ("ssn", "123-45-6789"),
            ("mbi", "1EG4TE5MK73"),
            ("phone", "(555) 234-5678"),
            ("email", "mary.jones@example.com"),
            ("date", "1948-01-07"),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        assert!(
            !got.iter()
                .any(|(_, m)| m.contains("05401") || m.contains("2106")),
            "{got:?}"
        );
        let birth = h.iter().find(|(_, m, _)| m == "1948-01-07").unwrap();
        assert_eq!(
            birth.2,
            conf::DATE_ISO + BOOST,
            "birthDate key boosts the date"
        );
    }
}
