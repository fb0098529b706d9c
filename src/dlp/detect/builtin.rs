//! The built-in candidate scanner: digit-group parsing, the peekable candidate stream, the
//! dispatch on digits, `@`, `:` and URL schemes, and the analysis of numeric runs and month-name
//! dates into SSN, phone, date, IPv4, card, email, IPv6 and URL candidates.

use super::*;

// ---------------------------------------------------------------------------------------------
// The built-in candidate scanner.

/// Longest run window parsed at once. Runs longer than this (adversarial digit soups) are
/// processed in windows overlapping by `SPAN_GROUPS`, so memory stays bounded and every group
/// is parsed at most twice.
pub(super) const MAX_GROUPS: usize = 64;
/// Most groups one candidate can span (a 19-digit card as 4+3+3+3+3+3).
pub(super) const SPAN_GROUPS: usize = 6;

/// One digit group of a numeric run, with the separator that joins it to the next group.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Grp {
    pub(super) s: usize,
    pub(super) e: usize,
    /// Separator code (see `sep_code`) to the next group; 0 for the last group.
    pub(super) sep: u16,
}

impl Grp {
    #[inline(always)]
    pub(super) fn len(self) -> usize {
        self.e - self.s
    }
}

/// Parse digit groups joined by 1-2 separator bytes from digit `start` into `g`. Returns true if
/// it stopped at `MAX_GROUPS` (the run may continue).
pub(super) fn parse_groups(h: &[u8], start: usize, g: &mut Vec<Grp>) -> bool {
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
pub(super) fn lone(h: &[u8], p: usize, len: usize) -> bool {
    let (prev, next) = (if p > 0 { h[p - 1] } else { 0 }, at(h, p + len));
    let joined = is_sep(next)
        && (at(h, p + len + 1).is_ascii_digit()
            || (is_sep(at(h, p + len + 1)) && at(h, p + len + 2).is_ascii_digit()));
    !word_before(h, p) && !is_word(next) && prev != b':' && next != b':' && !joined
}

/// The digits of consecutive groups, concatenated into `buf` (at most 32). Returns the count.
pub(super) fn collect_digits(h: &[u8], g: &[Grp], buf: &mut [u8; 32]) -> usize {
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
pub(super) const MIN_DIGITS: u32 = 4;

pub(super) struct Builtin<'a> {
    pub(super) h: &'a [u8],
    pub(super) sc: &'a Scanner,
    pub(super) out: &'a mut Vec<Cand>,
    /// Hex/colon regions that end before this position were already tried as IPv6.
    pub(super) v6_memo: usize,
    /// The raw and trimmed end of the last URL: a `://` inside it (`http://x/?u=http://…`)
    /// reuses them, so nested schemes cannot make URL scanning quadratic.
    pub(super) url_memo: (usize, usize),
    /// Scratch: digit groups of the current numeric run.
    pub(super) groups: Vec<Grp>,
}

/// Sorted positions of a rare literal ('@', "://", "::"), found with `memchr`/`memmem` (SIMD
/// inside the dependency) and consumed in position order. (A filtered `memchr` for every ':'
/// measured slower: JSON has a ':' after every key.)
// Three streams live on the stack for one scan: a large variant costs nothing, a `Box` was
// an allocation per scan.
#[allow(clippy::large_enum_variant)]
pub(super) enum Stream<'h> {
    Off,
    Byte(memchr::Memchr<'h>),
    /// Over a finder compiled once with the scanner (building one per scan cost more than
    /// a small body's whole search).
    Str(memchr::memmem::FindIter<'h, 'h>),
    /// The per-scan searcher this replaced (the differential test's oracle).
    #[cfg(test)]
    Owned(Box<memchr::memmem::FindIter<'h, 'static>>),
}

impl Stream<'_> {
    pub(super) fn next_pos(&mut self) -> usize {
        match self {
            Stream::Off => None,
            Stream::Byte(it) => it.next(),
            Stream::Str(it) => it.next(),
            #[cfg(test)]
            Stream::Owned(it) => it.next(),
        }
        .unwrap_or(usize::MAX)
    }
}

/// A stream with one position of lookahead.
pub(super) struct Peek<'h> {
    pub(super) s: Stream<'h>,
    pub(super) next: usize,
}

