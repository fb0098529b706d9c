//! Ward: a hardened HL7/FHIR gateway.
//!
//! [`Gateway::start`] (`gateway/`) boots every listener, the admin listener and the
//! upstream health probes from a validated [`config::Config`]; tests boot it in-process on
//! `127.0.0.1:0` and read the bound addresses back. See `stack.rs` for the order of every
//! step a request takes.
//!
//! # How the modules depend on each other
//!
//! Each layer imports only from the layers below it (and its own); nothing reaches up.
//! `tests/layering.rs` checks this on every CI run, and that the graph has no cycle.
//!
//! | layer | modules | what lives there |
//! |---|---|---|
//! | 1 leaves | `context`, `error`, `calendar`, `service`, `shutdown`, `metrics`, `body`, `config::primitives`, `tls`, `identity`, `path`, `logwriter`, `accesslog` | typed request extensions and claims, the one error→response mapping, clocks, tower plumbing, settings value types, the log's writer and the access line |
//! | 2 engines | `fhir`, `hl7v2`, `dlp`, `ratelimit`, `respond`, `audit`, `proxy`, `conn_guard`, `oauth` | machinery the policies drive |
//! | 3 policies | `policy::*` | one decision each; never imports another policy |
//! | 4 composition | `stack`, `router` | which layers a route gets, which route a request takes |
//! | 5 servers | `server`, `mllp`, `admin` | sockets, TLS handshakes, drains |
//! | 6 gateway, CLI | `gateway`, `reload`, `watch`, `config`, `demo`, `doctor`, `init`, `main` | start-up, hot reload, the config file format, the CLI's tools |
//!
//! `config/mod.rs` gathers every layer's config type into one file format, so it sits at
//! the top: only the composition layer and the gateway import it; everything else takes
//! `config::primitives` or its own config type.

#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod audit;
pub mod body;
pub mod breaker;
pub mod calendar;
pub mod config;
pub mod conn_guard;
pub mod context;
pub mod demo;
pub mod dlp;
pub mod doctor;
pub mod error;
pub mod fhir;
pub mod gateway;
pub mod hl7v2;
pub mod identity;
pub mod init;
pub mod json;
pub mod logwriter;
pub mod metrics;
pub mod mllp;
pub mod oauth;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod respond;
pub mod router;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stack;
pub mod tls;
pub mod watch;

pub use body::{empty_body, Body, BoxError};
pub use gateway::{run, run_with, Gateway};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
