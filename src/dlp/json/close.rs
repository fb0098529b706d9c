//! Closing objects, arrays and resources: realising removals (commas, `_x` siblings), keeping
//! extensions meaningful, replacing required elements with `data-absent-reason`, adding the
//! `meta.security` label and resolving per-patient date shifts when a resource closes.

use super::*;

impl<'a> Walk<'a> {
    /// Finish an object or array: realise removals (commas, `_x` siblings, required
    /// elements) and say whether nothing is left of it.
    pub(super) fn close_members(
        &mut self,
        rec_base: usize,
        edit_base: usize,
        insert_base: usize,
        is_object: bool,
        start: usize,
        end: usize,
    ) -> Result<bool, JsonError> {
        let n = self.recs.len() - rec_base;
        if n == 0 {
            return Ok(false);
        }
        if is_object && n > 1 {
            // Duplicate keys are refused: Ward would read the first and a client the last
            // (`"resourceType":"Basic","resourceType":"Patient"`), a classic parser
            // differential. Sorting the keys also serves the `_x` lookup below.
            let b = self.b;
            let mut keys = std::mem::take(&mut self.keys);
            keys.clear();
            for (i, r) in self.recs[rec_base..].iter().enumerate() {
                keys.push((&b[r.kstart as usize + 1..r.kend as usize - 1], i));
            }
            // Small objects (most of FHIR) are cheaper to compare pairwise than to sort.
            let dup = if keys.len() <= 8 {
                (1..keys.len()).any(|i| keys[..i].iter().any(|k| same_key(k.0, keys[i].0)))
            } else {
                keys.sort_unstable_by(|x, y| x.0.cmp(y.0));
                keys.windows(2).any(|w| w[0].0 == w[1].0)
            };
            if dup {
                self.keys = keys;
                return Err(JsonError::Malformed);
            }
            let sorted = keys.len() > 8;
            // `_x` goes with `x`.
            let mut with_ext: Vec<usize> = Vec::new();
            let mut probe = Vec::new();
            for r in &self.recs[rec_base..] {
                if !r.removed {
                    continue;
                }
                let key = &b[r.kstart as usize + 1..r.kend as usize - 1];
                if key.first() == Some(&b'_') {
                    continue;
                }
                probe.clear();
                probe.push(b'_');
                probe.extend_from_slice(key);
                let found = if sorted {
                    keys.binary_search_by(|k| k.0.cmp(probe.as_slice())).ok()
                } else {
                    keys.iter().position(|k| k.0 == probe.as_slice())
                };
                if let Some(j) = found {
                    with_ext.push(keys[j].1);
                }
            }
            for j in with_ext {
                let o = &mut self.recs[rec_base + j];
                o.removed = true;
                o.required = false;
            }
            self.keys = keys;
        }
        // A required element is masked rather than removed.
        let mut replaced: Vec<(usize, Vec<u8>)> = Vec::new();
        for i in rec_base..self.recs.len() {
            let r = self.recs[i];
            if r.removed && r.required {
                let key = &self.b[r.kstart as usize + 1..r.kend as usize - 1];
                let text = if r.xhtml {
                    let mut t = self.b[r.kstart as usize..r.kend as usize].to_vec();
                    t.push(b':');
                    t.extend_from_slice(REDACTED_DIV);
                    t
                } else if r.primitive {
                    let mut t = b"\"_".to_vec();
                    t.extend_from_slice(key);
                    t.extend_from_slice(b"\":");
                    if r.many {
                        t.push(b'[');
                        t.extend_from_slice(DAR_OBJECT);
                        t.push(b']');
                    } else {
                        t.extend_from_slice(DAR_OBJECT);
                    }
                    t
                } else {
                    let mut t = self.b[r.kstart as usize..r.kend as usize].to_vec();
                    t.push(b':');
                    if r.many {
                        t.push(b'[');
                        t.extend_from_slice(DAR_OBJECT);
                        t.push(b']');
                    } else {
                        t.extend_from_slice(DAR_OBJECT);
                    }
                    t
                };
                replaced.push((i, text));
            }
        }
        let mut gone: Vec<(u32, u32)> = Vec::new();
        let mut new_edits: Vec<Edit> = Vec::new();
        for (i, text) in replaced {
            let r = &mut self.recs[i];
            r.removed = false;
            gone.push((r.kstart, r.vend));
            new_edits.push(Edit {
                start: r.kstart,
                end: r.vend,
                repl: Repl::Bytes(text),
            });
        }
        let recs = &self.recs[rec_base..];
        let kept = recs.iter().filter(|r| !r.removed).count();
        if kept == 0 {
            self.recs.truncate(rec_base);
            self.drop_inside(edit_base, insert_base, &[(u32_of(start), u32_of(end))]);
            return Ok(true);
        }
        if kept < n {
            let mut dels: Vec<(u32, u32)> = Vec::new();
            let mut seen_kept = false;
            for i in 0..n {
                let r = self.recs[rec_base + i];
                if !r.removed {
                    seen_kept = true;
                    continue;
                }
                if seen_kept {
                    let prev_end = self.recs[rec_base + i - 1].vend;
                    dels.push((prev_end, r.vend));
                } else {
                    let next_start = self
                        .recs
                        .get(rec_base + i + 1)
                        .map(|x| x.kstart)
                        .ok_or(JsonError::Inconsistent)?;
                    dels.push((r.kstart, next_start));
                }
            }
            for (s, e) in dels {
                gone.push((s, e));
                new_edits.push(Edit {
                    start: s,
                    end: e,
                    repl: Repl::Static(b""),
                });
            }
        }
        if !gone.is_empty() {
            gone.sort_unstable();
            self.drop_inside(edit_base, insert_base, &gone);
        }
        self.edits.extend(new_edits);
        self.recs.truncate(rec_base);
        Ok(false)
    }

