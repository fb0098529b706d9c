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
        if let Some(l) = ext.get::<LexedBody>() {
            if l.is_of(bytes) {
                return Some(l.index.clone());
            }
        }
        let index = Arc::new(Index::build(bytes)?);
        lexed.inc();
        ext.insert(LexedBody {
            bytes: bytes.clone(),
            index: index.clone(),
        });
        Some(index)
    }

    /// The index in `ext`, if it is of exactly `bytes` (no building).
    pub fn get(ext: &http::Extensions, bytes: &[u8]) -> Option<Arc<Index>> {
        ext.get::<LexedBody>()
            .filter(|l| l.is_of(bytes))
            .map(|l| l.index.clone())
    }

    /// The body changed: drop the index of the old bytes.
    pub fn forget(ext: &mut http::Extensions) {
        ext.remove::<LexedBody>();
    }

    fn is_of(&self, bytes: &[u8]) -> bool {
        self.bytes.len() == bytes.len()
            && (self.bytes.as_ptr() == bytes.as_ptr() || *self.bytes == *bytes)
    }
}
