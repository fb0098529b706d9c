//! A small per-thread memo of `element_of` (type, member name → element definition).
//!
//! Why: the walker asks the schema about every member of every FHIR object. The schema's
//! index is large and its answers take several dependent loads (index slot, member, element,
//! member type), so on a 1 MB Bundle those lookups were the walker's largest single cost
//! (12-16 % of a scan), nearly all of it cache misses. A FHIR body repeats the same few
//! hundred (type, member) pairs, which fit in this 4-way set-associative table of a few
//! kilobytes. The answers are pure functions of the embedded schema, so the memo is kept per
//! thread across bodies (no allocation per request) and can never be stale.

use crate::fhir::validate::{element_of, ElementInfo, FhirType};

/// Member names longer than this are looked up directly (FHIR's longest common names fit).
const KEY_MAX: usize = 32;
const SETS: usize = 128;
const WAYS: usize = 4;

/// What identifies one remembered answer: `words` (the first and last eight bytes, see
/// [`words`]) and the length determine names of up to 16 bytes exactly; longer ones are
/// also compared in full (`Entry::key`). Tags are kept apart from the answers so the four
/// ways of a set share two cache lines.
#[derive(Clone, Copy)]
struct Tag {
    ty: Option<FhirType>,
    len: u8,
    words: (u64, u64),
}

const EMPTY_TAG: Tag = Tag {
    ty: None,
    len: 0,
    words: (0, 0),
};

#[derive(Clone, Copy)]
struct Entry {
    key: [u8; KEY_MAX],
    info: Option<ElementInfo>,
}

const EMPTY_ENTRY: Entry = Entry {
    key: [0; KEY_MAX],
    info: None,
};

pub(super) struct ElemMemo {
    tags: Vec<Tag>,
    entries: Vec<Entry>,
    /// Per set: the way the next miss replaces (round robin).
    victim: Vec<u8>,
}

impl ElemMemo {
    fn new() -> ElemMemo {
        ElemMemo {
            tags: vec![EMPTY_TAG; SETS * WAYS],
            entries: vec![EMPTY_ENTRY; SETS * WAYS],
            victim: vec![0; SETS],
        }
    }

    /// `element_of(t, key)`, answered from the memo when possible.
    #[inline]
    pub(super) fn get(&mut self, t: FhirType, key: &[u8]) -> Option<ElementInfo> {
        if key.len() > KEY_MAX || key.is_empty() {
            return element_of(t, key);
        }
        let n = key.len();
        let w = words(key);
        let set = set_of(w, n);
        let base = set * WAYS;
        let ways = self.tags.get(base..base + WAYS).unwrap_or(&[]);
        for (i, tag) in ways.iter().enumerate() {
            if tag.ty == Some(t) && tag.words == w && usize::from(tag.len) == n {
                let Some(e) = self.entries.get(base + i) else {
                    break;
                };
                if n <= 16 || e.key.get(..n) == Some(key) {
                    return e.info;
                }
            }
        }
        let info = element_of(t, key);
        let way = self.victim.get(set).copied().unwrap_or(0);
        if let Some(v) = self.victim.get_mut(set) {
            *v = (way + 1) % WAYS as u8;
        }
        let i = base + usize::from(way);
        if let (Some(tag), Some(e)) = (self.tags.get_mut(i), self.entries.get_mut(i)) {
            *tag = Tag {
                ty: Some(t),
                len: n as u8,
                words: w,
            };
            if n > 16 {
                e.key[..n].copy_from_slice(key);
            }
            e.info = info;
        }
        info
    }
}

/// The first and the last (up to) eight bytes of a name as integers, read with fixed-size
/// loads (a variable-length copy here compiled to two `memcpy` calls per lookup). Together
/// with the length they determine names of up to 16 bytes.
#[inline(always)]
fn words(key: &[u8]) -> (u64, u64) {
    let n = key.len();
    if n >= 8 {
        let first = key.first_chunk::<8>().copied().unwrap_or_default();
        let last = key.last_chunk::<8>().copied().unwrap_or_default();
        (u64::from_le_bytes(first), u64::from_le_bytes(last))
    } else {
        let mut a = 0u64;
        for (i, &c) in key.iter().enumerate() {
            a |= u64::from(c) << (8 * i);
        }
        (a, 0)
    }
}