    /// An extension that lost its `url`, or its value (or nested extensions) with nothing
    /// left in their place, means nothing and is invalid FHIR (ext-1): it goes whole.
    pub(super) fn extension_keeps_meaning(&mut self, rec_base: usize) {
        let b = self.b;
        let key = |r: &Rec| &b[r.kstart as usize + 1..r.kend as usize - 1];
        let content = |k: &[u8]| k.starts_with(b"value") || k == b"extension";
        let recs = &self.recs[rec_base..];
        let lost = recs
            .iter()
            .any(|r| r.removed && (content(key(r)) || key(r) == b"url"));
        let left = recs.iter().any(|r| !r.removed && content(key(r)));
        if lost && (!left || recs.iter().any(|r| r.removed && key(r) == b"url")) {
            for r in &mut self.recs[rec_base..] {
                r.removed = true;
                r.required = false;
            }
        }
    }

    /// Forget edits and inserts inside any of the sorted, disjoint ranges `gone` (their
    /// element is going): one pass over the tail, a binary search per edit.
    pub(super) fn drop_inside(
        &mut self,
        edit_base: usize,
        insert_base: usize,
        gone: &[(u32, u32)],
    ) {
        let inside = |a: u32, z: u32, strict: bool| {
            let i = gone.partition_point(|g| g.0 <= a);
            i > 0 && {
                let (s, e) = gone[i - 1];
                if strict {
                    a > s && z < e
                } else {
                    a >= s && z <= e
                }
            }
        };
        let mut w = edit_base;
        for r in edit_base..self.edits.len() {
            let (a, z) = (self.edits[r].start, self.edits[r].end);
            if !inside(a, z, false) {
                self.edits.swap(w, r);
                w += 1;
            }
        }
        self.edits.truncate(w);
        let mut w = insert_base;
        for r in insert_base..self.inserts.len() {
            let a = self.inserts[r].at;
            if !inside(a, a, true) {
                self.inserts.swap(w, r);
                w += 1;
            }
        }
        self.inserts.truncate(w);
    }

