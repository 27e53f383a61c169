//! Writers for the messages pgsteer produces itself, into a `BytesMut`.
//!
//! Each writer appends one whole message and fixes up its length, so callers
//! can queue several and flush them with one write.

use bytes::{BufMut, BytesMut};

use crate::backend::TxStatus;
use crate::sqlstate::SqlState;
use crate::startup::{CANCEL_REQUEST_CODE, SSL_REQUEST_CODE, StartupMessage};

/// Severity of an error or notice pgsteer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The session ends.
    Fatal,
    /// The statement fails.
    Error,
    /// A warning notice.
    Warning,
    /// An informational notice.
    Notice,
}

impl Severity {
    /// The non-localized name Postgres sends.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }
}

/// An error or notice to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo<'a> {
    /// Severity.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: SqlState,
    /// Primary message.
    pub message: &'a str,
    /// Optional detail.
    pub detail: Option<&'a str>,
    /// Optional hint.
    pub hint: Option<&'a str>,
}

impl<'a> ErrorInfo<'a> {
    /// A FATAL error: the connection is closed after it.
    pub fn fatal(code: SqlState, message: &'a str) -> ErrorInfo<'a> {
        ErrorInfo {
            severity: Severity::Fatal,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    /// An ERROR (the statement fails, the session goes on) with `code` and `message`.
    pub fn error(code: SqlState, message: &'a str) -> ErrorInfo<'a> {
        ErrorInfo {
            severity: Severity::Error,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    /// Adds a detail.
    pub fn with_detail(mut self, detail: &'a str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: &'a str) -> Self {
        self.hint = Some(hint);
        self
    }
}

/// Starts a tagged message; returns the offset of its length field.
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Writes the length of the message begun at `at`.
fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    // An embedded NUL would end the field early and corrupt the message.
    for &b in s {
        buf.put_u8(if b == 0 { b'?' } else { b });
    }
    buf.put_u8(0);
}

fn fields(buf: &mut BytesMut, tag: u8, e: &ErrorInfo<'_>) {
    let at = begin(buf, tag);
    let sev = e.severity.as_str().as_bytes();
    buf.put_u8(b'S');
    put_cstr(buf, sev);
    buf.put_u8(b'V');
    put_cstr(buf, sev);
    buf.put_u8(b'C');
    put_cstr(buf, e.code.code().as_bytes());
    buf.put_u8(b'M');
    put_cstr(buf, e.message.as_bytes());
    if let Some(d) = e.detail {
        buf.put_u8(b'D');
        put_cstr(buf, d.as_bytes());
    }
    if let Some(h) = e.hint {
        buf.put_u8(b'H');
        put_cstr(buf, h.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// Any tagged message from its type byte and body, e.g. a frame passed on
/// unchanged after it was split off.
pub fn frame(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    let at = begin(buf, tag);
    buf.put_slice(body);
    finish(buf, at);
}

/// ErrorResponse (`E`).
pub fn error_response(buf: &mut BytesMut, e: &ErrorInfo<'_>) {
    fields(buf, b'E', e);
}

/// NoticeResponse (`N`).
pub fn notice_response(buf: &mut BytesMut, e: &ErrorInfo<'_>) {
    fields(buf, b'N', e);
}

/// ParameterStatus (`S`).
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, at);
}

/// BackendKeyData (`K`); `key` is 4 bytes for 3.0, up to 256 for 3.2.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: &[u8]) {
    let at = begin(buf, b'K');
    buf.put_i32(pid);
    buf.put_slice(key);
    finish(buf, at);
}

/// ReadyForQuery (`Z`).
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    let at = begin(buf, b'Z');
    buf.put_u8(status.as_byte());
    finish(buf, at);
}

/// CommandComplete (`C`) with its command tag (`BEGIN`, `ROLLBACK`, …).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let at = begin(buf, b'C');
    put_cstr(buf, tag.as_bytes());
    finish(buf, at);
}

/// AuthenticationOk (`R`, code 0).
pub fn authentication_ok(buf: &mut BytesMut) {
    let at = begin(buf, b'R');
    buf.put_i32(0);
    finish(buf, at);
}

/// AuthenticationSASL (`R`, code 10) with this mechanism list.
pub fn authentication_sasl<'a>(buf: &mut BytesMut, mechanisms: impl IntoIterator<Item = &'a [u8]>) {
    let at = begin(buf, b'R');
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// NegotiateProtocolVersion (`v`).
pub fn negotiate_protocol_version<S: AsRef<str>>(buf: &mut BytesMut, minor: u16, options: &[S]) {
    let at = begin(buf, b'v');
    buf.put_i32(i32::from(minor));
    buf.put_i32(options.len() as i32);
    for o in options {
        put_cstr(buf, o.as_ref().as_bytes());
    }
    finish(buf, at);
}

/// Query (`Q`), as a client sends it.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, b'Q');
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

/// SASLInitialResponse (`p`), as a client sends it: the mechanism and its
/// initial response (`None` is sent as length -1).
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &[u8], data: Option<&[u8]>) {
    let at = begin(buf, b'p');
    put_cstr(buf, mechanism);
    match data {
        Some(d) => {
            buf.put_i32(d.len() as i32);
            buf.put_slice(d);
        }
        None => buf.put_i32(-1),
    }
    finish(buf, at);
}

/// Terminate (`X`).
pub fn terminate(buf: &mut BytesMut) {
    let at = begin(buf, b'X');
    finish(buf, at);
}

/// StartupMessage, as a client (or pgsteer, upstream) sends it.
pub fn startup_message(buf: &mut BytesMut, m: &StartupMessage) {
    let at = buf.len();
    buf.put_u32(0);
    buf.put_u32(m.version.code());
    for (n, v) in &m.params {
        put_cstr(buf, n.as_bytes());
        put_cstr(buf, v.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// CancelRequest with a 3.0 (4-byte) or 3.2 (longer) key.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, key: &[u8]) {
    let at = buf.len();
    buf.put_u32(0);
    buf.put_u32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_slice(key);
    finish(buf, at);
}

/// SSLRequest, to open TLS towards a server.
pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_u32(8);
    buf.put_u32(SSL_REQUEST_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendMessage;
    use crate::frame::split_frame;
    use crate::startup::{StartupPacket, parse_startup};

    #[test]
    fn error_response_decodes_back() {
        let mut b = BytesMut::new();
        error_response(
            &mut b,
            &ErrorInfo::fatal(SqlState::ADMIN_SHUTDOWN, "pg-0 is no longer the primary")
                .with_hint("reconnect"),
        );
        let f = split_frame(&mut b, 1 << 20).unwrap().unwrap();
        let BackendMessage::ErrorResponse(e) = BackendMessage::parse(f.tag, &f.body).unwrap()
        else {
            panic!("not an error");
        };
        assert_eq!(e.code().as_deref(), Some("57P01"));
        assert_eq!(e.severity().as_deref(), Some("FATAL"));
        assert_eq!(e.hint().as_deref(), Some("reconnect"));
    }

    #[test]
    fn a_frame_is_written_as_tag_length_and_body() {
        let mut b = BytesMut::new();
        frame(&mut b, b'Z', b"I");
        frame(&mut b, b'1', b"");
        assert_eq!(&b[..], b"Z\0\0\0\x05I1\0\0\0\x04");
        let z = split_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!((z.tag, &z.body[..]), (b'Z', &b"I"[..]));
    }

    #[test]
    fn sasl_initial_response_decodes_back() {
        use crate::frontend::SaslInitialResponse;
        for data in [Some(&b"n,,n=,r=abc"[..]), Some(b""), None] {
            let mut b = BytesMut::new();
            sasl_initial_response(&mut b, b"SCRAM-SHA-256", data);
            let f = split_frame(&mut b, 1 << 20).unwrap().unwrap();
            assert_eq!(f.tag, b'p');
            assert_eq!(
                SaslInitialResponse::parse(&f.body),
                Ok(SaslInitialResponse {
                    mechanism: b"SCRAM-SHA-256",
                    data
                })
            );
        }
    }

    #[test]
    fn startup_message_decodes_back() {
        let m = StartupMessage::new(vec![("user".into(), "app".into())]);
        let mut b = BytesMut::new();
        startup_message(&mut b, &m);
        assert_eq!(
            parse_startup(&mut b).unwrap(),
            Some(StartupPacket::Startup(m))
        );
    }
}
