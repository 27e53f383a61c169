//! Serving a CancelRequest: to the backend its key names, or to the peer that owns the key.
//! Apart from `cancel.rs` (keys and their registry), which the shared state holds.

use std::net::IpAddr;

use pgsteer_protocol::startup::CancelRequest;
use tracing::{debug, warn};

use crate::cancel::{CancelTarget, forward};
use crate::state::Shared;

/// Sends the backend's CancelRequest for `target`, logging a failure.
pub async fn to_backend(shared: &Shared, target: &CancelTarget) {
    let timeout = shared.config.routing.connect_timeout;
    match forward(target, &shared.tls.server, timeout).await {
        Ok(()) => debug!(member = %target.member, "cancel request forwarded"),
        Err(e) => {
            warn!(member = %target.member, error = %e, "could not forward a cancel request")
        }
    }
}

/// Serves a client's CancelRequest from `source`: forwards it to the backend its key names,
/// or, when the key is another peer's, to that peer; drops it if the key is unknown (as
/// Postgres does). Counted by result either way.
pub async fn serve_request(shared: &Shared, request: CancelRequest, source: IpAddr) {
    let registry = &shared.cancels;
    let result = match registry.lookup(request.pid, &request.key) {
        Some(target) => {
            to_backend(shared, &target).await;
            "forwarded"
        }
        None => match &shared.peering {
            Some(peering) => {
                let tls = shared.tls.client.as_ref().and_then(|c| c.peer());
                let timeout = shared.config.routing.connect_timeout;
                let keys = registry.keys();
                peering
                    .forward(keys, request.pid, &request.key, source, tls, timeout)
                    .await
            }
            None => "unknown",
        },
    };
    if result == "unknown" {
        debug!("cancel request with an unknown key dropped");
    }
    shared
        .metrics
        .cancel_requests
        .with_label_values(&[result])
        .inc();
}
