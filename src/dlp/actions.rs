//! What a DLP rule does to a value: the transforms behind `mask`, `hash`, `date_shift` and
//! `generalize`. They are pure functions of the value (plus a keyed secret), shared by the
//! FHIR walker, the HL7 v2 rules and plain-text bodies, so one value is rewritten the same
//! way whatever carried it.
//!
//! Every transform returns `None` when it cannot produce a value of the same lexical kind
//! (a `date_shift` of something that is not a date): the caller then redacts — a value the
//! gateway cannot transform safely is removed, never passed through.

use aws_lc_rs::hmac;
use serde::Deserialize;

/// What to do with a finding or a matched element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Remove the element (FHIR: keep JSON and FHIR valid, label the resource); in free
    /// text, replace the match with `[REDACTED]`.
    Redact,
    /// Keep the last `keep_last` letters and digits, star the rest.
    Mask,
    /// HMAC-SHA256 with the policy key: a stable pseudonym.
    Hash,
    /// Move dates by a keyed, per-patient number of days.
    DateShift,
    /// ZIP → first three digits; date → year; age over 89 → 90.
    Generalize,
    /// Refuse the whole message.
    Block,
    /// Count and log only (per-detector report mode).
    Report,
}

impl Action {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Action::Redact => "redact",
            Action::Mask => "mask",
            Action::Hash => "hash",
            Action::DateShift => "date_shift",
            Action::Generalize => "generalize",
            Action::Block => "block",
            Action::Report => "report",
        }
    }
}

/// The text that replaces a redacted match inside free text.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Keyed secrets for `hash` and `date_shift`, derived from one configured key so the two
/// cannot be correlated with each other.
pub struct Keys {
    hash: hmac::Key,
    shift: hmac::Key,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        let derive = |label: &[u8]| {
            let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
            hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&k, label).as_ref())
        };
        Keys {
            hash: derive(b"ward-dlp-hash-v1"),
            shift: derive(b"ward-dlp-date-shift-v1"),
        }
    }

    /// A stable pseudonym: the first 128 bits of HMAC-SHA256(value), in hex. Hex keeps it
    /// valid as a FHIR `id`, `code`, `string` and as an HL7 field without escaping.
    pub fn hash(&self, value: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.hash, value);
        hex::encode(tag.as_ref().get(..16).unwrap_or_default()).into_bytes()
    }

    /// Days to move every date of `patient` by: in `[-max, max]`, never 0.
    pub fn shift_days(&self, patient: &[u8], max: u32) -> i64 {
        let tag = hmac::sign(&self.shift, patient);
        let mut w = [0u8; 8];
        w.copy_from_slice(tag.as_ref().get(..8).unwrap_or(&[0; 8]));
        let n = u64::from_le_bytes(w);
        let max = u64::from(max.max(1));
        // 2*max values: -max..=-1 and 1..=max.
        let k = i64::try_from(n % (2 * max)).unwrap_or(0);
        let max = i64::try_from(max).unwrap_or(1);
        if k < max {
            k - max
        } else {
            k - max + 1
        }
    }
}

