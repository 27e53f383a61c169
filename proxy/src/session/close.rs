//! Closing a session: both sides shut down cleanly after the relay stopped, the client told
//! why when it can be said at a message boundary. Every write here is bounded in time: the
//! client may be gone or stalled.

use std::time::Duration;

use bytes::BytesMut;
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::sqlstate::SqlState;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::relay::{End, EndKind};
use super::stream::Stream;
use crate::drain::Closing;
use crate::metrics::Metrics;

/// How long a closing write may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes a FATAL error and closes, bounded in time.
pub async fn send_fatal<S: AsyncWrite + Unpin>(client: &mut S, code: SqlState, message: &str) {
    let mut buf = BytesMut::with_capacity(64 + message.len());
    encode::error_response(&mut buf, &ErrorInfo::fatal(code, message));
    let write = async {
        client.write_all(&buf).await?;
        client.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, write).await;
}

/// Closes a connection (TLS: close_notify, flushing what is buffered), bounded in time.
pub async fn shut(s: &mut Stream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.shutdown()).await;
}

/// Closes both sides after the relay stopped on `member`.
pub async fn close(
    metrics: &Metrics,
    client: &mut Stream,
    server: &mut Stream,
    member: &str,
    end: End,
) {
    if end.client_at_boundary && !end.client_terminated {
        let mut x = BytesMut::with_capacity(5);
        encode::terminate(&mut x);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, server.write_all(&x)).await;
    }
    shut(server).await;
    match end.kind {
        EndKind::ClientClosed => debug!("client closed the session"),
        EndKind::IdleInTransaction => shut(client).await,
        EndKind::ServerClosed if end.client_terminated || end.last_server_tag == b'E' => {
            debug!("server closed the session");
            shut(client).await;
        }
        EndKind::ServerClosed => {
            warn!("server closed the connection unexpectedly");
            if end.server_at_boundary {
                let msg = format!("pgsteer: the connection to {member} was lost");
                send_fatal(client, SqlState::CONNECTION_FAILURE, &msg).await;
            }
        }
        EndKind::Drained | EndKind::Terminated => {
            let Some(closing) = end.closing else {
                return shut(client).await;
            };
            drained(metrics, client, &closing, end.server_at_boundary, end.tx).await;
        }
    }
}

/// Counts, logs and tells the client about a drain.
async fn drained(
    metrics: &Metrics,
    client: &mut Stream,
    closing: &Closing,
    at_boundary: bool,
    tx: pgsteer_protocol::backend::TxStatus,
) {
    let outcome = closing.outcome.label();
    metrics.sessions_drained.with_label_values(&[outcome]).inc();
    info!(outcome, tx = ?tx, reason = %closing.reason, "session drained");
    if at_boundary {
        send_fatal(client, Closing::SQLSTATE, &closing.message()).await;
    } else {
        shut(client).await;
    }
}
