//! Mirror of `ward::hl7v2` limited to the ER7 parser, validator and ACK builder. Paths are
//! relative to this directory (fuzz/src/hl7v2/).
//!
//! `src/hl7v2/mod.rs` itself is not included: it also declares `mllp` (async MLLP framing on
//! tokio), which would make this crate depend on tokio. The re-exports below repeat the parser
//! part of that file's public surface; the three files only refer to each other via `super::`.

#[path = "../../../src/hl7v2/ack.rs"]
pub mod ack;
#[path = "../../../src/hl7v2/er7/mod.rs"]
pub mod er7;
#[path = "../../../src/hl7v2/validate/mod.rs"]
pub mod validate;

pub use ack::{build_ack, build_rejection_ack, parse_ack, AckCode};
pub use er7::{
    check_escapes, header, unescape, Charset, Component, Delimiters, EscapeError, Field,
    HeaderInfo, Message, ParseError, ParseErrorKind, ParseOptions, Repetition, Segment,
};
pub use validate::{validate, ErrorLoc, ProcessingId, Rejection, Rules, Validated};