/// Star every letter and digit but the last `keep` ones; punctuation and spaces stay, so
/// `555-234-5678` masks to `***-***-5678`. Non-ASCII characters count as letters.
pub fn mask(value: &[u8], keep: usize) -> Vec<u8> {
    let s = String::from_utf8_lossy(value);
    let total = s.chars().filter(|c| c.is_alphanumeric()).count();
    // At least half is always starred: `keep_last: 4` must not leave `Doe` whole.
    let keep = keep.min(total / 2);
    let mut seen = 0usize;
    let mut out = Vec::with_capacity(value.len());
    for c in s.chars() {
        if c.is_alphanumeric() {
            seen += 1;
            if seen + keep > total {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            } else {
                out.push(b'*');
            }
        } else {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    out
}

// --- calendar -------------------------------------------------------------------------------

pub use crate::calendar::{civil_from_days, days_from_civil};

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A calendar date read from `YYYY[-MM[-DD]]` (FHIR) or `YYYY[MM[DD]]` (HL7 DTM):
/// `(year, month, day, bytes consumed)`; month and day are 0 when absent.
fn read_date(s: &[u8], dashed: bool) -> Option<(i64, u32, u32, usize)> {
    let y = i64::from(digits(s.get(..4)?)?);
    let sep = usize::from(dashed);
    let month_at = 4 + sep;
    if s.len() < month_at + 2 || (dashed && s.get(4) != Some(&b'-')) {
        return Some((y, 0, 0, 4));
    }
    let m = digits(s.get(month_at..month_at + 2)?)?;
    if !(1..=12).contains(&m) {
        return None;
    }
    let day_at = month_at + 2 + sep;
    if s.len() < day_at + 2 || (dashed && s.get(month_at + 2) != Some(&b'-')) {
        return Some((y, m, 0, month_at + 2));
    }
    let d = digits(s.get(day_at..day_at + 2)?)?;
    if d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some((y, m, d, day_at + 2))
}

fn write_date(out: &mut Vec<u8>, y: i64, m: u32, d: u32, dashed: bool) -> Option<()> {
    if !(1..=9999).contains(&y) {
        return None;
    }
    let s = if dashed {
        match (m, d) {
            (0, _) => format!("{y:04}"),
            (m, 0) => format!("{y:04}-{m:02}"),
            (m, d) => format!("{y:04}-{m:02}-{d:02}"),
        }
    } else {
        match (m, d) {
            (0, _) => format!("{y:04}"),
            (m, 0) => format!("{y:04}{m:02}"),
            (m, d) => format!("{y:04}{m:02}{d:02}"),
        }
    };
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// Move a FHIR `date`/`dateTime`/`instant` (`dashed`) or HL7 DTM by `days`. The time of
/// day and zone are kept; a month-precision date moves with its mid-month day; a year alone
/// is left as is (a year is not identifying under Safe Harbor).
pub fn date_shift(value: &[u8], days: i64, dashed: bool) -> Option<Vec<u8>> {
    let (y, m, d, used) = read_date(value, dashed)?;
    let rest = value.get(used..)?;
    let mut out = Vec::with_capacity(value.len());
    match (m, d) {
        (0, _) => {
            if !rest.is_empty() {
                return None;
            }
            out.extend_from_slice(value);
        }
        (m, 0) => {
            if !rest.is_empty() {
                return None;
            }
            let (ny, nm, _) = civil_from_days(days_from_civil(y, m, 15) + days);
            write_date(&mut out, ny, nm, 0, dashed)?;
        }
        (m, d) => {
            // Only a time of day and zone may follow the date; anything else would be
            // carried along unscanned.
            let time_ok = if dashed {
                rest.is_empty()
                    || (rest[0] == b'T'
                        && rest[1..].iter().all(|c| {
                            c.is_ascii_digit() || matches!(c, b':' | b'.' | b'+' | b'-' | b'Z')
                        }))
            } else {
                rest.iter()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'+' | b'-'))
            };
            if !time_ok {
                return None;
            }
            let (ny, nm, nd) = civil_from_days(days_from_civil(y, m, d) + days);
            write_date(&mut out, ny, nm, nd, dashed)?;
            out.extend_from_slice(rest);
        }
    }
    Some(out)
}

/// Three-digit ZIP prefixes that HHS's de-identification guidance says to replace with
/// `000` because their area has 20,000 people or fewer (2000 Census figures, 45 CFR
/// 164.514(b)(2)(i)(B) and the OCR guidance of 2012).
const RESTRICTED_ZIP3: [&[u8]; 17] = [
    b"036", b"059", b"063", b"102", b"203", b"556", b"692", b"790", b"821", b"823", b"830", b"831",
    b"878", b"879", b"884", b"890", b"893",
];

/// The current UTC year.
pub fn this_year() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0)).0
}

