//! The admin HTTP endpoint (hyper 1): `/healthz`, `/readyz`, `/topology`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::state::Shared;

/// Serves admin requests until `stop` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "admin connection ended") },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if shared.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/topology" => {
            let body = topology_json(shared).to_string();
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The `/topology` document: the current view plus live session counts.
pub fn topology_json(shared: &Shared) -> serde_json::Value {
    let t = shared.topology.borrow().clone();
    let sessions = shared.sessions.snapshot();
    let members: Vec<_> = t
        .members
        .values()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "address": m.address,
                "role": m.role.as_str(),
                "routable": m.routable,
                "draining": m.draining,
                "lag_bytes": m.lag_bytes,
                "lag_seconds": m.lag_seconds,
                "sessions": sessions.get(&m.name).copied().unwrap_or(0),
                "note": m.note,
            })
        })
        .collect();
    serde_json::json!({
        "generation": t.generation,
        "primary": t.primary().map(|m| m.name.clone()),
        "members": members,
        "source_error": t.source_error,
        "source_stale_seconds": t.staleness(SystemTime::now()).map(|d| d.as_secs_f64()),
    })
}
