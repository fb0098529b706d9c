//! Byte-level helpers of the scanner: the byte class table, bounds-safe accessors (`at` returns 0
//! outside the buffer, so "end of input" behaves like a boundary everywhere), word/separator
//! boundary tests, SWAR digit runs, URL ends, and the separator codes between digit groups.

// ---------------------------------------------------------------------------------------------
// Byte classes and bounds-safe accessors. `at` returns 0 outside the buffer; 0 is neither a
// word byte, a digit nor a separator, so "end of input" behaves like a boundary everywhere.

pub(super) const C_WORD: u8 = 1;
pub(super) const C_SEP: u8 = 2;
pub(super) const C_LOCAL: u8 = 4;
pub(super) const C_DOMAIN: u8 = 8;
pub(super) const C_V6: u8 = 16;
pub(super) const C_URL_STOP: u8 = 32;

/// Byte classes as one table: the scanner's inner loops test a class per byte, and a lookup
/// is branch-free where a chain of comparisons mispredicts on mixed JSON.
pub(super) static CLASS: [u8; 256] = {
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
pub(super) fn at(h: &[u8], i: usize) -> u8 {
    h.get(i).copied().unwrap_or(0)
}

#[inline(always)]
pub(super) fn is_word(b: u8) -> bool {
    CLASS[usize::from(b)] & C_WORD != 0
}

/// Is `h[i]` a word byte for boundary purposes? The letter of a JSON/C escape (`\n`, `\t`,
/// `\r`) is not: `"Phone:\n555-234-5678"` in raw JSON must still find the number.
#[inline(always)]
pub(super) fn word_at(h: &[u8], i: usize) -> bool {
    is_word(at(h, i)) && !escape_letter(h, i)
}

#[inline(always)]
pub(super) fn escape_letter(h: &[u8], i: usize) -> bool {
    matches!(at(h, i), b'n' | b't' | b'r') && i > 0 && at(h, i - 1) == b'\\'
}

/// Is the byte before position `i` a word byte (i.e. no word boundary at `i`, looking left)?
#[inline(always)]
pub(super) fn word_before(h: &[u8], i: usize) -> bool {
    i > 0 && word_at(h, i - 1)
}

#[inline(always)]
pub(super) fn end_ok(h: &[u8], e: usize) -> bool {
    !is_word(at(h, e))
}

/// A context word occurrence must be a whole word where it starts/ends with a word byte.
pub(super) fn bounded_word(h: &[u8], s: usize, e: usize) -> bool {
    let first = at(h, s);
    let last = if e > s { at(h, e - 1) } else { 0 };
    (!is_word(first) || !word_before(h, s)) && (!is_word(last) || !word_at(h, e))
}

/// Separator bytes inside a numeric run.
#[inline(always)]
pub(super) fn is_sep(b: u8) -> bool {
    CLASS[usize::from(b)] & C_SEP != 0
}

#[inline(always)]
pub(super) fn is_local(b: u8) -> bool {
    CLASS[usize::from(b)] & C_LOCAL != 0
}

#[inline(always)]
pub(super) fn is_domain(b: u8) -> bool {
    CLASS[usize::from(b)] & C_DOMAIN != 0
}

#[inline(always)]
pub(super) fn is_v6(b: u8) -> bool {
    CLASS[usize::from(b)] & C_V6 != 0
}

pub(super) const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
pub(super) const HI1: u64 = 0x8080_8080_8080_8080;

/// SWAR: bit 7 of each byte lane of `w` set iff that byte is in `lo..=hi` (both < 0x80).
/// Lane sums stay below 0x100, so no carry crosses lanes and the result is exact per byte.
#[inline(always)]
pub(super) fn lanes_in(w: u64, lo: u8, hi: u8) -> u64 {
    let lanes = |b: u8| u64::from(b) * 0x0101_0101_0101_0101;
    let low = w & LO7;
    (low + lanes(0x80 - lo)) & !(low + lanes(0x7f - hi)) & !w & HI1
}

/// End of the digit run starting at `i`, eight bytes per step: a byte loop mispredicts its
/// exit on every number, and FHIR JSON has tens of thousands of numbers per megabyte.
#[inline(always)]
pub(super) fn digits_end(h: &[u8], mut i: usize) -> usize {
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
pub(super) fn digit_mask(h: &[u8], base: usize) -> u64 {
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
pub(super) fn url_end(h: &[u8], from: usize) -> usize {
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

pub(super) const S_SP: u16 = b' ' as u16;
pub(super) const S_DASH: u16 = b'-' as u16;
pub(super) const S_DOT: u16 = b'.' as u16;
pub(super) const S_SLASH: u16 = b'/' as u16;
pub(super) const S_LP: u16 = b'(' as u16;
pub(super) const S_RP: u16 = b')' as u16;
pub(super) const S_RP_SP: u16 = ((b')' as u16) << 8) | b' ' as u16;
pub(super) const S_SP_LP: u16 = ((b' ' as u16) << 8) | b'(' as u16;

/// Value of a short ASCII digit string (callers pass at most 4 digits).
pub(super) fn num(d: &[u8]) -> u32 {
    d.iter().fold(0u32, |acc, &b| {
        acc.saturating_mul(10)
            .saturating_add(u32::from(b.wrapping_sub(b'0')))
    })
}

pub(super) fn all_same(d: &[u8]) -> bool {
    d.first().is_some_and(|&f| d.iter().all(|&b| b == f))
}
