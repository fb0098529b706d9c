//! One bounded GET of a JSON document for `ward init` (the EHR's `/metadata`, an IdP's
//! discovery document), through the same hyper + rustls stack the gateway uses upstream.
//!
//! https needs the CA bundle that signed the server's certificate (as an https upstream
//! does in ward.yaml): a generator that trusted any certificate would write a config from
//! whatever an impostor answered. Redirects are not followed, the body is capped and the
//! whole exchange has a deadline, so a hostile or stuck server cannot hang `ward init`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Far more than any CapabilityStatement or discovery document.
const MAX_BYTES: usize = 16 * 1024 * 1024;
const DEADLINE: Duration = Duration::from_secs(30);

/// GET `url` and parse the answer as JSON.
pub async fn get_json(url: &str, ca: Option<&Path>) -> Result<serde_json::Value, String> {
    let uri: Uri = url.parse().map_err(|_| format!("{url}: not a valid URL"))?;
    if uri.host().is_none() {
        return Err(format!("{url}: the URL has no host"));
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let body = match uri.scheme_str() {
        Some("https") => {
            let ca = ca.ok_or_else(|| {
                format!("{url} is https: give the CA bundle (PEM) that signed its certificate")
            })?;
            let tls = crate::tls::upstream_client_config(ca, None)?;
            let conn = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .wrap_connector(http);
            get(Client::builder(TokioExecutor::new()).build(conn), uri, url).await?
        }
        Some("http") => get(Client::builder(TokioExecutor::new()).build(http), uri, url).await?,
        _ => return Err(format!("{url}: only http:// and https:// URLs")),
    };
    serde_json::from_slice(&body).map_err(|_| format!("{url}: the answer is not JSON"))
}

async fn get<C>(client: Client<C, Empty<Bytes>>, uri: Uri, url: &str) -> Result<Bytes, String>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let req = Request::get(uri)
        .header(
            http::header::ACCEPT,
            "application/fhir+json, application/json",
        )
        .body(Empty::new())
        .map_err(|_| format!("{url}: not a valid request target"))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            // The source chain says why (refused, TLS: unknown issuer, …).
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            format!("{url}: {why}")
        })?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered HTTP {}", resp.status().as_u16()));
        }
        Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|_| format!("{url}: the answer is cut off or larger than {MAX_BYTES} bytes"))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| format!("{url}: no complete answer within {}s", DEADLINE.as_secs()))?
}
