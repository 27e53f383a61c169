//! One server connection pgsteer owns: opening it and logging in as the client's user with
//! what pgsteer knows (a password, an md5 hash, or the ClientKey a client proved), what it
//! has applied and prepared, and the short exchanges pgsteer runs on it between clients
//! (settings, the reset query).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pgsteer_protocol::backend::{Authentication, BackendMessage, TxStatus, tag as btag};
use pgsteer_protocol::encode;
use pgsteer_protocol::frame::split_frame;
use pgsteer_protocol::startup::StartupMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::statements::ServerStatements;
use crate::auth::scram::{ClientBinding, ScramClient, ScramClientFinal};
use crate::auth::{Credentials, LoginError};
use crate::cancel::CancelTarget;
use crate::router::Target;
use crate::session::stream::Stream;
use crate::session::upstream::{self, UpstreamError};
use crate::tls::ServerSide;

/// Largest message accepted in pgsteer's own exchanges with a server.
const MESSAGE_LIMIT: u32 = 1 << 20;

/// Session settings by lowercase name, as `SET` takes them.
pub type Settings = BTreeMap<String, String>;

/// Settings from pairs, for tests.
#[cfg(test)]
pub fn settings_of(pairs: &[(&str, &str)]) -> Settings {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A server connection in a pool.
pub struct ServerConn {
    /// The socket.
    pub stream: Stream,
    /// Process-unique number, for logs.
    pub id: u64,
    /// When it was opened.
    pub created: Instant,
    /// When it last went back to the idle list.
    pub idle_since: Instant,
    /// Session settings pgsteer applied on it (shared with the clients that have them).
    pub applied: Arc<Settings>,
    /// [`fingerprint`] of `applied`: a client with the same settings needs no sync.
    pub applied_fingerprint: u64,
    /// ParameterStatus values the server last reported.
    pub reported: Settings,
    /// [`fingerprint`] of `reported`: a client shown these needs no ParameterStatus.
    pub reported_fingerprint: u64,
    /// Prepared statements it has.
    pub statements: ServerStatements,
    /// Where a client's cancel request for it goes.
    pub cancel: Arc<CancelTarget>,
    /// Its socket failed or the server sent something pgsteer did not expect.
    pub broken: bool,
}

/// Who to log in as, with what.
pub struct Login<'a> {
    /// Role name.
    pub user: &'a str,
    /// Database name.
    pub database: &'a str,
    /// What pgsteer knows of the user's password.
    pub credentials: &'a Credentials,
    /// TLS towards the servers.
    pub tls: &'a ServerSide,
    /// Bound on connect + TLS + login.
    pub timeout: Duration,
}

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// TCP trouble: the member may be down.
    #[error("{0}")]
    Unreachable(std::io::Error),
    /// TLS cannot be had as configured.
    #[error(transparent)]
    Tls(crate::session::upstream::UpstreamTlsError),
    /// The server refused the login; the ErrorResponse frame (tag and all) goes to the client.
    #[error("the server refused the login: {message}")]
    Refused {
        /// SQLSTATE the server sent.
        code: String,
        /// Its message.
        message: String,
        /// The whole ErrorResponse message.
        frame: Bytes,
    },
    /// pgsteer cannot answer the server's authentication request.
    #[error(transparent)]
    Login(#[from] LoginError),
    /// The server sent something malformed or out of turn.
    #[error("invalid message from the server: {0}")]
    Protocol(String),
}

