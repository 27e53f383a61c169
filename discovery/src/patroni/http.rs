//! Reading `/cluster` over HTTP/1.1 (hyper's client connection, no pool: Patroni's REST API
//! answers in HTTP/1.0 and closes), trying the endpoints in order, the last good one first.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::cluster_doc::ClusterDoc;

/// Largest `/cluster` document accepted.
const MAX_BODY: usize = 1 << 20;

/// Why a configured endpoint URL cannot be asked.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("invalid endpoint URL: {0}")]
    Url(#[source] http::uri::InvalidUri),
    /// A scheme other than `http`.
    #[error("scheme {0} is not supported (http only)")]
    Scheme(String),
    /// No scheme at all (`pg-0:8008`).
    #[error("the endpoint needs http:// in front")]
    NoScheme,
    /// No host.
    #[error("the endpoint URL has no host")]
    NoHost,
}

/// Why one endpoint gave no `/cluster` document.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The endpoint URL is unusable (reported at every poll, like an endpoint that is down).
    #[error(transparent)]
    Endpoint(Arc<EndpointError>),
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP/1 handshake failed.
    #[error("http handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request could not be built (a host or path that is not a valid header or URI).
    #[error("building the request: {0}")]
    BuildRequest(#[source] http::Error),
    /// Sending the request or reading the response head failed.
    #[error("request: {0}")]
    Request(#[source] hyper::Error),
    /// Reading the body failed, or it exceeded the size limit.
    #[error("reading the response: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An answer other than 2xx; `text` is the start of its body.
    #[error("HTTP {status}: {text}")]
    Status {
        /// The status.
        status: hyper::StatusCode,
        /// Up to 200 characters of the body.
        text: String,
    },
    /// The body is not a `/cluster` document.
    #[error("invalid /cluster document: {0}")]
    Document(#[source] serde_json::Error),
    /// No answer within the request timeout.
    #[error("timed out after {}ms", .0.as_millis())]
    Timeout(Duration),
}

/// Why a poll round gave no `/cluster` document.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The endpoint list is empty.
    #[error("no patroni endpoints configured")]
    NoEndpoints,
    /// Every endpoint failed: each URL with its error, in the order tried.
    #[error("no patroni endpoint answered: {}", list(.0))]
    NoAnswer(Vec<(String, FetchError)>),
}

fn list(failures: &[(String, FetchError)]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|(url, e)| format!("{url}: {e}"))
        .collect();
    parts.join("; ")
}

/// One configured endpoint: where to connect and what to ask, or why it is unusable.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    url: String,
    target: Result<Target, Arc<EndpointError>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    authority: String,
    /// Request path: the URL's path with `/cluster` appended.
    path: String,
}

impl Endpoint {
    pub(super) fn new(url: &str) -> Endpoint {
        Endpoint {
            url: url.to_owned(),
            target: parse_endpoint(url).map_err(Arc::new),
        }
    }
}

fn parse_endpoint(url: &str) -> Result<Target, EndpointError> {
    let uri: hyper::Uri = url.trim().parse().map_err(EndpointError::Url)?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(EndpointError::Scheme(other.to_owned())),
        None => return Err(EndpointError::NoScheme),
    }
    let authority = uri.authority().ok_or(EndpointError::NoHost)?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let base = uri.path().trim_end_matches('/');
    Ok(Target {
        host,
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_owned(),
        path: format!("{base}/cluster"),
    })
}

/// `GET /cluster` on one endpoint (not bounded here: the caller applies the timeout).
async fn fetch(target: &Target) -> Result<ClusterDoc, FetchError> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(FetchError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(FetchError::Handshake)?;
    let _driver = AbortOnDropHandle::new(tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "patroni connection ended");
        }
    }));
    let request = hyper::Request::get(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(USER_AGENT, "pgsteer")
        .header(ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(FetchError::BuildRequest)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(FetchError::Request)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(FetchError::Body)?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(200).collect();
        return Err(FetchError::Status { status, text });
    }
    serde_json::from_slice(&body).map_err(FetchError::Document)
}

/// Tries the endpoints, the last one that answered first, each bounded by `timeout`.
pub(super) async fn poll_round(
    endpoints: &[Endpoint],
    preferred: &mut usize,
    timeout: Duration,
) -> Result<ClusterDoc, PollError> {
    let first = (*preferred).min(endpoints.len().saturating_sub(1));
    let order = std::iter::once(first).chain((0..endpoints.len()).filter(|&i| i != first));
    let mut errors = Vec::new();
    for i in order {
        let Some(endpoint) = endpoints.get(i) else {
            continue;
        };
        let result = match &endpoint.target {
            Err(e) => Err(FetchError::Endpoint(Arc::clone(e))),
            Ok(target) => match tokio::time::timeout(timeout, fetch(target)).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout(timeout)),
            },
        };
        match result {
            Ok(doc) => {
                if i != *preferred {
                    debug!(endpoint = %endpoint.url, "patroni endpoint answered; asking it first from now on");
                }
                *preferred = i;
                return Ok(doc);
            }
            Err(e) => {
                debug!(endpoint = %endpoint.url, error = %e, "patroni endpoint failed");
                errors.push((endpoint.url.clone(), e));
            }
        }
    }
    if errors.is_empty() {
        return Err(PollError::NoEndpoints);
    }
    Err(PollError::NoAnswer(errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_urls_with_an_optional_path() {
        let t = parse_endpoint("http://pg-0:8008").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("pg-0", 8008, "/cluster")
        );
        let t = parse_endpoint("http://[::1]:8008/patroni/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("::1", "/patroni/cluster")
        );
        assert_eq!(parse_endpoint("http://pg-0").unwrap().port, 80);
        let https = parse_endpoint("https://pg-0:8008").unwrap_err();
        assert!(https.to_string().contains("http only"), "{https}");
        assert!(parse_endpoint("pg-0:8008").is_err());
    }
}
