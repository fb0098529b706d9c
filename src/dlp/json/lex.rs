//! The DLP walker's cursor over the shared lexer (`crate::json`, the gateway's one JSON
//! grammar): whitespace, expected bytes, string spans (with whether they hold escapes),
//! skipping and scalars, and the look-ahead that reads one member of an object without
//! consuming it.

use super::*;
use crate::json;

impl<'a> Walk<'a> {
    #[inline]
    pub(super) fn ws(&mut self) {
        self.pos = json::skip_ws(self.b, self.pos);
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
    /// `pos` ends after the closing quote. The shared lexer checks escapes, raw control
    /// bytes and UTF-8, so what the walker scans is what every other reader sees.
    #[inline]
    pub(super) fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        let s = match self.ix.as_mut().and_then(|ix| ix.string(self.pos)) {
            Some(s) => s,
            None => json::string(self.b, self.pos)?,
        };
        self.pos = s.end + 1;
        Ok((s.start, s.end, s.esc))
    }

    /// Skip any value (no scanning, but fully checked: grammar, duplicates, and the depth
    /// left below the walker's own), leaving `pos` after it. With the body's index (checked
    /// whole, to the same depth cap) a container is one jump to its closing bracket.
    pub(super) fn skip(&mut self) -> Result<(), JsonError> {
        if let Some(end) = self.ix.as_mut().and_then(|ix| ix.value_end(self.pos)) {
            self.pos = end;
            return Ok(());
        }
        let left = MAX_DEPTH.saturating_sub(self.depth);
        self.pos = json::skip_value(self.b, self.pos, left)?;
        Ok(())
    }

    /// A number, `true`, `false` or `null`.
    pub(super) fn scalar(&mut self) -> Result<(), JsonError> {
        if let Some(end) = self.ix.as_mut().and_then(|ix| ix.value_end(self.pos)) {
            self.pos = end;
            return Ok(());
        }
        self.pos = match self.peek() {
            Some(b't') => json::literal(self.b, self.pos, b"true")?,
            Some(b'f') => json::literal(self.b, self.pos, b"false")?,
            Some(b'n') => json::literal(self.b, self.pos, b"null")?,
            _ => json::number(self.b, self.pos)?.0,
        };
        Ok(())
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
                let hit = *json::decode(&self.b[ks..ke], kesc)? == *key;
                if hit && self.peek() == Some(b'"') {
                    let (vs, ve, vesc) = self.string()?;
                    found = Some(json::decode(&self.b[vs..ve], vesc)?.into_owned());
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
