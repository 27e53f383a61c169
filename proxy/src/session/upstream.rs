//! Opening the connection to a backend: TCP, then TLS as `[tls] server_mode`
//! says, with libpq's semantics (SSLRequest; `prefer` falls back to
//! plaintext on `N`, the other modes fail).

use std::time::Duration;

use bytes::BytesMut;
use pgsteer_protocol::encode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::Stream;
use crate::config::ServerTlsMode;
use crate::router::Target;
use crate::tls::ServerSide;

/// Why a backend connection could not be opened.
#[derive(Debug)]
pub enum UpstreamError {
    /// TCP trouble (refused, reset, timed out): the member may be down; try
    /// elsewhere or wait.
    Unreachable(std::io::Error),
    /// The member answered but TLS cannot be had as configured (no TLS
    /// support, certificate not trusted, wrong name). Waiting will not help.
    Tls(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unreachable(e) => e.fmt(f),
            UpstreamError::Tls(e) => f.write_str(e),
        }
    }
}

/// Connects to `target` within `timeout` (TCP and TLS handshake together).
pub async fn connect(
    target: &Target,
    tls: &ServerSide,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
    let timed_out = || {
        UpstreamError::Unreachable(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))
    };
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(&target.address)
            .await
            .map_err(UpstreamError::Unreachable)?;
        tcp.set_nodelay(true).map_err(UpstreamError::Unreachable)?;
        negotiate(tcp, target, tls).await
    })
    .await
    .unwrap_or_else(|_| Err(timed_out()))
}

/// SSLRequest and handshake, unless `server_mode = "disable"`.
async fn negotiate(
    mut tcp: TcpStream,
    target: &Target,
    tls: &ServerSide,
) -> Result<Stream, UpstreamError> {
    let Some(connector) = tls.connector() else {
        return Ok(Stream::Plain(tcp));
    };
    let mode = tls.mode();
    let mut req = BytesMut::with_capacity(8);
    encode::ssl_request(&mut req);
    tcp.write_all(&req)
        .await
        .map_err(UpstreamError::Unreachable)?;
    // Exactly one byte: anything the server (or someone in between) sent
    // after it stays in the socket and goes to the TLS handshake, which
    // rejects it (CVE-2021-23214).
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(UpstreamError::Unreachable)?;
    match answer[0] {
        b'S' => {}
        b'N' if mode == ServerTlsMode::Prefer => return Ok(Stream::Plain(tcp)),
        b'N' => {
            return Err(UpstreamError::Tls(format!(
                "the server does not support TLS, but tls.server_mode = \"{}\"",
                mode.as_str()
            )));
        }
        other => {
            return Err(UpstreamError::Tls(format!(
                "unexpected answer to SSLRequest: 0x{other:02x}"
            )));
        }
    }
    let name = tls
        .server_name(&target.address)
        .map_err(UpstreamError::Tls)?;
    match connector.connect(name, tcp).await {
        Ok(s) => Ok(Stream::Connected(Box::new(s))),
        // rustls errors (certificates, alerts) arrive wrapped in io::Error.
        Err(e) if tls_error(&e) => Err(UpstreamError::Tls(format!("TLS handshake failed: {e}"))),
        Err(e) => Err(UpstreamError::Unreachable(e)),
    }
}

fn tls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}
