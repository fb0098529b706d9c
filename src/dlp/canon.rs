//! The canonical form detectors read: text as a reader sees it, with a map back to the
//! original bytes.
//!
//! PHI written with look-alike characters is still PHI: `１２３-４５-６７８９` (full-width),
//! `١٢٣-٤٥-٦٧٨٩` (Arabic-Indic), `123​-45-6789` (a zero-width space inside) or `123‑45‑6789`
//! (non-breaking hyphens) all read as an SSN. The detectors (`detect/`) are ASCII machines, so
//! instead of teaching each of them Unicode, the scanner runs them over a canonical copy:
//!
//! * every Unicode decimal digit (category Nd, any script) becomes its ASCII digit;
//! * format and default-ignorable characters (category Cf — zero-width space/joiners, word
//!   joiner, soft hyphen, BOM, bidi controls — and the Default_Ignorable_Code_Point set:
//!   variation selectors, the combining grapheme joiner, tags…) are removed;
//! * space separators (Zs, and the line/paragraph separators Zl, Zp) become one ASCII space;
//! * dash punctuation (Pd) and U+2212 MINUS SIGN become `-`;
//! * everything else is NFKC-normalised, one grapheme-like cluster (a starter and the
//!   combining marks after it) at a time, which also folds full-width forms, circled and
//!   super/subscript digits, mathematical alphanumerics and ligatures;
//! * combining marks left on an ASCII character (`1` + U+0301, which has no composed form)
//!   are dropped: the reader still sees the digit.
//!
//! The map records, for every run of canonical bytes, the original bytes it came from. A
//! finding `[s, e)` in the canonical text maps to the original span from the start of the
//! character that produced byte `s` to the end of the character that produced byte `e - 1`,
//! so invisible characters *inside* a finding are inside the redacted span too.
//!
//! ASCII input (the common case) is never copied: [`Canon::build`] returns `false` and the
//! caller scans the original. Invalid UTF-8 bytes are kept as they are (HL7 v2 feeds may be
//! Latin-1; a byte the decoder cannot read cannot hide a digit either).
//!
//! The character classes are generated from the Unicode Character Database
//! (`tools/gen_unicode_tables.py` → `unicode_tables.rs`); NFKC is the `unicode-normalization`
//! crate's.
#![forbid(unsafe_code)]

use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

use crate::dlp::unicode_tables::{
    DASHES, DIGIT_ZEROS, INVISIBLE, LOOKALIKES, MARKS, NUMBER_SYMBOLS, SPACES,
};

#[cfg(test)]
thread_local! {
    /// Set while `Scanner::scan_oracle` runs: the code paths the speed work replaced (here
    /// and in the candidate scanner) take their old form, so the differential test compares
    /// old and new on the same input.
    static ORACLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// In tests: is the current scan the oracle (old code paths)?
#[cfg(test)]
pub(crate) fn oracle() -> bool {
    ORACLE.with(|o| o.get())
}

#[cfg(test)]
pub(crate) fn set_oracle(on: bool) {
    ORACLE.with(|o| o.set(on));
}

/// The first byte at or after `from` that is not ASCII. Thirty-two bytes are tested per step
/// (`is_ascii` on a slice compiles to word-wide tests): Latin names put a few accented letters
/// in megabytes of ASCII, and a byte-at-a-time search was a visible share of a whole scan.
#[inline]
fn next_non_ascii(src: &[u8], from: usize) -> Option<usize> {
    #[cfg(test)]
    if oracle() {
        // The byte-at-a-time search this replaced.
        return src
            .get(from..)?
            .iter()
            .position(|&b| b >= 0x80)
            .map(|k| from + k);
    }
    let mut i = from;
    while let Some(c) = src.get(i..i.saturating_add(32)) {
        if c.len() < 32 || !c.is_ascii() {
            break;
        }
        i += 32;
    }
    src.get(i..)?.iter().position(|&b| b >= 0x80).map(|k| i + k)
}

/// One run of canonical bytes and the original bytes it came from. A run extends to the next
/// run's start (in both texts).
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// Start in the canonical text.
    c: u32,
    /// Start in the original.
    o: u32,
    /// Byte-for-byte copy (`c + k` came from `o + k`), or a replacement (all of its canonical
    /// bytes came from the whole original run).
    ident: bool,
}

