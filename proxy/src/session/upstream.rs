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
use crate::tls::{ServerSide, TlsError};

/// Why a backend connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP trouble (refused, reset, timed out): the member may be down; try
    /// elsewhere or wait.
    #[error(transparent)]
    Unreachable(std::io::Error),
    /// The member answered but TLS cannot be had as configured (no TLS
    /// support, certificate not trusted, wrong name). Waiting will not help.
    #[error(transparent)]
    Tls(UpstreamTlsError),
}

/// Why TLS towards a member cannot be had as `tls.server_mode` says.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// The server answered `N` to the SSLRequest, and the mode requires TLS.
    #[error("the server does not support TLS, but tls.server_mode = \"{}\"", .0.as_str())]
    NotSupported(ServerTlsMode),
    /// The answer to the SSLRequest was neither `S` nor `N`.
    #[error("unexpected answer to SSLRequest: 0x{0:02x}")]
    UnexpectedAnswer(u8),
    /// The member's host cannot be checked against a certificate.
    #[error(transparent)]
    ServerName(TlsError),
    /// The handshake failed: certificate not trusted, wrong name, an alert.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
}

/// Connects to `target` within `timeout` (TCP and TLS handshake together).
pub async fn connect(
    target: &Target,
    tls: &ServerSide,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
    connect_to(&target.address, tls, timeout).await
}

/// Connects to the server at `address` (`host:port`) within `timeout`, TLS as `tls` says
/// (sessions, pool connections and cancel requests alike).
pub async fn connect_to(
    address: &str,
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
        let tcp = TcpStream::connect(address)
            .await
            .map_err(UpstreamError::Unreachable)?;
        tcp.set_nodelay(true).map_err(UpstreamError::Unreachable)?;
        negotiate(tcp, address, tls).await
    })
    .await
    .unwrap_or_else(|_| Err(timed_out()))
}

/// SSLRequest and handshake, unless `server_mode = "disable"`.
async fn negotiate(
    mut tcp: TcpStream,
    address: &str,
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
            return Err(UpstreamError::Tls(UpstreamTlsError::NotSupported(mode)));
        }
        other => {
            return Err(UpstreamError::Tls(UpstreamTlsError::UnexpectedAnswer(
                other,
            )));
        }
    }
    let name = tls
        .server_name(address)
        .map_err(|e| UpstreamError::Tls(UpstreamTlsError::ServerName(e)))?;
    match connector.connect(name, tcp).await {
        Ok(s) => Ok(Stream::Connected(Box::new(s))),
        // rustls errors (certificates, alerts) arrive wrapped in io::Error.
        Err(e) if tls_error(&e) => Err(UpstreamError::Tls(UpstreamTlsError::Handshake(e))),
        Err(e) => Err(UpstreamError::Unreachable(e)),
    }
}

fn tls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}
