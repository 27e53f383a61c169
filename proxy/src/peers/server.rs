//! The peer port: cancel requests forwarded by other pgsteer processes. A request that is not
//! a well-formed, fresh, never-seen request with a valid HMAC, or that names another owner
//! or an unknown key, is dropped silently and counted in `pgsteer_peer_requests_total`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::wire::{self, HEADER_LEN, MAC_LEN};
use crate::state::Shared;

/// Peer connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Bound on one peer connection (TLS handshake and request).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the peer port until `stop` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "peer port: accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(peer = %from, "peer port busy: connection closed");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = one(&shared, tcp).await;
            debug!(peer = %from, result, "peer request");
            shared
                .metrics
                .peer_requests
                .with_label_values(&[result])
                .inc();
            drop(permit);
        });
    }
}

/// Serves one connection; returns the `result` label. Receiving the request (TLS handshake
/// included) is bounded by [`REQUEST_TIMEOUT`]; the cancel to the backend by its own timeout.
async fn one(shared: &Shared, tcp: TcpStream) -> &'static str {
    let msg = match tokio::time::timeout(REQUEST_TIMEOUT, receive(shared, tcp)).await {
        Ok(Ok(msg)) => msg,
        Ok(Err(refused)) => return refused,
        Err(_) => return "timeout",
    };
    let Some(peering) = &shared.peering else {
        return "not_ours";
    };
    let cancel = match peering.check(&msg) {
        Ok(c) => c,
        Err(refusal) => return refusal.as_str(),
    };
    if cancel.to != peering.id() {
        return "not_ours";
    }
    match shared.cancels.lookup(cancel.pid, &cancel.key) {
        Some(target) => {
            crate::cancel_forward::to_backend(shared, &target).await;
            "forwarded"
        }
        None => "unknown",
    }
}

/// Reads one request, through TLS when the peer port is mutual TLS; `Err` is the `result`
/// label of a connection that did not deliver one.
async fn receive(shared: &Shared, tcp: TcpStream) -> Result<Vec<u8>, &'static str> {
    let msg = match shared.tls.client.as_ref().and_then(|c| c.peer()) {
        Some(configs) if shared.config.peer_ca().is_some() => {
            match configs.acceptor().accept(tcp).await {
                Ok(mut s) => read_request(&mut s).await,
                Err(_) => return Err("tls_refused"),
            }
        }
        _ if shared.config.peer_ca().is_some() => return Err("tls_refused"),
        _ => {
            let mut tcp = tcp;
            read_request(&mut tcp).await
        }
    };
    msg.ok_or(wire::Refusal::Malformed.as_str())
}

/// Reads one request: the header, then exactly the key and HMAC it announces.
async fn read_request(s: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    s.read_exact(&mut header).await.ok()?;
    let len = wire::key_len(&header)?;
    let mut msg = header.to_vec();
    msg.resize(HEADER_LEN + len + MAC_LEN, 0);
    s.read_exact(&mut msg[HEADER_LEN..]).await.ok()?;
    Some(msg)
}
