//! The admin HTTP endpoint (hyper 1): `/metrics`, `/healthz`, `/readyz`, `/topology`, `/pools`,
//! and the operator controls `POST /drain/{member}`, `/undrain/{member}`,
//! `/pause`, `/resume`, `/switchover` (bearer token from `[admin] token_file` when set).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/switchover" {
                        return Ok::<_, Infallible>(switchover(shared, &req).await);
                    }
                    Ok::<_, Infallible>(handle(&shared, req))
                }
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

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST {
        return control(shared, &req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            shared.pools.observe(&shared.metrics);
            let body = shared.metrics.render(shared.topology.staleness());
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
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
        "/pools" => json(
            StatusCode::OK,
            serde_json::json!({ "pools": shared.pools.snapshot() }),
        ),
        "/peers" => json(StatusCode::OK, peers_json(shared)),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// This process's peer id and the peers it forwards cancel requests to (id → address).
fn peers_json(shared: &Shared) -> serde_json::Value {
    match &shared.peering {
        None => serde_json::json!({ "enabled": false }),
        Some(p) => {
            let peers: serde_json::Map<String, serde_json::Value> = p
                .table()
                .into_iter()
                .map(|(id, address)| (id.to_string(), address.into()))
                .collect();
            serde_json::json!({ "enabled": true, "id": p.id(), "peers": peers })
        }
    }
}

/// The refusal for a request without the configured bearer token, if any.
fn unauthorized(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let token = match shared.config.admin.token() {
        Ok(None) => return None,
        Ok(Some(t)) => t,
        Err(e) => {
            warn!(error = %e, "cannot read the admin token");
            let msg = "admin token unavailable\n";
            return Some(text(StatusCode::INTERNAL_SERVER_ERROR, msg));
        }
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
        _ => Some(text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token\n",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST` operator controls.
fn control(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(denied) = unauthorized(shared, req) {
        return denied;
    }
    let path = req.uri().path();
    let topology = &shared.topology;
    if let Some(member) = path.strip_prefix("/drain/") {
        if !topology.drain(member) {
            return text(StatusCode::NOT_FOUND, "no such member\n");
        }
        info!(member, "member drained by an operator");
    } else if let Some(member) = path.strip_prefix("/undrain/") {
        topology.undrain(member);
        info!(member, "member undrained by an operator");
    } else if path == "/pause" {
        shared.paused.send_replace(true);
        info!("new transactions paused by an operator");
    } else if path == "/resume" {
        shared.paused.send_replace(false);
        info!("new transactions resumed by an operator");
    } else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "drained": topology.drained(),
            "paused": *shared.paused.borrow(),
        }),
    )
}

/// `POST /switchover[?candidate=pg-1]`: a switchover led by pgsteer; answers when it is over.
async fn switchover(shared: Arc<Shared>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(denied) = unauthorized(&shared, req) {
        return denied;
    }
    let candidate = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "candidate")
            .map(|(_, v)| v.to_owned())
    });
    info!(candidate = ?candidate, "switchover asked for");
    // Its own task: a client that hangs up (or a timeout shorter than the switchover) must
    // not cancel it half-way, with transactions held at a closed gate.
    let task = tokio::spawn(async move { crate::switchover::run(&shared, candidate).await });
    let Ok((status, report)) = task.await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the switchover task failed\n",
        );
    };
    json(
        status,
        serde_json::to_value(report).unwrap_or(serde_json::Value::Null),
    )
}

/// The `/topology` document: the current view plus live session counts.
pub fn topology_json(shared: &Shared) -> serde_json::Value {
    let t = shared.topology.current().clone();
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
                "probe_seconds": m.probe_seconds,
                "probed": m.probed,
                "fence": m.fence,
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
        "pending_change": t.pending_change,
        "source_stale_seconds": shared.topology.staleness().map(|d| d.as_secs_f64()),
        "paused": *shared.paused.borrow(),
    })
}
