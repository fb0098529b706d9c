//! The structural walk: values, objects (FHIR member typing, path rules, `where` filters, nested
//! resources) and arrays, recording edits as it goes.

use super::*;

impl<'a> Walk<'a> {
    pub(super) fn value(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        self.ws();
        match self.peek().ok_or(JsonError::Malformed)? {
            b'{' => self.object(ctx),
            b'[' => self.array(ctx),
            b'"' => self.string_value(ctx),
            _ => {
                let start = self.pos;
                self.scalar()?;
                // A number shaped like an SSN or a card (`"ssn": 123456789`): it cannot be
                // rewritten and stay a number, so the element goes.
                if ctx.scan && ctx.transform.is_none() {
                    let (remove, block) = self.hits_in(start, self.pos);
                    if block {
                        self.blocked = true;
                    }
                    if remove {
                        return Ok(true);
                    }
                }
                if let Some((act, rule, _)) = ctx.transform {
                    let tok = &self.b[start..self.pos];
                    if tok.first().is_some_and(u8::is_ascii_digit) || tok.first() == Some(&b'-') {
                        return Ok(self.transform_number(act, rule, start, self.pos));
                    }
                }
                Ok(false)
            }
        }
    }

    /// A number under a transform: `generalize` caps ages at 90; other transforms cannot
    /// keep a number's type, so the value goes.
    pub(super) fn transform_number(&mut self, act: Action, _rule: u16, s: usize, e: usize) -> bool {
        match act {
            Action::Generalize => {
                let tok = &self.b[s..e];
                if tok.iter().all(u8::is_ascii_digit) && tok.len() <= 3 {
                    if let Some(g) = actions::generalize(tok, true) {
                        if g != tok {
                            self.edit(s, e, Repl::Bytes(g));
                        }
                    }
                    false
                } else {
                    true
                }
            }
            Action::Report => false,
            _ => true,
        }
    }

    /// Carry out the rule that matched an element: count it, then block (the walk stops),
    /// redact (the value is skipped: `true` = remove it), report, or hand back the
    /// transform the value's leaves get.
    pub(super) fn apply_match(
        &mut self,
        (act, rule): (Action, u16),
    ) -> Result<(bool, Option<Transform>), JsonError> {
        self.report.add(self.eng.rule_label(rule), act);
        Ok(match act {
            Action::Block => {
                self.blocked = true;
                self.skip()?;
                (false, None)
            }
            Action::Redact => {
                self.skip()?;
                (true, None)
            }
            Action::Report => (false, None),
            a => (false, Some((a, rule, true))),
        })
    }

    /// Findings of the whole-body pass inside `[s, e)` of a member name or a number,
    /// where nothing can be rewritten in place: `(remove the element, block)`. Only
    /// detectors that look at any value (not the free-text-only ones) count.
    pub(super) fn hits_in(&mut self, s: usize, e: usize) -> (bool, bool) {
        let (mut remove, mut block) = (false, false);
        while self.hit_cur < self.hits.len() && self.hits[self.hit_cur].end <= s {
            self.hit_cur += 1;
        }
        let mut i = self.hit_cur;
        while i < self.hits.len() && self.hits[i].start < e {
            let h = self.hits[i];
            i += 1;
            if h.start < s || h.end > e {
                continue;
            }
            let Some(det) = self.eng.detectors.get(usize::from(h.detector)) else {
                continue;
            };
            if !det.applies_to(ValueKind::Structured("key")) {
                continue;
            }
            self.report.add(det.label, det.action);
            match det.action {
                Action::Block => block = true,
                Action::Report => {}
                _ => remove = true,
            }
        }
        (remove, block)
    }

    pub(super) fn edit(&mut self, s: usize, e: usize, repl: Repl) {
        self.edits.push(Edit {
            start: u32_of(s),
            end: u32_of(e),
            repl,
        });
    }

    pub(super) fn take_pool(&mut self) -> Vec<RuleState> {
        let mut v = self.state_pool.pop().unwrap_or_default();
        v.clear();
        v
    }

