//! Reading `/cluster` over HTTP/1.1 (hyper's client connection, no pool: Patroni's REST API
//! answers in HTTP/1.0 and closes), trying the endpoints in order, the last good one first.

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

/// One configured endpoint: where to connect and what to ask, or why it is unusable.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    url: String,
    target: Result<Target, String>,
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
            target: parse_endpoint(url),
        }
    }
}

fn parse_endpoint(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("invalid endpoint URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(format!("scheme {other} is not supported (http only)")),
        None => return Err("the endpoint needs http:// in front".to_owned()),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "the endpoint URL has no host".to_owned())?;
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
async fn fetch(target: &Target) -> Result<ClusterDoc, String> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
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
        .map_err(|e| format!("building the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(200).collect();
        return Err(format!("HTTP {status}: {text}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("invalid /cluster document: {e}"))
}

/// Tries the endpoints, the last one that answered first, each bounded by `timeout`.
pub(super) async fn poll_round(
    endpoints: &[Endpoint],
    preferred: &mut usize,
    timeout: Duration,
) -> Result<ClusterDoc, String> {
    let first = (*preferred).min(endpoints.len().saturating_sub(1));
    let order = std::iter::once(first).chain((0..endpoints.len()).filter(|&i| i != first));
    let mut errors = Vec::new();
    for i in order {
        let Some(endpoint) = endpoints.get(i) else {
            continue;
        };
        let result = match &endpoint.target {
            Err(e) => Err(e.clone()),
            Ok(target) => match tokio::time::timeout(timeout, fetch(target)).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {}ms", timeout.as_millis())),
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
                errors.push(format!("{}: {e}", endpoint.url));
            }
        }
    }
    if errors.is_empty() {
        return Err("no patroni endpoints configured".to_owned());
    }
    Err(format!(
        "no patroni endpoint answered: {}",
        errors.join("; ")
    ))
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
        assert!(
            parse_endpoint("https://pg-0:8008")
                .unwrap_err()
                .contains("http only")
        );
        assert!(parse_endpoint("pg-0:8008").is_err());
    }
}
