//! Validators of built-in candidates (SSN area/group/serial rules, Luhn and card IINs, NPI,
//! NANP phone numbers, MBI, VIN check digit, calendar dates, domain names). All take ASCII
//! digits/letters already shaped by the scanner.

use super::*;

// ---------------------------------------------------------------------------------------------
// Validators. All take ASCII digits/letters already shaped by the scanner.

/// SSA rules: area not 000/666/9xx, group not 00, serial not 0000, and two famous numbers
/// (the Woolworth wallet card 078-05-1120 and the 219-09-9999 advertisement).
pub(super) fn ssn_ok(d: &[u8]) -> bool {
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
pub(super) fn luhn(d: &[u8]) -> bool {
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
pub(super) fn iin_ok(d: &[u8]) -> bool {
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

pub(super) fn card_ok(d: &[u8]) -> bool {
    (13..=19).contains(&d.len()) && !all_same(d) && luhn(d) && iin_ok(d)
}

/// NPI: 10 digits starting 1 or 2; Luhn over the number prefixed with the ISO health
/// industry prefix 80840 (CMS rule).
pub(super) fn npi_ok(d: &[u8]) -> bool {
    if d.len() != 10 || !matches!(d[0], b'1' | b'2') {
        return false;
    }
    let mut buf = [0u8; 15];
    buf[..5].copy_from_slice(b"80840");
    buf[5..].copy_from_slice(d);
    luhn(&buf)
}

/// NANP: area and exchange start 2-9, area is not an N11 service code, not all one digit.
pub(super) fn nanp_ok(d: &[u8]) -> bool {
    d.len() == 10
        && (b'2'..=b'9').contains(&d[0])
        && !(d[1] == b'1' && d[2] == b'1')
        && (b'2'..=b'9').contains(&d[3])
        && !all_same(d)
}

/// MBI letters exclude S, L, O, I, B, Z (to avoid confusion with digits).
pub(super) fn mbi_letter(b: u8) -> bool {
    let u = b.to_ascii_uppercase();
    u.is_ascii_uppercase() && !matches!(u, b'S' | b'L' | b'O' | b'I' | b'B' | b'Z')
}

pub(super) fn mbi_ok(c: &[u8; 11]) -> bool {
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

pub(super) fn vin_value(b: u8) -> Option<u32> {
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
pub(super) fn vin_ok(v: &[u8]) -> bool {
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

pub(super) fn leap(y: u32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Calendar validity. Four-digit years are limited to 1800..=2199 (birth dates to far future
/// appointments; "9999-12-31" sentinels are not PHI); two-digit years allow Feb 29 because the
/// century is unknown.
pub(super) fn date_ok(y: u32, m: u32, d: u32, full_year: bool) -> bool {
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
pub(super) fn month_of(w: &[u8]) -> Option<u32> {
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

pub(super) fn domain_ok(d: &[u8]) -> bool {
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