/// A canonical copy of a text and its map back to the original. Reused between scans to
/// keep the allocations.
#[derive(Debug, Default)]
pub struct Canon {
    pub text: Vec<u8>,
    segs: Vec<Seg>,
    src_len: u32,
    scratch: String,
    scratch2: String,
}

fn in_ranges(table: &[(u32, u32)], cp: u32) -> bool {
    let i = table.partition_point(|&(lo, _)| lo <= cp);
    i > 0 && cp <= table[i - 1].1
}

/// The ASCII digit an Nd character stands for.
fn digit_of(cp: u32) -> Option<u8> {
    let i = DIGIT_ZEROS.partition_point(|&z| z <= cp);
    let zero = *DIGIT_ZEROS.get(i.checked_sub(1)?)?;
    let d = cp - zero;
    // `d < 10` bounds the value, so the cast cannot truncate.
    (d < 10).then(|| b'0' + d as u8)
}

/// What the per-character classes make of `c`: `None` to drop it, or its replacement.
fn class_map(c: char) -> Option<char> {
    let cp = u32::from(c);
    if cp < 0x80 {
        return Some(c);
    }
    if in_ranges(INVISIBLE, cp) {
        return None;
    }
    if in_ranges(SPACES, cp) {
        return Some(' ');
    }
    if let Ok(k) = LOOKALIKES.binary_search_by_key(&cp, |&(c, _)| c) {
        return Some(char::from(LOOKALIKES[k].1));
    }
    if in_ranges(DASHES, cp) {
        return Some('-');
    }
    if let Some(d) = digit_of(cp) {
        return Some(char::from(d));
    }
    Some(c)
}

/// A combining mark: a nonzero canonical combining class, or a nonspacing or enclosing
/// mark (category Mn/Me: keycaps U+20E3 and enclosing circles U+20DD have class 0).
fn is_mark(c: char) -> bool {
    canonical_combining_class(c) != 0 || in_ranges(MARKS, u32::from(c))
}

/// Push `c`, or only the digits of a symbol that stands for a number with decoration
/// around it: `⑴` (NFKC `(1)`), `⒈` (`1.`), `⒑` (`10.`), `🄂` (`1,`). A reader reads the
/// number; the parentheses and stops would otherwise split a value into groups no
/// detector accepts.
fn number_symbol(c: char, out: &mut String) {
    // Symbols with no decomposition at all (`❶`, `➊`, `⓫`): their numeric value.
    if let Ok(k) = NUMBER_SYMBOLS.binary_search_by_key(&u32::from(c), |&(s, _)| s) {
        out.push_str(&NUMBER_SYMBOLS[k].1.to_string());
        return;
    }
    if !c.is_ascii() {
        let d: String = std::iter::once(c).nfkc().collect();
        let decorated = d.len() > 1
            && d.chars().any(|x| x.is_ascii_digit())
            && d.chars()
                .all(|x| x.is_ascii_digit() || matches!(x, '(' | ')' | '.' | ','));
        if decorated {
            out.extend(d.chars().filter(char::is_ascii_digit));
            return;
        }
    }
    out.push(c);
}

/// True when `c` reads as itself: no class applies and NFKC leaves it alone. Most non-ASCII
/// text (accented letters, CJK) takes this path and is never copied into a replacement.
fn stable(c: char) -> bool {
    let cp = u32::from(c);
    !in_ranges(INVISIBLE, cp)
        && !in_ranges(SPACES, cp)
        && LOOKALIKES.binary_search_by_key(&cp, |&(c, _)| c).is_err()
        && NUMBER_SYMBOLS
            .binary_search_by_key(&cp, |&(c, _)| c)
            .is_err()
        && !in_ranges(DASHES, cp)
        && digit_of(cp).is_none()
        && !is_mark(c)
        && is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes
}

