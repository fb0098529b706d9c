//! The typed extension that carries a body's [`Index`] from the first body-aware policy
//! that lexed it to the next ones on the same request or response (validation,
//! authorization, DLP), so a body is lexed once however many policies read it.
//!
//! The index is keyed to the exact bytes it was built from: [`LexedBody::obtain`] hands it
//! out only for those bytes (same buffer, or equal content), and builds a new one for any
//! other bytes — so a policy that changed the body (a DLP rewrite, a decoded
//! `Content-Encoding`) can never make a later reader use offsets of other bytes, even if it
//! forgot to call [`LexedBody::forget`] (which it still does, to free the old buffer early).

use std::sync::Arc;

use bytes::Bytes;

use super::Index;

/// A body and its index, in `http::Extensions`.
#[derive(Clone, Debug)]
pub struct LexedBody {
    bytes: Bytes,
    index: Arc<Index>,
}

impl LexedBody {
    /// The index of `bytes`: the one in `ext` if it was built from these bytes, else one
    /// built now (counted in `lexed`, one per body lexed) and stored in `ext` in place of
    /// any other. `None` only for a body too large to index (4 GiB or more).
    pub fn obtain(
        ext: &mut http::Extensions,
        bytes: &Bytes,
        lexed: &prometheus::IntCounter,
    ) -> Option<Arc<Index>> {
        if let Some(ix) = Self::get(ext, bytes) {
            return Some(ix);
        }
        let l = Self::build(bytes, lexed)?;
        let index = l.index.clone();
        l.attach(ext);
        Some(index)
    }

    /// The index in `ext`, if it is of exactly `bytes` (no building).
    pub fn get(ext: &http::Extensions, bytes: &[u8]) -> Option<Arc<Index>> {
        Self::matching(ext, bytes).map(|l| l.index)
    }

    /// The extension in `ext`, if its index is of exactly `bytes` (to carry it into work
    /// done off the async workers and back).
    pub fn matching(ext: &http::Extensions, bytes: &[u8]) -> Option<LexedBody> {
        ext.get::<LexedBody>().filter(|l| l.is_of(bytes)).cloned()
    }

    /// Lex `bytes` now (counted in `lexed`); store the result with [`LexedBody::attach`].
    /// `None` only for a body too large to index.
    pub fn build(bytes: &Bytes, lexed: &prometheus::IntCounter) -> Option<LexedBody> {
        let index = Arc::new(Index::build(bytes)?);
        lexed.inc();
        Some(LexedBody {
            bytes: bytes.clone(),
            index,
        })
    }

    /// `existing` if it is of `bytes`, else one built now (see [`LexedBody::build`]).
    pub fn reuse_or_build(
        existing: Option<LexedBody>,
        bytes: &Bytes,
        lexed: &prometheus::IntCounter,
    ) -> Option<LexedBody> {
        match existing {
            Some(l) if l.is_of(bytes) => Some(l),
            _ => Self::build(bytes, lexed),
        }
    }

    /// Put this index in `ext` (replacing any other) for the next reader of these bytes.
    pub fn attach(self, ext: &mut http::Extensions) {
        ext.insert(self);
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Is this the index of exactly `bytes`?
    pub fn is_of(&self, bytes: &[u8]) -> bool {
        self.bytes.len() == bytes.len()
            && (self.bytes.as_ptr() == bytes.as_ptr() || *self.bytes == *bytes)
    }

    /// The body changed: drop the index of the old bytes.
    pub fn forget(ext: &mut http::Extensions) {
        ext.remove::<LexedBody>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("t", "t").unwrap()
    }

    #[test]
    fn reused_for_the_same_bytes_rebuilt_for_any_other() {
        let c = counter();
        let mut ext = http::Extensions::new();
        let a = Bytes::from_static(br#"{"a":"x","b":[1,2]}"#);
        let ix = LexedBody::obtain(&mut ext, &a, &c).unwrap();
        assert_eq!(c.get(), 1);
        // The same buffer, and a copy of the same content: the one index.
        assert!(Arc::ptr_eq(
            &ix,
            &LexedBody::obtain(&mut ext, &a, &c).unwrap()
        ));
        let copy = Bytes::copy_from_slice(&a);
        assert!(Arc::ptr_eq(
            &ix,
            &LexedBody::obtain(&mut ext, &copy, &c).unwrap()
        ));
        assert_eq!(c.get(), 1);
        // Other bytes — same length with one byte changed, or another length — never get
        // the stale index, whether or not the changer forgot it.
        for other in [&br#"{"a":"y","b":[1,2]}"#[..], br#"{"a":"x","b":[1,2,3]}"#] {
            let other = Bytes::copy_from_slice(other);
            assert!(LexedBody::get(&ext, &other).is_none());
            let ix2 = LexedBody::obtain(&mut ext, &other, &c).unwrap();
            assert!(!Arc::ptr_eq(&ix, &ix2));
            assert_eq!(*ix2, Index::build(&other).unwrap());
            assert!(ix2.seek(&other).is_some());
            // The extension now holds the new bytes' index.
            assert!(LexedBody::get(&ext, &a).is_none());
            assert!(LexedBody::get(&ext, &other).is_some());
        }
        assert_eq!(c.get(), 3);
        LexedBody::forget(&mut ext);
        assert!(ext.get::<LexedBody>().is_none());
    }

    #[test]
    fn an_invalid_body_is_indexed_with_its_error_and_offers_no_lookups() {
        let c = counter();
        let mut ext = http::Extensions::new();
        let b = Bytes::from_static(br#"{"a":1,"a":2}"#);
        let ix = LexedBody::obtain(&mut ext, &b, &c).unwrap();
        assert_eq!(
            ix.error().map(|e| e.kind),
            Some(super::super::ErrorKind::Duplicate)
        );
        assert!(ix.seek(&b).is_none());
    }
}
