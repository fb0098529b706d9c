//! The body type inside the gateway, both directions. A leaf.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type inside the gateway, both directions.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn empty_body() -> Body {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync()
}
