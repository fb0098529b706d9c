//! Strict JSON lexing for the DLP walker: whitespace, expected bytes, string spans (with
//! whether they hold escapes), skipping and scalars, and the look-ahead that reads one member of
//! an object without consuming it.

use super::*;

impl<'a> Walk<'a> {
    #[inline]
    pub(super) fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if !is_ws(c) {
                break;
            }
            self.pos += 1;
        }
    }

    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    pub(super) fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        self.ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(JsonError::Malformed)
        }
    }

    /// A string at `pos` (on its opening quote): `(content start, content end, has escape)`;
    /// `pos` ends after the closing quote.
    pub(super) fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        if self.peek() != Some(b'"') {
            return Err(JsonError::Malformed);
        }
        let start = self.pos + 1;
        let mut i = start;
        let mut esc = false;
        loop {
            // Vectorised search for the two bytes that end a run of plain string content.
            // (Raw control characters are not refused: they make the JSON invalid for its
            // receiver, but cannot hide a value from the scan.)
            let rest = self.b.get(i..).ok_or(JsonError::Malformed)?;
            let off = memchr::memchr2(b'"', b'\\', rest).ok_or(JsonError::Malformed)?;
            i += off;
            match self.b[i] {
                b'"' => break,
                _ => {
                    esc = true;
                    i += 2;
                }
            }
        }
        self.pos = i + 1;
        Ok((start, i, esc))
    }

    /// Skip any value (no scanning), leaving `pos` after it.
    pub(super) fn skip(&mut self) -> Result<(), JsonError> {
        self.ws();
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek().ok_or(JsonError::Malformed)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(JsonError::TooDeep);
                    }
                    self.pos += 1;
                    continue;
                }
                b'}' | b']' => {
                    if depth == 0 {
                        return Err(JsonError::Malformed);
                    }
                    depth -= 1;
                    self.pos += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.pos += 1;
                    continue;
                }
                _ => self.scalar()?,
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// A number, `true`, `false` or `null`.
    pub(super) fn scalar(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let tok = &self.b[start..self.pos];
        let ok = matches!(tok, b"true" | b"false" | b"null")
            || (!tok.is_empty()
                && tok
                    .iter()
                    .all(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                && tok.iter().any(u8::is_ascii_digit));
        if ok {
            Ok(())
        } else {
            Err(JsonError::Malformed)
        }
    }

    /// Look ahead in the object starting at `at` (its `{`) for direct member `key` with a
    /// string value: the value's decoded bytes. `pos` is restored.
    pub(super) fn peek_member(
        &mut self,
        at: usize,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, JsonError> {
        let saved = self.pos;
        self.pos = at + 1;
        let mut found = None;
        let r = (|| {
            self.ws();
            if self.peek() == Some(b'}') {
                return Ok(());
            }
            loop {
                self.ws();
                let (ks, ke, kesc) = self.string()?;
                self.expect(b':')?;
                self.ws();
                let hit = if kesc {
                    let mut d = Vec::new();
                    let mut m = Vec::new();
                    unescape_map(&self.b[ks..ke], ks, &mut d, &mut m)?;
                    d == key
                } else {
                    &self.b[ks..ke] == key
                };
                if hit && self.peek() == Some(b'"') {
                    let (vs, ve, vesc) = self.string()?;
                    let v = if vesc {
                        let mut d = Vec::new();
                        let mut m = Vec::new();
                        unescape_map(&self.b[vs..ve], vs, &mut d, &mut m)?;
                        d
                    } else {
                        self.b[vs..ve].to_vec()
                    };
                    found = Some(v);
                    return Ok(());
                }
                self.skip()?;
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => return Ok(()),
                    _ => return Err(JsonError::Malformed),
                }
            }
        })();
        self.pos = saved;
        r.map(|()| found)
    }
}
