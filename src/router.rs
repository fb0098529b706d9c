//! Route selection: (listener, Host, canonical path, method) → route. The longest matching
//! prefix wins; for equal prefixes a route naming the host beats a host-less one. A miss is
//! a 404 that names nothing; a path that exists for other methods is a 405.

use std::sync::Arc;

use http::Method;

use crate::context::RouteInfo;
use crate::stack::RouteService;

/// What a request's access record needs of its route: the name and the metric children,
/// resolved once at start-up and shared behind one `Arc` (a request clones one pointer,
/// not one per handle).
pub struct RouteMetrics {
    /// The route's name, as the access log and the labels give it.
    pub name: Arc<str>,
    pub duration: prometheus::Histogram,
    pub bytes: prometheus::IntCounter,
    pub requests: crate::metrics::RequestCounters,
}

pub struct Route {
    pub info: Arc<RouteInfo>,
    pub metrics: Arc<RouteMetrics>,
    pub host: Option<String>,
    pub methods: Vec<Method>,
    pub service: RouteService,
}

pub enum Match<'a> {
    Found(&'a Route),
    /// Path and host match a route, the method does not; carries whether it is FHIR.
    MethodNotAllowed(bool),
    NotFound,
}

#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.info
                .path_prefix
                .len()
                .cmp(&a.info.path_prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        Router { routes }
    }

    /// `host` is lower-case without port; `path` is canonical.
    ///
    /// Only the most specific group (same prefix and host as the first match) is
    /// considered: a method refused there is a 405, never a fall-through to a shorter
    /// prefix with looser policies.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Match<'_> {
        let mut group: Option<(&str, Option<&str>, bool)> = None;
        for r in &self.routes {
            if r.host.as_deref().is_some_and(|h| h != host) {
                continue;
            }
            if !crate::path::under_prefix(path, &r.info.path_prefix) {
                continue;
            }
            match group {
                None => group = Some((&r.info.path_prefix, r.host.as_deref(), r.info.fhir)),
                Some((p, h, _)) if p != r.info.path_prefix || h != r.host.as_deref() => break,
                Some(_) => {}
            }
            if r.methods.contains(method) {
                return Match::Found(r);
            }
        }
        match group {
            Some((_, _, fhir)) => Match::MethodNotAllowed(fhir),
            None => Match::NotFound,
        }
    }

    /// Is any route on this listener a FHIR route? Used to pick the error format of
    /// requests refused before routing.
    pub fn all_fhir(&self) -> bool {
        !self.routes.is_empty() && self.routes.iter().all(|r| r.info.fhir)
    }
}
