//! Scanning and transforming leaf values: base64 (decoded text and attachments), strings (free
//! text, escapes, XHTML narrative), hits applied to typed values, and the replacement text of each
//! transforming action.

use super::*;

impl<'a> Walk<'a> {
    /// A base64Binary value at `self.pos`: decoded and, if it is text (valid UTF-8 without
    /// NULs, whatever `contentType` claims — a label is not a guarantee), scanned like free
    /// text, and through the XHTML text view when it holds markup. A finding with a
    /// transforming action removes the element (base64 cannot be edited in place); `block`
    /// blocks. Content that is not text (images, PDF, undecodable base64) of an
    /// `Attachment.data` / `Binary.data` (`content`) follows `Engine::opaque_attachment`;
    /// other opaque base64 (signatures) passes. Returns "remove me"; the value is consumed.
    pub(super) fn base64_value(&mut self, content: bool) -> Result<bool, JsonError> {
        let (s, e, esc) = self.string()?;
        let raw = &self.b[s..e];
        let mut b64 = Vec::with_capacity(raw.len());
        if esc {
            unescape_plain(raw, &mut b64)?;
        } else {
            b64.extend_from_slice(raw);
        }
        // FHIR's base64Binary allows whitespace between quads.
        b64.retain(|c| !c.is_ascii_whitespace());
        // Decoded leniently: padding optional, standard or URL-safe alphabet (a server
        // that accepts either must not get content DLP could not read).
        let decoded = decode_base64_lenient(&b64);
        let Some(bytes) = decoded else {
            return Ok(self.opaque_content(content));
        };
        // The scanner reads bytes: text in any ASCII-compatible charset (Latin-1 too) is
        // scanned as it is; UTF-16 (NUL bytes between characters) is read without them.
        let mut found = Vec::new();
        self.eng.scanner.scan(&bytes, &mut found);
        // UTF-16 of Latin text: every other byte zero (little- or big-endian).
        let half_zero = |first: usize| {
            bytes.len() >= 4
                && bytes.len() % 2 == 0
                && bytes.iter().skip(first).step_by(2).all(|&c| c == 0)
        };
        let utf16: Option<Vec<u8>> = (half_zero(0) || half_zero(1))
            .then(|| bytes.iter().copied().filter(|&c| c != 0).collect());
        if let Some(u) = &utf16 {
            self.eng.scanner.scan(u, &mut found);
        }
        if bytes.contains(&b'<') {
            // HTML or XML: also read the text a reader sees (tags and comments between
            // the digits of a number never split it; see `xhtml.rs`).
            let mut view = Vec::new();
            let mut vmap = Vec::new();
            crate::dlp::xhtml::text_view(&bytes, &mut view, &mut vmap);
            self.eng.scanner.scan(&view, &mut found);
        }
        // Content that is not text (an image, a PDF) and held nothing readable follows the
        // route's rule for content DLP cannot read.
        let textual = std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0);
        if found.is_empty() && !textual && utf16.is_none() {
            return Ok(self.opaque_content(content));
        }
        let mut remove = false;
        for h in &found {
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => self.blocked = true,
                Action::Report => {}
                _ => remove = true,
            }
        }
        Ok(remove)
    }

    /// What an unreadable `Attachment.data`/`Binary.data` (`content`) gets: see
    /// `Engine::opaque_attachment`. Other opaque base64 (signatures) passes. Returns
    /// "remove me".
    fn opaque_content(&mut self, content: bool) -> bool {
        if !content {
            return false;
        }
        let label = self.eng.opaque_label;
        match self.eng.opaque_attachment {
            Some(Action::Block) => {
                self.report.add(label, Action::Block);
                self.blocked = true;
                false
            }
            Some(act) => {
                self.report.add(label, act);
                true
            }
            None => {
                self.report.add(label, Action::Report);
                false
            }
        }
    }

    /// A string value: transform, or scan for free-text findings. Returns "remove me".
    pub(super) fn string_value(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        let qstart = self.pos;
        let (s, e, esc) = self.string()?;
        let kind = ctx.kind.unwrap_or(ValueKind::Text);
        if let Some((act, rule, direct)) = ctx.transform {
            return self.transform_string(act, rule, direct, kind, qstart, s, e, esc);
        }
        // `dates:` — one action for every typed date (Safe Harbor: all dates but the year).
        if let (Some((act, label)), ValueKind::Structured("date" | "dateTime" | "instant")) =
            (self.eng.dates, kind)
        {
            if ctx.scan {
                self.report.add(label, act);
                return self.transform_string(act, u16::MAX, true, kind, qstart, s, e, esc);
            }
        }
        if !ctx.scan {
            return Ok(false);
        }
        // Hits from the whole-body pass that fall in this string.
        let b = self.b;
        let mut crossing = false;
        let mut first = self.hit_cur;
        while first < self.hits.len() && self.hits[first].end <= s {
            first += 1;
        }
        let mut last = first;
        while last < self.hits.len() && self.hits[last].start < e {
            let h = self.hits[last];
            if h.start < s || h.end > e {
                crossing = true;
            }
            last += 1;
        }
        self.hit_cur = last;
        let xhtml = matches!(kind, ValueKind::Xhtml);
        if !esc && !crossing && !xhtml {
            if first == last {
                return Ok(false);
            }
            // Map identity: the hits are already body offsets.
            let mut found: Vec<Hit> = self.hits[first..last].to_vec();
            return self.apply_hits(&mut found, kind);
        }
        // Decode and scan this string alone. The offset map back to the body is built only
        // once something is found: most strings scanned here are clean narratives.
        let raw_hits = first != last;
        let raw = &b[s..e];
        let unicode_escapes = memchr::memmem::find(raw, b"\\u").is_some();
        let mut dec = std::mem::take(&mut self.dec);
        let mut map = std::mem::take(&mut self.dec_map);
        unescape_plain(raw, &mut dec)?;
        let mut found = std::mem::take(&mut self.hits2);
        found.clear();
        let r = if xhtml {
            let mut txt = std::mem::take(&mut self.txt);
            let mut tmap = std::mem::take(&mut self.txt_map);
            crate::dlp::xhtml::text_view(&dec, &mut txt, &mut tmap);
            self.eng.scanner.scan(&txt, &mut found);
            // Attribute values and comments are not text: the markup itself is scanned
            // when the whole-body pass saw something in this string, or when `\u` escapes
            // could have hidden it from that pass (`href="mailto:…"`).
            let mut attr: Vec<Hit> = Vec::new();
            if raw_hits || unicode_escapes {
                self.eng.scanner.scan(&dec, &mut attr);
                if !attr.is_empty() {
                    let mut text_byte = vec![false; dec.len()];
                    for &(a, z) in tmap.iter() {
                        let markup = z.saturating_sub(a) >= 3 && dec.get(a as usize) == Some(&b'<');
                        if !markup {
                            for t in text_byte.iter_mut().take(z as usize).skip(a as usize) {
                                *t = true;
                            }
                        }
                    }
                    // In markup only detectors that look at any value count: `url` and
                    // `date` would take the mandatory `xmlns` or an `href` apart.
                    let eng = self.eng;
                    attr.retain(|h| {
                        !text_byte[h.start..h.end].iter().any(|t| *t)
                            && eng
                                .detectors
                                .get(usize::from(h.detector))
                                .is_some_and(|d| d.any_type)
                    });
                }
            }
            let mut r = Ok(false);
            if !found.is_empty() || !attr.is_empty() {
                unescape_map(raw, s, &mut dec, &mut map)?;
                let view = Xhtml {
                    src: &dec,
                    tmap: &tmap,
                };
                r = self.apply_decoded(&mut found, kind, &txt, &map, Some(view));
                if matches!(r, Ok(false)) && !self.blocked && !attr.is_empty() {
                    r = self.apply_decoded(&mut attr, kind, &dec, &map, None);
                }
            }
            self.txt = txt;
            self.txt_map = tmap;
            r
        } else {
            // Scanned with the raw bytes before the string (its member name) in front, so
            // context words still count when escapes forced a separate scan.
            let ctx_start = s.saturating_sub(CONTEXT_PREFIX);
            let prefix = &b[ctx_start..s];
            let mut buf = std::mem::take(&mut self.txt);
            buf.clear();
            buf.extend_from_slice(prefix);
            buf.extend_from_slice(&dec);
            self.eng.scanner.scan(&buf, &mut found);
            let p = prefix.len();
            found.retain(|h| h.start >= p);
            for h in found.iter_mut() {
                h.start -= p;
                h.end -= p;
            }
            self.txt = buf;
            if found.is_empty() {
                Ok(false)
            } else {
                unescape_map(raw, s, &mut dec, &mut map)?;
                self.apply_decoded(&mut found, kind, &dec, &map, None)
            }
        };
        self.hits2 = found;
        self.dec = dec;
        self.dec_map = map;
        r
    }

    /// Findings with body offsets (no escapes in the string).
    pub(super) fn apply_hits(
        &mut self,
        found: &mut [Hit],
        kind: ValueKind,
    ) -> Result<bool, JsonError> {
        let b = self.b;
        let mut remove = false;
        for h in found.iter() {
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            if !det.applies_to(kind) {
                continue;
            }
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => self.blocked = true,
                Action::Report => {}
                _ if !matches!(kind, ValueKind::Text) => remove = true,
                act => {
                    let m = &b[h.start..h.end];
                    let repl = self.free_text_replacement(act, det.keep_last, m, false);
                    self.edit(h.start, h.end, Repl::Bytes(repl));
                }
            }
        }
        Ok(remove)
    }

    /// Findings in decoded text, `map` giving body ranges.
    pub(super) fn apply_decoded(
        &mut self,
        found: &mut [Hit],
        kind: ValueKind,
        text: &[u8],
        map: &[(u32, u32)],
        xhtml: Option<Xhtml<'_>>,
    ) -> Result<bool, JsonError> {
        let mut remove = false;
        for h in found.iter() {
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            if !det.applies_to(kind) {
                continue;
            }
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => self.blocked = true,
                Action::Report => {}
                _ if !matches!(kind, ValueKind::Text | ValueKind::Xhtml) => remove = true,
                act => {
                    let (hs, he) = (h.start, h.end);
                    let m = text.get(hs..he).unwrap_or_default();
                    let repl = self.free_text_replacement(
                        act,
                        det.keep_last,
                        m,
                        matches!(kind, ValueKind::Xhtml),
                    );
                    // Body ranges to replace: in narrative only text, never a tag (a
                    // finding may span `<b>`), through the XHTML view and then the JSON
                    // unescape map; elsewhere straight through the unescape map.
                    let rs = match &xhtml {
                        Some(x) => crate::dlp::xhtml::redact_text_runs(x.src, x.tmap, hs, he)
                            .into_iter()
                            .filter_map(|(a, z)| {
                                let lo = map.get(a as usize)?.0;
                                let hi = map.get((z as usize).checked_sub(1)?)?.1;
                                Some((lo, hi))
                            })
                            .collect(),
                        None => runs(map, hs, he),
                    };
                    for (k, (s, e)) in rs.into_iter().enumerate() {
                        let r = if k == 0 { repl.clone() } else { Vec::new() };
                        self.edit(s as usize, e as usize, Repl::Bytes(r));
                    }
                }
            }
        }
        Ok(remove)
    }

    /// The JSON-escaped (and, in narrative, XHTML-escaped) text replacing a finding.
    pub(super) fn free_text_replacement(
        &self,
        act: Action,
        keep: u16,
        m: &[u8],
        xhtml: bool,
    ) -> Vec<u8> {
        let raw = match act {
            Action::Mask => actions::mask(m, usize::from(keep)),
            Action::Hash => match &self.eng.keys {
                Some(k) => k.hash(m),
                None => REDACTED.to_vec(),
            },
            _ => REDACTED.to_vec(),
        };
        let mut x = Vec::with_capacity(raw.len());
        if xhtml {
            for &c in &raw {
                match c {
                    b'&' => x.extend_from_slice(b"&amp;"),
                    b'<' => x.extend_from_slice(b"&lt;"),
                    b'>' => x.extend_from_slice(b"&gt;"),
                    c => x.push(c),
                }
            }
        } else {
            x = raw;
        }
        let mut out = Vec::with_capacity(x.len());
        json_escape_into(&mut out, &x);
        out
    }

    /// A string under a transforming rule. `direct`: the string is the matched element (or
    /// an item of it), so an impossible transform removes it; below a matched complex
    /// element only the leaves the transform is meant for change.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn transform_string(
        &mut self,
        act: Action,
        _rule: u16,
        direct: bool,
        kind: ValueKind,
        qstart: usize,
        s: usize,
        e: usize,
        esc: bool,
    ) -> Result<bool, JsonError> {
        let qend = e + 1;
        let value: Vec<u8> = if esc {
            let mut d = Vec::new();
            let mut m = Vec::new();
            unescape_map(&self.b[s..e], s, &mut d, &mut m)?;
            d
        } else {
            self.b[s..e].to_vec()
        };
        let is_date = matches!(kind, ValueKind::Structured("date" | "dateTime" | "instant"));
        let text_like = matches!(kind, ValueKind::Text);
        let replace = |w: &mut Self, new: Vec<u8>| {
            let mut out = Vec::with_capacity(new.len() + 2);
            out.push(b'"');
            json_escape_into(&mut out, &new);
            out.push(b'"');
            w.edit(qstart, qend, Repl::Bytes(out));
        };
        match act {
            Action::Mask | Action::Hash => {
                if text_like
                    || (direct
                        && matches!(kind, ValueKind::Structured("id" | "code"))
                        && act == Action::Hash)
                {
                    let new = if act == Action::Mask {
                        actions::mask(&value, usize::from(self.keep_for(_rule)))
                    } else {
                        match &self.eng.keys {
                            Some(k) => k.hash(&value),
                            None => return Ok(true),
                        }
                    };
                    replace(self, new);
                    Ok(false)
                } else {
                    Ok(direct)
                }
            }
            Action::DateShift => {
                let dashed = true;
                if is_date || (direct && text_like) {
                    if actions::date_shift(&value, 1, dashed).is_none() || esc {
                        return Ok(direct || is_date);
                    }
                    let uid = match self.res.last() {
                        Some(r) => r.uid,
                        None => {
                            // Not inside a resource: nobody to key the shift by.
                            return match actions::generalize(&value, dashed) {
                                Some(g) => {
                                    replace(self, g);
                                    Ok(false)
                                }
                                None => Ok(true),
                            };
                        }
                    };
                    self.edit(qstart, qend, Repl::Shift { uid, dashed });
                    Ok(false)
                } else {
                    Ok(direct)
                }
            }
            // An instant must keep full precision: it cannot be generalised, only removed.
            Action::Generalize if matches!(kind, ValueKind::Structured("instant")) => Ok(true),
            Action::Generalize => match actions::generalize(&value, true) {
                Some(g) if is_date || text_like => {
                    if g != value {
                        replace(self, g);
                    }
                    Ok(false)
                }
                // Under a generalised complex element (an address), free text that is
                // not a ZIP, date or age is what generalising removes (street, city).
                None if text_like => Ok(true),
                _ => Ok(direct),
            },
            Action::Redact | Action::Block => Ok(true),
            Action::Report => Ok(false),
        }
    }

    pub(super) fn keep_for(&self, rule: u16) -> u16 {
        self.eng.rules.keep_last(rule)
    }
}

/// base64 with or without padding, in the standard or the URL-safe alphabet.
fn decode_base64_lenient(b64: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    let cfg = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, cfg)
        .decode(b64)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg).decode(b64))
        .ok()
}