#[inline(always)]
fn set_of((a, b): (u64, u64), n: usize) -> usize {
    let h = (a ^ b.rotate_left(23) ^ ((n as u64) << 57)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 57) as usize % SETS
}

thread_local! {
    static MEMO: std::cell::RefCell<Option<Box<ElemMemo>>> = const { std::cell::RefCell::new(None) };
}

/// The thread's memo, lent to one walk and given back when the handle drops.
pub(super) struct MemoHandle(Option<Box<ElemMemo>>);

impl MemoHandle {
    pub(super) fn take() -> MemoHandle {
        let m = MEMO
            .try_with(|m| m.try_borrow_mut().ok().and_then(|mut g| g.take()))
            .ok()
            .flatten();
        MemoHandle(Some(m.unwrap_or_else(|| Box::new(ElemMemo::new()))))
    }

    #[inline]
    pub(super) fn get(&mut self, t: FhirType, key: &[u8]) -> Option<ElementInfo> {
        match &mut self.0 {
            Some(m) => m.get(t, key),
            None => element_of(t, key),
        }
    }
}

impl Drop for MemoHandle {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            let _ = MEMO.try_with(|cell| {
                if let Ok(mut g) = cell.try_borrow_mut() {
                    *g = Some(m);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validate::{complex_type_of, resource_type_of};

    /// The memo answers exactly what `element_of` answers, for every pair asked in any
    /// order, including evictions (more pairs than the table holds) and names that are
    /// not members.
    #[test]
    fn memo_equals_element_of() {
        let types: Vec<FhirType> = [
            "Patient",
            "Observation",
            "Bundle",
            "Encounter",
            "Condition",
            "MedicationRequest",
        ]
        .iter()
        .filter_map(|n| resource_type_of(n.as_bytes()))
        .chain(
            [
                "HumanName",
                "Address",
                "Identifier",
                "Coding",
                "CodeableConcept",
                "Reference",
                "Extension",
                "Period",
                "Quantity",
                "Element",
            ]
            .iter()
            .filter_map(|n| complex_type_of(n.as_bytes())),
        )
        .collect();
        assert!(types.len() >= 15);
        let mut keys: Vec<Vec<u8>> = [
            "id",
            "meta",
            "text",
            "name",
            "family",
            "given",
            "use",
            "system",
            "value",
            "code",
            "display",
            "coding",
            "subject",
            "reference",
            "valueQuantity",
            "valueString",
            "deceasedBoolean",
            "birthDate",
            "address",
            "line",
            "city",
            "postalCode",
            "extension",
            "url",
            "valueCode",
            "status",
            "note",
            "effectiveDateTime",
            "identifier",
            "type",
            "entry",
            "resource",
            "fullUrl",
            "period",
            "start",
            "end",
            "unit",
            "telecom",
            "",
            "x",
            "resourceType",
            "contained",
            "valueCodeableConcept",
            "_birthDate",
        ]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
        let real = keys.len();
        // Names near KEY_MAX and beyond it, and generated ones.
        keys.push(vec![b'a'; KEY_MAX]);
        keys.push(vec![b'a'; KEY_MAX + 1]);
        for i in 0..300u32 {
            keys.push(format!("k{i}x{}", i * 7919 % 1000).into_bytes());
        }
        let mut h = MemoHandle::take();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let t = types[(seed as usize) % types.len()];
            // Mostly real names (hits), sometimes generated ones (evictions).
            let k = if round % 5 == 0 {
                &keys[(seed >> 20) as usize % keys.len()]
            } else {
                &keys[(seed >> 20) as usize % real]
            };
            let want = element_of(t, k);
            let got = h.get(t, k);
            assert_eq!(
                format!("{want:?}"),
                format!("{got:?}"),
                "{:?}",
                String::from_utf8_lossy(k)
            );
        }
    }
}