impl<'h> Peek<'h> {
    pub(super) fn new(mut s: Stream<'h>) -> Peek<'h> {
        let next = s.next_pos();
        Peek { s, next }
    }

    /// Bits for the positions in `base..base + 64`; positions before `base` lie in bytes an
    /// earlier finding consumed and are dropped.
    pub(super) fn bits(&mut self, base: usize) -> u64 {
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
    pub(super) fn en(&self, b: B) -> bool {
        self.sc.en[b as usize]
    }

    pub(super) fn emit(&mut self, b: B, start: usize, end: usize, conf: u8) {
        let sc = self.sc;
        for &det in &sc.builtin[b as usize] {
            self.out.push(Cand::new(start, end, det, conf));
        }
    }

    /// The main loop: visit candidate starts in position order, 64 bytes at a time. A start is
    /// the first digit of a digit run, an '@', the ':' of "://" or the first ':' of "::". Each
    /// handler returns how far it consumed; starts inside consumed bytes are dropped.
    pub(super) fn run(&mut self) {
        let h = self.h;
        let sc = self.sc;
        let dmask = if sc.trig.digit { u64::MAX } else { 0 };
        let mut ats = Peek::new(match sc.trig.at {
            true => Stream::Byte(memchr::memchr_iter(b'@', h)),
            false => Stream::Off,
        });
        let mut urls = Peek::new(match sc.trig.colon {
            #[cfg(test)]
            true if super::oracle() => {
                Stream::Owned(Box::new(memchr::memmem::find_iter(h, b"://")))
            }
            true => Stream::Str(sc.finders.scheme.find_iter(h)),
            false => Stream::Off,
        });
        let mut v6s = Peek::new(match self.en(B::Ip) {
            #[cfg(test)]
            true if super::oracle() => Stream::Owned(Box::new(memchr::memmem::find_iter(h, b"::"))),
            true => Stream::Str(sc.finders.v6.find_iter(h)),
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
    pub(super) fn on_digit(&mut self, p: usize, floor: usize) -> usize {
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
    pub(super) fn mixed_token(&mut self, ts: usize, te: usize) -> usize {
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
    pub(super) fn try_v6(&mut self, p: usize, floor: usize) -> Option<usize> {
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
    pub(super) fn on_at(&mut self, p: usize) -> usize {
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
    pub(super) fn on_v6_colon(&mut self, p: usize, floor: usize) -> usize {
        if p < self.v6_memo {
            return p + 1;
        }
        self.try_v6(p, floor).unwrap_or(p + 1)
    }

    /// The ':' of a "://" from the stream.
    pub(super) fn on_url(&mut self, p: usize) -> usize {
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
        // Where the first '(' of the URL is, found once: re-searching for it at every
        // trailing ')' made `http://a))))…` quadratic.
        let open = h[p + 3..raw_end]
            .iter()
            .position(|&b| b == b'(')
            .map(|k| p + 3 + k);
        while e > p + 4 {
            let b = h[e - 1];
            // A closing parenthesis belongs to the URL only if it opened one (Wikipedia-style).
            let trim = matches!(
                b,
                b'.' | b',' | b';' | b':' | b'!' | b'?' | b'\'' | b']' | b'*'
            ) || (b == b')' && open.is_none_or(|o| o >= e));
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
    pub(super) fn numeric_run(&mut self, p: usize, de: usize) -> usize {
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
    pub(super) fn analyze(&mut self, g: &[Grp], a: usize) -> usize {
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
    pub(super) fn single(&mut self, s: usize, e: usize) {
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
    pub(super) fn ssn_grouped(&mut self, g: &[Grp], a: usize) {
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
    pub(super) fn phone_cc(&mut self, g: &[Grp], a: usize) {
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
    pub(super) fn date_numeric(&mut self, g: &[Grp], a: usize) {
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
    pub(super) fn ipv4(&mut self, g: &[Grp], a: usize) {
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
    pub(super) fn card_grouped(&mut self, g: &[Grp], a: usize, n: usize) {
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
    pub(super) fn month_dates(&mut self, s: usize, e: usize) -> usize {
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
    pub(super) fn phone3(&self, g: &[Grp], c: usize) -> Option<(usize, usize, u8)> {
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
    pub(super) fn month_before(&self, s: usize, e: usize, day: u32) -> Option<(usize, usize)> {
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
    pub(super) fn month_after(&self, s: usize, e: usize, day: u32) -> Option<(usize, usize)> {
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