/// Decode the UTF-8 character at `src[i]` (a byte ≥ 0x80): the character and its length, or
/// `None` for an invalid sequence.
fn decode(src: &[u8], i: usize) -> Option<(char, usize)> {
    let len = match src[i] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return None,
    };
    let s = std::str::from_utf8(src.get(i..i + len)?).ok()?;
    s.chars().next().map(|c| (c, len))
}

impl Canon {
    /// Build the canonical form of `src` into `self`. Returns `false` (and leaves `self`
    /// unusable) when the canonical form is `src` itself: then scan `src` directly.
    pub fn build(&mut self, src: &[u8]) -> bool {
        if src.is_ascii() || src.len() > u32::MAX as usize || !Self::needed(src) {
            return false;
        }
        self.text.clear();
        self.segs.clear();
        self.src_len = src.len() as u32;
        self.text.reserve(src.len());
        let mut changed = false;
        let mut i = 0;
        while i < src.len() {
            // ASCII, in bulk.
            let run = next_non_ascii(src, i).unwrap_or(src.len());
            if run > i {
                self.ident(i, &src[i..run]);
                i = run;
                continue;
            }
            let Some((c, len)) = decode(src, i) else {
                self.ident(i, &src[i..i + 1]);
                i += 1;
                continue;
            };
            // The cluster: this character and the combining marks after it. A mark that
            // follows an ASCII character takes that character with it (`e` + U+0301 → `é`).
            let mut start = i;
            let mut end = i + len;
            if is_mark(c) && i > 0 && src[i - 1] < 0x80 && self.take_back_ascii(i - 1) {
                start = i - 1;
            }
            let next_is_mark = |at: usize| {
                at < src.len()
                    && src[at] >= 0x80
                    && decode(src, at).is_some_and(|(m, _)| is_mark(m))
            };
            while next_is_mark(end) {
                end += decode(src, end).map_or(1, |(_, l)| l);
            }
            if start == i && end == i + len && stable(c) {
                self.ident(i, &src[i..end]);
                i = end;
                continue;
            }
            let orig = std::str::from_utf8(&src[start..end]).unwrap_or_default();
            self.replacement(orig);
            if self.scratch.as_bytes() == &src[start..end] {
                self.ident(start, &src[start..end]);
            } else {
                changed = true;
                self.segs.push(Seg {
                    c: self.text.len() as u32,
                    o: start as u32,
                    ident: false,
                });
                self.text.extend_from_slice(self.scratch.as_bytes());
            }
            i = end;
        }
        changed
    }

    /// Whether any character of `src` reads differently from itself. Most non-ASCII FHIR
    /// text (`du Marché`, CJK names) does not, and is then scanned without a copy.
    fn needed(src: &[u8]) -> bool {
        let mut i = 0;
        while let Some(k) = next_non_ascii(src, i) {
            i = k;
            match decode(src, i) {
                Some((c, len)) => {
                    if !stable(c) {
                        return true;
                    }
                    i += len;
                }
                None => i += 1,
            }
        }
        false
    }

    /// Append `bytes` (taken unchanged from `src[at..]`) as an identity run.
    fn ident(&mut self, at: usize, bytes: &[u8]) {
        let c = self.text.len() as u32;
        let o = at as u32;
        match self.segs.last() {
            // Still contiguous with the previous identity run in both texts.
            Some(s) if s.ident && s.c + (o - s.o) == c => {}
            _ => self.segs.push(Seg { c, o, ident: true }),
        }
        self.text.extend_from_slice(bytes);
    }