    pub(super) fn object(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let obj_start = self.pos;
        self.pos += 1;
        let rec_base = self.recs.len();
        let edit_base = self.edits.len();
        let insert_base = self.inserts.len();

        // A resource: find its type (usually the first member) and open its record.
        let mut ty = ctx.ty;
        let mut res_type_name: Option<Vec<u8>> = None;
        if ctx.resource {
            res_type_name = self.peek_member(obj_start, b"resourceType")?;
            if let Some(rt) = &res_type_name {
                ty = resource_type_of(rt);
            }
        }
        let is_res = ctx.resource && res_type_name.is_some();
        // Rule states that apply to this object's members.
        let mut states = self.take_pool();
        if is_res {
            if let Some(rt) = &res_type_name {
                self.eng.rules.start_states(rt, &mut states);
            }
            let uid = self.next_uid;
            self.next_uid += 1;
            self.res.push(ResInfo {
                uid,
                rt_end: None,
                meta: None,
                contained: ctx.contained,
                is_patient: res_type_name.as_deref() == Some(b"Patient"),
                id: None,
                patient_ref: None,
            });
        } else {
            states.extend_from_slice(ctx.states);
            // Rules rooted at this element's data type (`HumanName.family`).
            if let Some(t) = ty {
                if self.eng.rules.has_type_roots() {
                    self.eng
                        .rules
                        .start_states(crate::fhir::validate::type_name(t).as_bytes(), &mut states);
                }
            }
        }
        let res_depth = self.res.len();

        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.ws();
                let kstart = self.pos;
                let (ks, ke, kesc) = self.string()?;
                // Escaped member names are refused: FHIR never needs them, and comparing
                // them raw would let `"securit\u0079"` or a disguised duplicate through.
                if kesc {
                    return Err(JsonError::Malformed);
                }
                let key: &[u8] = &self.b[ks..ke];
                // PHI in a member name (`{"123-45-6789": …}`): the member goes.
                let (key_remove, key_block) = self.hits_in(ks, ke);
                if key_block {
                    self.blocked = true;
                }
                self.expect(b':')?;
                self.ws();
                let vstart = self.pos;
                let ext_sibling = key.first() == Some(&b'_');
                let info = match ty {
                    Some(t) if !ext_sibling => self.elems.get(t, key),
                    Some(t) => self.elems.get(t, &key[1..]),
                    None => None,
                };
                let name: &[u8] = match &info {
                    Some(i) => i.name.as_bytes(),
                    None if ext_sibling => &key[1..],
                    None => key,
                };
                let special_rt = is_res && key == b"resourceType";
                let special_meta = is_res && key == b"meta";
                // Rules: which complete here, which continue.
                let mut next = self.take_pool();
                let mut completes: Vec<(Action, u16)> = Vec::new();
                self.eng
                    .rules
                    .step(&states, name, key, &mut next, &mut |act, rule| {
                        completes.push((act, rule));
                    });
                let is_obj = self.peek() == Some(b'{');
                let is_arr = self.peek() == Some(b'[');
                // `where` conditions filter this element's object, or each item of its
                // array (then they travel down as item matches).
                let mut matched: Option<(Action, u16)> = None;
                let mut item_matches: Vec<(Action, u16)> = Vec::new();
                for (act, rule) in completes {
                    let conds = self.eng.rules.conds_last(rule);
                    let ok = if conds.is_empty() {
                        true
                    } else if is_obj {
                        self.conds_hold(vstart, conds)?
                    } else {
                        if is_arr {
                            item_matches.push((act, rule));
                        }
                        false
                    };
                    if ok {
                        matched = strongest(matched, (act, rule));
                    }
                }
                if is_obj {
                    self.filter_where(vstart, &mut next)?;
                }
                let kind = if ext_sibling {
                    Some(ValueKind::Complex)
                } else {
                    info.map(|i| i.kind)
                };
                let mut child = Ctx {
                    // `_x` holds an Element (id, extensions): typed, so an extension's `url`
                    // is a uri and not free text.
                    ty: if ext_sibling {
                        element_type()
                    } else {
                        info.map(|i| i.ty)
                    },
                    kind,
                    states: &next,
                    item_matches: &item_matches,
                    transform: ctx.transform,
                    // A known type name is not data; anything else in `resourceType` is.
                    scan: ctx.scan && !(special_rt && ty.is_some()),
                    resource: matches!(kind, Some(ValueKind::Resource)),
                    contained: name == b"contained",
                    patient_ref_holder: is_res
                        && matches!(key, b"subject" | b"patient" | b"beneficiary"),
                };
                let mut removed = false;
                if key_remove || self.blocked {
                    self.skip()?;
                    removed = true;
                    matched = None;
                }
                // On an `_x` extension sibling a transform has no value to work on, and its
                // extensions may carry the same fact (a birth time): it goes instead.
                let matched = matched.map(|(act, rule)| match act {
                    Action::Block | Action::Redact | Action::Report => (act, rule),
                    _ if ext_sibling => (Action::Redact, rule),
                    _ => (act, rule),
                });
                if let Some(m) = matched {
                    let (gone, transform) = self.apply_match(m)?;
                    removed |= gone;
                    if transform.is_some() {
                        child.transform = transform;
                        child.item_matches = &[];
                    }
                }
                // base64Binary (an Attachment's or a Binary's content, a signature…): decoded
                // and read as text.
                if !ext_sibling
                    && child.scan
                    && child.transform.is_none()
                    && self.pos == vstart
                    && self.peek() == Some(b'"')
                    && matches!(kind, Some(ValueKind::Structured("base64Binary")))
                {
                    let content = key == b"data"
                        && ty.is_some_and(|t| {
                            matches!(crate::fhir::validate::type_name(t), "Attachment" | "Binary")
                        });
                    removed |= self.base64_value(content)?;
                }
                if self.pos == vstart {
                    if child.patient_ref_holder && is_obj {
                        let r = self.peek_member(vstart, b"reference")?;
                        if let (Some(r), Some(res)) = (r, self.res.last_mut()) {
                            if res.patient_ref.is_none() {
                                res.patient_ref = Some(r);
                            }
                        }
                    }
                    removed = self.value(child)?;
                    if is_res && key == b"id" {
                        let v = &self.b[vstart..self.pos];
                        if v.len() >= 2 && v[0] == b'"' {
                            let id = v[1..v.len() - 1].to_vec();
                            if let Some(r) = self.res.last_mut() {
                                r.id = Some(id);
                            }
                        }
                    }
                }
                self.state_pool.push(next);
                let vend = self.pos;
                if special_rt {
                    if let Some(r) = self.res.last_mut() {
                        r.rt_end = Some(u32_of(vend));
                    }
                }
                if special_meta && !removed {
                    if let Some(r) = self.res.last_mut() {
                        r.meta = Some((u32_of(vstart), u32_of(vend)));
                    }
                }
                self.recs.push(Rec {
                    kstart: u32_of(kstart),
                    kend: u32_of(ke + 1),
                    vend: u32_of(vend),
                    removed,
                    required: info.is_some_and(|i| i.min >= 1) && !ext_sibling,
                    xhtml: matches!(kind, Some(ValueKind::Xhtml)),
                    primitive: matches!(
                        kind,
                        Some(ValueKind::Text | ValueKind::Xhtml | ValueKind::Structured(_))
                    ),
                    many: info.is_some_and(|i| i.many),
                });
                if self.blocked {
                    break;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Malformed),
                }
            }
        }
        self.state_pool.push(states);
        let obj_end = self.pos;
        if self.blocked {
            self.depth -= 1;
            return Ok(false);
        }
        if ty.is_some_and(|t| crate::fhir::validate::type_name(t) == "Extension") {
            self.extension_keeps_meaning(rec_base);
        }
        let vanished =
            self.close_members(rec_base, edit_base, insert_base, true, obj_start, obj_end)?;
        if is_res && self.res.len() == res_depth {
            self.close_resource(edit_base, vanished)?;
        }
        self.depth -= 1;
        Ok(vanished)
    }

    /// Apply `where` filters of the states/completions that came through this element to
    /// the object at `at`: states and matches whose conditions fail are dropped.
    pub(super) fn filter_where(
        &mut self,
        at: usize,
        next: &mut Vec<RuleState>,
    ) -> Result<(), JsonError> {
        let eng = self.eng;
        // Continuing states whose previous step had a `where`.
        let mut i = 0;
        while i < next.len() {
            let st = next[i];
            let conds = eng.rules.conds_before(st);
            if !conds.is_empty() && !self.conds_hold(at, conds)? {
                next.swap_remove(i);
                continue;
            }
            i += 1;
        }
        Ok(())
    }

    pub(super) fn conds_hold(
        &mut self,
        at: usize,
        conds: &[(String, String)],
    ) -> Result<bool, JsonError> {
        for (k, lit) in conds {
            match self.peek_member(at, k.as_bytes())? {
                Some(v) if v == lit.as_bytes() => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    pub(super) fn array(&mut self, ctx: Ctx<'_>) -> Result<bool, JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let arr_start = self.pos;
        self.pos += 1;
        let rec_base = self.recs.len();
        let edit_base = self.edits.len();
        let insert_base = self.inserts.len();
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.ws();
                let vstart = self.pos;
                let mut removed = false;
                if self.peek() == Some(b'{') && ctx.transform.is_none() {
                    // `where` on items: decided per item, from the item's own members.
                    let mut st = self.take_pool();
                    st.extend_from_slice(ctx.states);
                    self.filter_where(vstart, &mut st)?;
                    let mut item_ctx = Ctx {
                        states: &st,
                        item_matches: &[],
                        ..ctx
                    };
                    let mut matched: Option<(Action, u16)> = None;
                    for &(act, rule) in ctx.item_matches {
                        if self.conds_hold(vstart, self.eng.rules.conds_last(rule))? {
                            matched = strongest(matched, (act, rule));
                        }
                    }
                    if let Some(m) = matched {
                        let (gone, transform) = self.apply_match(m)?;
                        removed |= gone;
                        if transform.is_some() {
                            item_ctx.transform = transform;
                        }
                    }
                    if self.pos == vstart {
                        removed = self.value(item_ctx)?;
                    }
                    self.state_pool.push(st);
                } else {
                    removed |= self.value(ctx)?;
                }
                self.recs.push(Rec {
                    kstart: u32_of(vstart),
                    kend: u32_of(vstart),
                    vend: u32_of(self.pos),
                    removed,
                    required: false,
                    xhtml: false,
                    primitive: false,
                    many: false,
                });
                if self.blocked {
                    break;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(JsonError::Malformed),
                }
            }
        }
        let end = self.pos;
        self.depth -= 1;
        if self.blocked {
            return Ok(false);
        }
        self.close_members(rec_base, edit_base, insert_base, false, arr_start, end)
    }
}

/// The `Element` type (of every `_x` sibling), looked up once.
fn element_type() -> Option<FhirType> {
    static ELEMENT: std::sync::OnceLock<Option<FhirType>> = std::sync::OnceLock::new();
    *ELEMENT.get_or_init(|| crate::fhir::validate::complex_type_of(b"Element"))
}