impl From<UpstreamError> for OpenError {
    fn from(e: UpstreamError) -> OpenError {
        match e {
            UpstreamError::Unreachable(e) => OpenError::Unreachable(e),
            UpstreamError::Tls(e) => OpenError::Tls(e),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Opens a connection to `target` and logs in.
/// Boxed: a pooled connection moves between its pool and its clients at every transaction,
/// and a pointer moves cheaper than the connection.
pub async fn open(target: &Target, login: Login<'_>) -> Result<Box<ServerConn>, OpenError> {
    let started = Instant::now();
    let mut stream = upstream::connect(target, login.tls, login.timeout).await?;
    let left = login.timeout.saturating_sub(started.elapsed());
    let greeting = tokio::time::timeout(left, log_in(&mut stream, &login))
        .await
        .map_err(|_| {
            OpenError::Unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "login timed out",
            ))
        })??;
    let now = Instant::now();
    Ok(Box::new(ServerConn {
        stream,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        created: now,
        idle_since: now,
        applied: Arc::default(),
        applied_fingerprint: fingerprint(&Settings::new()),
        reported_fingerprint: fingerprint(&greeting.reported),
        reported: greeting.reported,
        statements: ServerStatements::default(),
        cancel: Arc::new(CancelTarget {
            member: target.member.clone(),
            address: target.address.clone(),
            pid: greeting.pid,
            key: greeting.key,
        }),
        broken: false,
    }))
}

/// What the server said while logging in.
struct Greeting {
    reported: Settings,
    pid: i32,
    key: Vec<u8>,
}

/// A SCRAM login in progress.
enum Sasl {
    None,
    Started(ScramClient),
    Sent(ScramClientFinal),
}

/// Sends the startup packet and answers the server until ReadyForQuery.
async fn log_in(stream: &mut Stream, login: &Login<'_>) -> Result<Greeting, OpenError> {
    let startup = StartupMessage::new(vec![
        ("user".into(), login.user.into()),
        ("database".into(), login.database.into()),
    ]);
    let mut out = BytesMut::with_capacity(256);
    encode::startup_message(&mut out, &startup);
    send(stream, &out).await?;
    let mut greeting = Greeting {
        reported: Settings::new(),
        pid: 0,
        key: Vec::new(),
    };
    let mut sasl = Sasl::None;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let (tag, body) = next_message(stream, &mut buf).await?;
        let msg = BackendMessage::parse(tag, &body).map_err(protocol)?;
        out.clear();
        match msg {
            BackendMessage::Authentication(auth) => {
                sasl = answer(auth, sasl, login, stream, &mut out)?;
            }
            BackendMessage::ParameterStatus { name, value } => {
                greeting.reported.insert(text(name), text(value));
            }
            BackendMessage::BackendKeyData(k) => {
                greeting.pid = k.pid;
                greeting.key = k.key.to_vec();
            }
            BackendMessage::ErrorResponse(e) => return Err(refused(&e, tag, &body)),
            BackendMessage::ReadyForQuery(_) => return Ok(greeting),
            _ => {}
        }
        if !out.is_empty() {
            send(stream, &out).await?;
        }
    }
}

/// Answers one authentication request into `out`.
fn answer(
    auth: Authentication<'_>,
    sasl: Sasl,
    login: &Login<'_>,
    stream: &Stream,
    out: &mut BytesMut,
) -> Result<Sasl, OpenError> {
    let creds = login.credentials;
    match (auth, sasl) {
        (Authentication::Ok, s) => Ok(s),
        (Authentication::CleartextPassword, s) => match creds {
            Credentials::Password(p) => {
                password_message(out, p.expose().as_bytes());
                Ok(s)
            }
            _ => Err(LoginError::Unusable("cleartext needs a plaintext password").into()),
        },
        (Authentication::Md5Password { salt }, s) => {
            let response = crate::auth::md5::client_response(creds, login.user, salt)?;
            password_message(out, response.as_bytes());
            Ok(s)
        }
        (Authentication::Sasl { mechanisms }, Sasl::None) => {
            let names: Vec<String> = mechanisms.iter().map(text).collect();
            let end_point = stream.server_end_point();
            let binding = ClientBinding::negotiate(names.iter().map(String::as_str), end_point)?;
            let nonce = crate::auth::scram::new_nonce()
                .map_err(|_| LoginError::Unusable("no random nonce"))?;
            let client = ScramClient::new(creds, binding, &nonce)?;
            sasl_initial(out, client.mechanism(), client.client_first());
            Ok(Sasl::Started(client))
        }
        (Authentication::SaslContinue { data }, Sasl::Started(client)) => {
            let (client, client_final) = client.server_first(data)?;
            password_message_raw(out, &client_final);
            Ok(Sasl::Sent(client))
        }
        (Authentication::SaslFinal { data }, Sasl::Sent(client)) => {
            client.server_final(data)?;
            Ok(Sasl::None)
        }
        _ => Err(OpenError::Protocol(
            "authentication request out of turn".into(),
        )),
    }
}

/// PasswordMessage with a NUL-terminated payload.
fn password_message(out: &mut BytesMut, payload: &[u8]) {
    let mut body = Vec::with_capacity(payload.len() + 1);
    body.extend_from_slice(payload);
    body.push(0);
    password_message_raw(out, &body);
}

/// A `p` message with `body` as it is (SASLResponse).
fn password_message_raw(out: &mut BytesMut, body: &[u8]) {
    out.extend_from_slice(b"p");
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// SASLInitialResponse.
fn sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let len = 4 + mechanism.len() + 1 + 4 + data.len();
    out.extend_from_slice(b"p");
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(mechanism.as_bytes());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(data.len() as i32).to_be_bytes());
    out.extend_from_slice(data);
}

fn refused(e: &pgsteer_protocol::backend::ErrorFields<'_>, tag: u8, body: &[u8]) -> OpenError {
    let mut frame = BytesMut::with_capacity(body.len() + 5);
    frame.extend_from_slice(&[tag]);
    frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(body);
    OpenError::Refused {
        code: e.code().unwrap_or_default().into_owned(),
        message: e.message().unwrap_or_default().into_owned(),
        frame: frame.freeze(),
    }
}