    /// Remove the last canonical byte if it is the identity copy of `src[at]`, so a cluster
    /// can start there. False when it is not (it belongs to a replacement).
    fn take_back_ascii(&mut self, at: usize) -> bool {
        let Some(last) = self.segs.last() else {
            return false;
        };
        let c_end = self.text.len() as u32;
        if !last.ident || c_end == last.c || last.o + (c_end - 1 - last.c) != at as u32 {
            return false;
        }
        self.text.pop();
        if self.text.len() as u32 == last.c {
            self.segs.pop();
        }
        true
    }

    /// The canonical text of one cluster, into `self.scratch`.
    fn replacement(&mut self, orig: &str) {
        let mut a = std::mem::take(&mut self.scratch);
        let mut b = std::mem::take(&mut self.scratch2);
        a.clear();
        b.clear();
        for c in orig.chars().filter_map(class_map) {
            number_symbol(c, &mut a);
        }
        if !a.is_ascii() {
            // NFKC, then the classes again: a compatibility form may decompose to a
            // character they rewrite (U+2007 FIGURE SPACE → U+0020 is already done by NFKC,
            // but a compatibility digit of another script is not).
            b.extend(a.nfkc().filter_map(class_map));
            // Marks left on an ASCII character (no composed form exists) are dropped.
            a.clear();
            // What was written last, across clusters: `1` + U+200B + U+0301 puts the mark
            // in a cluster of its own after the invisible character is dropped.
            let mut prev_ascii = self.text.last().is_none_or(u8::is_ascii);
            for c in b.chars() {
                if prev_ascii && is_mark(c) {
                    continue;
                }
                prev_ascii = c.is_ascii();
                a.push(c);
            }
        }
        self.scratch = a;
        self.scratch2 = b;
    }

    /// The segment holding canonical byte `p` (`p < text.len()`).
    fn seg_of(&self, p: u32) -> usize {
        // The last segment starting at or before `p`; empty (removed-only) segments share
        // their start with the next one, so this is always a segment that holds `p`.
        self.segs.partition_point(|s| s.c <= p).saturating_sub(1)
    }

    /// Original end of segment `k` (the next segment's start, or the end of the source).
    fn orig_end(&self, k: usize) -> u32 {
        self.segs.get(k + 1).map_or(self.src_len, |s| s.o)
    }

    /// Original offset where the character that produced canonical byte `p` starts.
    pub fn map_start(&self, p: usize) -> usize {
        if self.segs.is_empty() {
            return p;
        }
        let p = p.min(self.text.len().saturating_sub(1)) as u32;
        let k = self.seg_of(p);
        let s = self.segs[k];
        (if s.ident { s.o + (p - s.c) } else { s.o }) as usize
    }

