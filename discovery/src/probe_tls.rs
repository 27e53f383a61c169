//! TLS for the probe, as the proxy's `[tls] server_mode` says: a rustls client configuration
//! built by the proxy (its verifier does the checking: none for `prefer`/`require`, the chain
//! for `verify-ca`, chain and host for `verify-full`), plugged into tokio-postgres.
//!
//! No channel binding: the probe's SCRAM exchange says "client does not support it" (gs2 `n`),
//! which servers accept.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How the probe negotiates TLS.
#[derive(Clone, Default)]
pub struct ProbeTls {
    config: Option<Arc<ClientConfig>>,
    required: bool,
    verify_name: bool,
}

impl std::fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTls")
            .field("tls", &self.config.is_some())
            .field("required", &self.required)
            .field("verify_name", &self.verify_name)
            .finish()
    }
}

impl ProbeTls {
    /// Plaintext (the default).
    pub fn disabled() -> ProbeTls {
        ProbeTls::default()
    }

    /// TLS with `config`: `required` refuses a server without TLS (else plaintext is the
    /// fallback, as libpq's `prefer`); `verify_name` checks the host (`verify-full`), else an
    /// address that is no valid name is presented as `localhost` (the verifier ignores it).
    pub fn with(config: Arc<ClientConfig>, required: bool, verify_name: bool) -> ProbeTls {
        ProbeTls {
            config: Some(config),
            required,
            verify_name,
        }
    }

    /// The tokio-postgres `sslmode`.
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match (&self.config, self.required) {
            (None, _) => SslMode::Disable,
            (Some(_), false) => SslMode::Prefer,
            (Some(_), true) => SslMode::Require,
        }
    }
}

impl MakeTlsConnect<Socket> for ProbeTls {
    type Stream = ProbeStream;
    type TlsConnect = Connect;
    type Error = io::Error;

    /// Called for every connection, whatever the `sslmode`: without TLS the handshake is
    /// never asked for.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let Some(config) = self.config.clone() else {
            return Ok(Connect { tls: None });
        };
        let name = match ServerName::try_from(domain.to_owned()) {
            Ok(n) => n,
            Err(e) if self.verify_name => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
            }
            Err(_) => ServerName::try_from("localhost")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        Ok(Connect {
            tls: Some((config, name)),
        })
    }
}

/// One TLS handshake to come (none when TLS is off).
pub struct Connect {
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = ProbeStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ProbeStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let (config, name) = self
                .tls
                .ok_or_else(|| io::Error::other("probe TLS is disabled"))?;
            let s = TlsConnector::from(config).connect(name, stream).await?;
            Ok(ProbeStream(Box::new(s)))
        })
    }
}

/// A probe connection over TLS.
pub struct ProbeStream(Box<TlsStream<Socket>>);

impl tokio_postgres::tls::TlsStream for ProbeStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for ProbeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProbeStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    #[test]
    fn the_modes_map_to_sslmode_and_names_are_checked_only_for_verify_full() {
        let mut off = ProbeTls::disabled();
        assert!(matches!(off.ssl_mode(), SslMode::Disable));
        // tokio-postgres asks for a connector whatever the mode.
        assert!(off.make_tls_connect("pg-0.db").is_ok());
        let mut prefer = ProbeTls::with(config(), false, false);
        assert!(matches!(prefer.ssl_mode(), SslMode::Prefer));
        assert!(prefer.make_tls_connect("not a name!").is_ok());
        let mut full = ProbeTls::with(config(), true, true);
        assert!(matches!(full.ssl_mode(), SslMode::Require));
        assert!(full.make_tls_connect("127.0.0.1").is_ok());
        assert!(full.make_tls_connect("not a name!").is_err());
    }
}