/// Safe Harbor generalisation of one value:
/// - a US ZIP (`12345`, `12345-6789`) → its first three digits, `000` for the restricted
///   prefixes;
/// - a date (FHIR or HL7 form) → its year; a year more than 89 years ago becomes the year
///   90 years ago (ages over 89 are aggregated into "90 or older");
/// - an integer over 89 (an age) → `90`.
pub fn generalize(value: &[u8], dashed_dates: bool) -> Option<Vec<u8>> {
    let v = value;
    let is_zip = (v.len() == 5 && v.iter().all(u8::is_ascii_digit))
        || (v.len() == 10
            && v.get(5) == Some(&b'-')
            && v.iter()
                .enumerate()
                .all(|(i, c)| i == 5 || c.is_ascii_digit()))
        || (v.len() == 9 && v.iter().all(u8::is_ascii_digit) && !dashed_dates);
    if is_zip {
        let p = v.get(..3)?;
        return Some(if RESTRICTED_ZIP3.contains(&p) {
            b"000".to_vec()
        } else {
            p.to_vec()
        });
    }
    if v.len() <= 3 && !v.is_empty() && v.iter().all(u8::is_ascii_digit) {
        let n = digits(v)?;
        return Some(if n > 89 { b"90".to_vec() } else { v.to_vec() });
    }
    let (y, _, _, _) = read_date(v, dashed_dates)?;
    let oldest = this_year() - 90;
    let y = y.max(oldest);
    Some(format!("{y:04}").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_the_tail_and_punctuation() {
        assert_eq!(mask(b"555-234-5678", 4), b"***-***-5678");
        assert_eq!(mask(b"4111 1111 1111 1111", 4), b"**** **** **** 1111");
        assert_eq!(mask(b"abc", 5), b"**c");
        assert_eq!(mask(b"Doe", 4), b"**e");
        assert_eq!(mask(b"abc", 0), b"***");
        assert_eq!(mask("Zoë".as_bytes(), 1), "**ë".as_bytes());
    }

    #[test]
    fn hash_is_stable_keyed_and_hex() {
        let k = Keys::new(b"k1");
        let a = k.hash(b"123-45-6789");
        assert_eq!(a, k.hash(b"123-45-6789"));
        assert_ne!(a, k.hash(b"123-45-6780"));
        assert_ne!(a, Keys::new(b"k2").hash(b"123-45-6789"));
        assert_eq!(a.len(), 32);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn shift_is_per_patient_bounded_and_never_zero() {
        let k = Keys::new(b"k");
        let mut distinct = std::collections::HashSet::new();
        for i in 0..500 {
            let d = k.shift_days(format!("Patient/{i}").as_bytes(), 30);
            assert!((-30..=30).contains(&d) && d != 0, "{d}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 40);
        assert_eq!(
            k.shift_days(b"Patient/1", 30),
            k.shift_days(b"Patient/1", 30)
        );
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-800_000i64, -1, 0, 1, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn date_shift_forms() {
        assert_eq!(date_shift(b"2000-02-28", 2, true).unwrap(), b"2000-03-01");
        assert_eq!(
            date_shift(b"2021-12-31T23:00:00+01:00", 1, true).unwrap(),
            b"2022-01-01T23:00:00+01:00"
        );
        assert_eq!(date_shift(b"1980", 100, true).unwrap(), b"1980");
        assert_eq!(date_shift(b"1980-06", 30, true).unwrap(), b"1980-07");
        assert_eq!(date_shift(b"19800101", -1, false).unwrap(), b"19791231");
        assert_eq!(
            date_shift(b"198001011230", 1, false).unwrap(),
            b"198001021230"
        );
        assert!(date_shift(b"1980-02-30", 1, true).is_none());
        assert!(date_shift(b"not a date", 1, true).is_none());
        assert!(date_shift(b"1970-03-14 SSN 123-45-6789", 1, true).is_none());
        assert!(date_shift(b"19700314 x", 1, false).is_none());
        assert!(date_shift(b"", 1, true).is_none());
    }

    #[test]
    fn generalize_forms() {
        assert_eq!(generalize(b"02139", true).unwrap(), b"021");
        assert_eq!(generalize(b"02139-4307", true).unwrap(), b"021");
        assert_eq!(generalize(b"03601", true).unwrap(), b"000");
        assert_eq!(generalize(b"1980-06-01", true).unwrap(), b"1980");
        assert_eq!(generalize(b"19800601", false).unwrap(), b"1980");
        let old = format!("{:04}", this_year() - 95);
        let capped = format!("{:04}", this_year() - 90);
        assert_eq!(
            generalize(format!("{old}-01-01").as_bytes(), true).unwrap(),
            capped.as_bytes()
        );
        assert_eq!(generalize(b"93", true).unwrap(), b"90");
        assert_eq!(generalize(b"42", true).unwrap(), b"42");
        assert!(generalize(b"hello", true).is_none());
    }
}
