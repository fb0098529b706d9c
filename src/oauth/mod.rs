//! OAuth 2.0 machinery the `auth` policy drives: talking to authorization servers on the
//! gateway's own behalf (token introspection, RFC 7662, with client authentication).
//! Decisions about a token's claims stay in `policy::auth`; this layer only fetches and
//! caches what the authorization server says.

pub mod introspect;