    /// Original offset just after the character that produced canonical byte `p - 1`.
    pub fn map_end(&self, p: usize) -> usize {
        if self.segs.is_empty() || p == 0 {
            return p;
        }
        let q = (p - 1).min(self.text.len().saturating_sub(1)) as u32;
        let k = self.seg_of(q);
        let s = self.segs[k];
        (if s.ident {
            s.o + (q - s.c) + 1
        } else {
            self.orig_end(k)
        }) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> (String, Canon) {
        let mut c = Canon::default();
        if !c.build(s.as_bytes()) {
            return (s.to_owned(), c);
        }
        (String::from_utf8(c.text.clone()).unwrap(), c)
    }

    #[test]
    fn every_nd_digit_reads_as_ascii() {
        for &zero in DIGIT_ZEROS {
            let s: String = (0..10).map(|d| char::from_u32(zero + d).unwrap()).collect();
            let (t, _) = canon(&s);
            assert_eq!(t, "0123456789", "digits from U+{zero:04X}");
        }
    }

    #[test]
    fn invisible_space_and_dash_classes() {
        for &(lo, hi) in INVISIBLE {
            for cp in [lo, hi] {
                let Some(c) = char::from_u32(cp) else {
                    continue;
                };
                let s = format!("12{c}3");
                assert_eq!(canon(&s).0, "123", "U+{cp:04X}");
            }
        }
        for &(lo, hi) in SPACES {
            for cp in lo..=hi {
                let c = char::from_u32(cp).unwrap();
                assert_eq!(canon(&format!("1{c}2")).0, "1 2", "U+{cp:04X}");
            }
        }
        for &(lo, hi) in DASHES {
            for cp in lo..=hi {
                let c = char::from_u32(cp).unwrap();
                assert_eq!(canon(&format!("1{c}2")).0, "1-2", "U+{cp:04X}");
            }
        }
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        assert_eq!(canon("１２３－４５－６７８９").0, "123-45-6789");
        assert_eq!(canon("①②③").0, "123");
        assert_eq!(canon("¹²³").0, "123");
        assert_eq!(canon("𝟏𝟐𝟑").0, "123");
        assert_eq!(
            canon("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｏｒｇ").0,
            "jane@example.org"
        );
        // Marks on a digit are dropped; on a letter they compose.
        assert_eq!(canon("1\u{0301}2\u{0308}3").0, "123");
        // Keycaps and enclosing circles (class 0, category Me) on digits.
        assert_eq!(canon("1\u{FE0F}\u{20E3}2\u{20E3}3\u{20DD}").0, "123");
        // Parenthesized and full-stop digits read as the digits.
        assert_eq!(canon("⑴⑵⑶-⑷⑸-⑹⑺⑻⑼").0, "123-45-6789");
        assert_eq!(canon("⒈⒉⒊-⒋⒌-⒍⒎⒏⒐").0, "123-45-6789");
        assert_eq!(canon("⑽").0, "10");
        // Symbols without a decomposition, look-alike separators, C1 controls.
        assert_eq!(canon("❶❷❸-➍➎-⓺⓻⓼⓽").0, "123-45-6789");
        assert_eq!(canon("123\u{2800}45\u{2800}6789").0, "123 45 6789");
        assert_eq!(canon("123\u{2043}45\u{02D7}6789").0, "123-45-6789");
        assert_eq!(canon("jane@example\u{3002}org").0, "jane@example.org");
        assert_eq!(canon("01\u{2044}31\u{2215}1990").0, "01/31/1990");
        assert_eq!(canon("12\u{0085}3").0, "123");
        // A mark after an invisible character after a digit.
        assert_eq!(canon("1\u{200B}\u{0301}2\u{034F}\u{0301}3").0, "123");
        assert_eq!(canon("Jose\u{0301}").0, "José");
        // Stable text is left alone (and needs no copy).
        assert!(!Canon::default().build("plain ascii".as_bytes()));
        assert!(!Canon::default().build("Müller 北京".as_bytes()));
    }

    #[test]
    fn spans_map_back_over_invisible_characters() {
        let s = "SSN: 1\u{200B}2\u{00AD}3-45-6789 end";
        let (t, c) = canon(s);
        assert_eq!(t, "SSN: 123-45-6789 end");
        let a = t.find("123").unwrap();
        let z = a + "123-45-6789".len();
        let (o1, o2) = (c.map_start(a), c.map_end(z));
        assert_eq!(&s[o1..o2], "1\u{200B}2\u{00AD}3-45-6789");
        // Multi-byte replacements map to whole characters.
        let s = "x １２３ y";
        let (t, c) = canon(s);
        let a = t.find('1').unwrap();
        assert_eq!(&s[c.map_start(a)..c.map_end(a + 3)], "１２３");
        assert_eq!(&s[c.map_start(a + 1)..c.map_end(a + 2)], "２");
    }

    #[test]
    fn invalid_utf8_and_arbitrary_bytes_never_panic() {
        let mut c = Canon::default();
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let mut v = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                v.push((x & 0xFF) as u8);
            }
            if c.build(&v) {
                for p in 0..=c.text.len() {
                    let (a, z) = (c.map_start(p), c.map_end(p));
                    assert!(a <= v.len() && z <= v.len());
                }
            }
        }
    }
}
