//! Asking Patroni to switch over: `POST /switchover` on its REST API.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, info};

/// Bytes of Patroni's answer kept.
const MAX_BODY: usize = 64 * 1024;

/// Asks the first of `endpoints` that answers to switch from `leader` to `candidate` (any
/// healthy replica when `None`); Patroni answers once the switch is done or failed.
pub async fn switchover(
    endpoints: &[String],
    leader: &str,
    candidate: Option<&str>,
    auth: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let mut body = serde_json::json!({ "leader": leader });
    if let Some(c) = candidate {
        body["candidate"] = c.into();
    }
    let body = body.to_string();
    let mut errors = Vec::new();
    for url in endpoints {
        match tokio::time::timeout(timeout, post(url, &body, auth)).await {
            Ok(Ok((status, text))) if status.is_success() => {
                info!(endpoint = %url, %status, answer = %text, "patroni switched over");
                return Ok(text);
            }
            // Patroni answered: it decided; another member would only say the same.
            Ok(Ok((status, text))) => return Err(format!("patroni at {url}: {status}: {text}")),
            Ok(Err(e)) => {
                debug!(endpoint = %url, error = %e, "patroni endpoint failed");
                errors.push(format!("{url}: {e}"));
            }
            Err(_) => errors.push(format!("{url}: no answer within {timeout:?}")),
        }
    }
    Err(format!(
        "no patroni endpoint answered: {}",
        errors.join("; ")
    ))
}

async fn post(
    url: &str,
    body: &str,
    auth: Option<&str>,
) -> Result<(hyper::StatusCode, String), String> {
    let uri: hyper::Uri = url.trim().parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// endpoints are supported".into());
    }
    let authority = uri.authority().ok_or("no host in the URL")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "patroni connection ended");
        }
    });
    let path = format!("{}/switchover", uri.path().trim_end_matches('/'));
    let mut request = hyper::Request::post(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "pgsteer")
        .header(CONTENT_TYPE, "application/json");
    if let Some(auth) = auth {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(auth);
        request = request.header(AUTHORIZATION, format!("Basic {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
        let text: String = String::from_utf8_lossy(&body)
            .trim()
            .chars()
            .take(300)
            .collect();
        Ok((status, text))
    }
    .await;
    driver.abort();
    result
}