    /// A resource closes: resolve its date shifts and label it if anything changed.
    pub(super) fn close_resource(
        &mut self,
        edit_base: usize,
        vanished: bool,
    ) -> Result<(), JsonError> {
        let Some(info) = self.res.pop() else {
            return Err(JsonError::Inconsistent);
        };
        let key: Option<Vec<u8>> = match (&info.patient_ref, &info.id) {
            (Some(r), _) => Some(patient_key(r)),
            (None, Some(id)) if info.is_patient => {
                let mut k = b"Patient/".to_vec();
                k.extend_from_slice(id);
                Some(k)
            }
            _ => None,
        };
        let parent_uid = self.res.last().map(|p| p.uid);
        let max = self.eng.date_shift_days;
        for i in edit_base..self.edits.len() {
            let Repl::Shift { uid, dashed } = self.edits[i].repl else {
                continue;
            };
            if uid != info.uid {
                continue;
            }
            let (s, e) = (self.edits[i].start as usize, self.edits[i].end as usize);
            let orig = &self.b[s..e];
            match (&key, info.contained, parent_uid) {
                (Some(k), _, _) => {
                    let days = self.eng.keys.as_ref().map_or(0, |ks| ks.shift_days(k, max));
                    let mut out = b"\"".to_vec();
                    let shifted = actions::date_shift(&orig[1..orig.len() - 1], days, dashed)
                        .or_else(|| actions::generalize(&orig[1..orig.len() - 1], dashed))
                        .unwrap_or_default();
                    out.extend_from_slice(&shifted);
                    out.push(b'"');
                    self.edits[i].repl = Repl::Bytes(out);
                }
                // A contained resource without its own patient shifts with its container.
                (None, true, Some(p)) => self.edits[i].repl = Repl::Shift { uid: p, dashed },
                // No patient known: the year is all that can be kept consistently.
                _ => {
                    let mut out = b"\"".to_vec();
                    out.extend_from_slice(
                        &actions::generalize(&orig[1..orig.len() - 1], dashed).unwrap_or_default(),
                    );
                    out.push(b'"');
                    self.edits[i].repl = Repl::Bytes(out);
                }
            }
        }
        if vanished || info.contained || self.edits.len() == edit_base {
            return Ok(());
        }
        // Label it.
        let label = SECURITY_LABEL;
        if let Some((ms, _)) = info.meta {
            if self.b.get(ms as usize) != Some(&b'{') {
                // `meta` that is not an object: nowhere valid to put the label.
                return Err(JsonError::Inconsistent);
            }
            let sec = self.peek_member_value_span(ms as usize, b"security")?;
            match sec {
                Some((ss, se)) if self.b[ss..se].windows(10).any(|w| w == b"\"REDACTED\"") => {}
                Some((ss, _)) if self.b.get(ss) == Some(&b'[') => {
                    let empty = self.b[ss + 1..]
                        .iter()
                        .find(|c| !is_ws(**c))
                        .is_some_and(|c| *c == b']');
                    let mut t = label.to_vec();
                    if !empty {
                        t.push(b',');
                    }
                    self.inserts.push(Insert {
                        at: u32_of(ss + 1),
                        text: t,
                    });
                }
                Some(_) => return Err(JsonError::Inconsistent),
                None => {
                    let empty = self.b[ms as usize + 1..]
                        .iter()
                        .find(|c| !is_ws(**c))
                        .is_some_and(|c| *c == b'}');
                    let mut t = b"\"security\":[".to_vec();
                    t.extend_from_slice(label);
                    t.push(b']');
                    if !empty {
                        t.push(b',');
                    }
                    self.inserts.push(Insert {
                        at: ms + 1,
                        text: t,
                    });
                }
            }
        } else {
            let at = info.rt_end.ok_or(JsonError::Inconsistent)?;
            let mut t = b",\"meta\":{\"security\":[".to_vec();
            t.extend_from_slice(label);
            t.extend_from_slice(b"]}");
            self.inserts.push(Insert { at, text: t });
        }
        Ok(())
    }

    /// The value span of direct member `key` of the object at `at`.
    pub(super) fn peek_member_value_span(
        &mut self,
        at: usize,
        key: &[u8],
    ) -> Result<Option<(usize, usize)>, JsonError> {
        let saved = self.pos;
        self.pos = at + 1;
        let r = (|| {
            self.ws();
            if self.peek() == Some(b'}') {
                return Ok(None);
            }
            loop {
                self.ws();
                let (ks, ke, _) = self.string()?;
                self.expect(b':')?;
                self.ws();
                let vs = self.pos;
                self.skip()?;
                if &self.b[ks..ke] == key {
                    return Ok(Some((vs, self.pos)));
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    _ => return Ok(None),
                }
            }
        })();
        self.pos = saved;
        r
    }
}

/// Key equality with the cheap tests first: FHIR members of one object often have names of
/// the same length (`code`, `unit`), and a `memcmp` call per pair showed in profiles.
#[inline(always)]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.first() == b.first() && a.last() == b.last() && a == b
}