fn protocol(e: impl std::fmt::Display) -> OpenError {
    OpenError::Protocol(e.to_string())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn send(stream: &mut Stream, bytes: &[u8]) -> Result<(), OpenError> {
    stream
        .write_all(bytes)
        .await
        .map_err(OpenError::Unreachable)?;
    stream.flush().await.map_err(OpenError::Unreachable)
}

/// Reads the next whole message: its tag and body.
async fn next_message(stream: &mut Stream, buf: &mut BytesMut) -> Result<(u8, Bytes), OpenError> {
    loop {
        if let Some(f) = split_frame(buf, MESSAGE_LIMIT).map_err(protocol)? {
            return Ok((f.tag, f.body));
        }
        let n = stream.read_buf(buf).await.map_err(OpenError::Unreachable)?;
        if n == 0 {
            return Err(OpenError::Unreachable(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
}

/// Why one of pgsteer's own queries failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The connection is unusable.
    #[error(transparent)]
    Broken(#[from] OpenError),
    /// The server answered with an error (the connection is still usable).
    #[error("{code} {message}")]
    Failed {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// The ErrorResponse message as it came.
        frame: Bytes,
    },
}

impl ServerConn {
    /// Whether an idle connection still looks usable: the server has closed nothing and said
    /// nothing since it went idle (a terminated backend sends FATAL, then closes).
    pub fn looks_alive(&self) -> bool {
        self.stream.quiet()
    }

    /// Runs a simple query of pgsteer's own to its ReadyForQuery and gives back the text
    /// of each row's columns. ParameterStatus messages update [`ServerConn::reported`].
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, QueryError> {
        self.query_leaving(sql, TxStatus::Idle).await
    }

    /// [`ServerConn::query`] of a statement that leaves the connection in status `after`
    /// (a client's deferred `BEGIN` leaves it in a transaction block).
    pub async fn query_leaving(
        &mut self,
        sql: &str,
        after: TxStatus,
    ) -> Result<Vec<Vec<Option<String>>>, QueryError> {
        let result = self.exchange(sql, after).await;
        self.reported_fingerprint = fingerprint(&self.reported);
        if let Err(QueryError::Broken(_)) = &result {
            self.broken = true;
        }
        result
    }

    async fn exchange(
        &mut self,
        sql: &str,
        after: TxStatus,
    ) -> Result<Vec<Vec<Option<String>>>, QueryError> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        encode::query(&mut out, sql);
        send(&mut self.stream, &out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let (tag, body) = next_message(&mut self.stream, &mut buf).await?;
            match tag {
                btag::DATA_ROW => rows.push(data_row(&body).map_err(OpenError::Protocol)?),
                btag::PARAMETER_STATUS | btag::ERROR_RESPONSE | btag::READY_FOR_QUERY => {
                    match BackendMessage::parse(tag, &body).map_err(protocol)? {
                        BackendMessage::ParameterStatus { name, value } => {
                            self.reported.insert(text(name), text(value));
                        }
                        BackendMessage::ErrorResponse(e) => {
                            if let OpenError::Refused {
                                code,
                                message,
                                frame,
                            } = refused(&e, tag, &body)
                            {
                                failed = Some(QueryError::Failed {
                                    code,
                                    message,
                                    frame,
                                });
                            }
                        }
                        BackendMessage::ReadyForQuery(tx) => {
                            if !buf.is_empty() || (tx != after && failed.is_none()) {
                                return Err(OpenError::Protocol(
                                    "unexpected state after pgsteer's own query".into(),
                                )
                                .into());
                            }
                            return failed.map_or(Ok(rows), Err);
                        }
                        _ => {}
                    }
                }
                btag::COPY_IN_RESPONSE | btag::COPY_OUT_RESPONSE | btag::COPY_BOTH_RESPONSE => {
                    return Err(OpenError::Protocol("COPY in pgsteer's own query".into()).into());
                }
                _ => {}
            }
        }
    }
}

/// A 64-bit digest of a settings map (SipHash with fixed keys: equal maps, equal digests).
pub fn fingerprint(settings: &Settings) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    settings.hash(&mut h);
    h.finish()
}

/// The columns of a DataRow body, as text (`None` for NULL).
pub fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, String> {
    let short = || "truncated DataRow".to_owned();
    let n = body.get(..2).ok_or_else(short)?;
    let n = i16::from_be_bytes([n[0], n[1]]);
    let mut rest = body.get(2..).ok_or_else(short)?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = rest.get(..4).ok_or_else(short)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        rest = rest.get(4..).ok_or_else(short)?;
        if len < 0 {
            cols.push(None);
            continue;
        }
        let v = rest.get(..len as usize).ok_or_else(short)?;
        cols.push(Some(text(v)));
        rest = rest.get(len as usize..).ok_or_else(short)?;
    }
    if !rest.is_empty() {
        return Err("trailing bytes in DataRow".into());
    }
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_row_gives_its_columns_and_nulls_and_rejects_truncation() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"on");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            data_row(&body).unwrap(),
            vec![Some("on".to_owned()), None, Some(String::new())]
        );
        for cut in 0..body.len() {
            assert!(data_row(&body[..cut]).is_err(), "cut at {cut}");
        }
        body.push(1);
        assert!(data_row(&body).is_err());
    }
}
