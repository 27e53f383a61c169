//! Untagged packets a client may open with: StartupMessage, SSLRequest,
//! GSSENCRequest and CancelRequest.
//!
//! They carry no type byte: a 4-byte length (counting itself) and a 4-byte
//! code. Postgres caps them at 10,000 bytes; the length is checked before
//! waiting for the rest, so a client cannot make us buffer more.

use bytes::{Buf, BytesMut};

/// Largest startup-family packet Postgres accepts, length word included:
/// `MAX_STARTUP_PACKET_LENGTH` (10,000) bounds what follows the length.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000 + 4;
/// Code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
/// Code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;
/// Code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;
/// Longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// A protocol version as `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Major version; only 3 is spoken.
    pub major: u16,
    /// Minor version: 0 (Postgres ≤ 17) or 2 (Postgres 18, longer cancel keys).
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0.
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };
    /// Protocol 3.2.
    pub const V3_2: ProtocolVersion = ProtocolVersion { major: 3, minor: 2 };
    /// The newest version pgsteer speaks.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V3_2;

    /// From the 32-bit wire code.
    pub fn from_code(code: u32) -> ProtocolVersion {
        ProtocolVersion {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }

    /// The 32-bit wire code.
    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a startup-family packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Shorter than length + code, or negative.
    #[error("invalid length of startup packet: {0}")]
    TooShort(i32),
    /// Longer than [`MAX_STARTUP_PACKET_LEN`].
    #[error("invalid length of startup packet: {0} (at most {MAX_STARTUP_PACKET_LEN})")]
    TooLong(i32),
    /// Not protocol 3.x and not a special request code.
    #[error("unsupported frontend protocol {0}: server supports 3.0 to {latest}", latest = ProtocolVersion::LATEST)]
    UnsupportedVersion(ProtocolVersion),
    /// An SSLRequest or GSSENCRequest must be exactly 8 bytes.
    #[error("invalid length of {what}: {len} (must be 8)")]
    BadRequestLength {
        /// Which request.
        what: &'static str,
        /// Its length as sent.
        len: usize,
    },
    /// A CancelRequest whose key is shorter than 4 or longer than 256 bytes.
    #[error("invalid length of cancel request packet: {0}")]
    BadCancelLength(usize),
    /// A parameter name or value not terminated, or a missing final terminator.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    MissingTerminator,
    /// A parameter name without a value.
    #[error("invalid startup packet layout: parameter {0:?} has no value")]
    MissingValue(String),
    /// A parameter name or value that is not UTF-8.
    #[error("invalid startup packet: parameters must be valid UTF-8")]
    NotUtf8,
}

/// The cancel key of a CancelRequest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelRequest {
    /// Backend process id.
    pub pid: i32,
    /// Secret key: 4 bytes in 3.0, up to 256 in 3.2.
    pub key: Vec<u8>,
}

/// A StartupMessage: protocol version and ordered parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested protocol version.
    pub version: ProtocolVersion,
    /// Parameters in the order sent.
    pub params: Vec<(String, String)>,
}

/// Outcome of [`StartupMessage::negotiate`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Negotiation {
    /// Whether the client must be told with NegotiateProtocolVersion.
    pub downgraded: bool,
    /// The `_pq_.` options removed because they are not supported.
    pub unsupported_options: Vec<String>,
}

impl StartupMessage {
    /// A 3.0 startup message with these parameters.
    pub fn new(params: Vec<(String, String)>) -> StartupMessage {
        StartupMessage {
            version: ProtocolVersion::V3_0,
            params,
        }
    }

    /// The value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a parameter, replacing it in place or appending it.
    pub fn set(&mut self, name: &str, value: String) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }

    /// Removes a parameter, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self.params.iter().position(|(n, _)| n == name)?;
        Some(self.params.remove(i).1)
    }

    /// `user`.
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// `database`, which defaults to the user name as in Postgres.
    pub fn database(&self) -> Option<&str> {
        self.get("database").or_else(|| self.user())
    }

    /// `options`: command-line style settings, see [`crate::options`].
    pub fn options(&self) -> Option<&str> {
        self.get("options")
    }

    /// `application_name`.
    pub fn application_name(&self) -> Option<&str> {
        self.get("application_name")
    }

    /// Clamps the requested version to `latest` and drops `_pq_.` protocol
    /// options (none are supported), the way Postgres 18 does.
    ///
    /// When anything was changed the client must receive NegotiateProtocolVersion
    /// with `latest.minor` and the dropped options before authentication goes on.
    pub fn negotiate(&mut self, latest: ProtocolVersion) -> Negotiation {
        let mut n = Negotiation::default();
        if self.version > latest {
            self.version = latest;
            n.downgraded = true;
        }
        let mut i = 0;
        while i < self.params.len() {
            if self.params[i].0.starts_with("_pq_.") {
                n.unsupported_options.push(self.params.remove(i).0);
                n.downgraded = true;
            } else {
                i += 1;
            }
        }
        n
    }
}

/// Any packet a connection may begin with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage.
    Startup(StartupMessage),
    /// SSLRequest: answer `S` or `N`.
    SslRequest,
    /// GSSENCRequest: answer `G` or `N`.
    GssEncRequest,
    /// CancelRequest.
    Cancel(CancelRequest),
}

/// Splits one startup-family packet off the front of `buf`.
///
/// `Ok(None)` until the packet is complete; the length is validated as soon as
/// its 4 bytes are present.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    let Some(len) = startup_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    decode(&packet).map(Some)
}

/// The validated length of the packet starting `buf`, or `None` if fewer than 4 bytes.
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(l) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = i32::from_be_bytes(*l);
    if len < 8 {
        return Err(StartupError::TooShort(len));
    }
    if len as usize > MAX_STARTUP_PACKET_LEN {
        return Err(StartupError::TooLong(len));
    }
    Ok(Some(len as usize))
}

/// Decodes a packet body (after the length).
fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let total = body.len() + 4;
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            let what = if code == SSL_REQUEST_CODE {
                "SSL request"
            } else {
                "GSSENC request"
            };
            if total != 8 {
                return Err(StartupError::BadRequestLength { what, len: total });
            }
            Ok(if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            if rest.len() < 8 || rest.len() - 4 > MAX_CANCEL_KEY_LEN {
                return Err(StartupError::BadCancelLength(total));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Ok(StartupPacket::Cancel(CancelRequest {
                pid,
                key: rest[4..].to_vec(),
            }))
        }
        _ => {
            let version = ProtocolVersion::from_code(code);
            if version.major != 3 {
                return Err(StartupError::UnsupportedVersion(version));
            }
            Ok(StartupPacket::Startup(StartupMessage {
                version,
                params: decode_params(rest)?,
            }))
        }
    }
}

fn decode_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    // The list ends with an empty name, which must be the last byte.
    if rest.last() != Some(&0) {
        return Err(StartupError::MissingTerminator);
    }
    let mut params = Vec::new();
    loop {
        let end = memchr::memchr(0, rest).ok_or(StartupError::MissingTerminator)?;
        if end == 0 {
            if rest.len() != 1 {
                return Err(StartupError::MissingTerminator);
            }
            return Ok(params);
        }
        let name = std::str::from_utf8(&rest[..end]).map_err(|_| StartupError::NotUtf8)?;
        rest = &rest[end + 1..];
        let vend =
            memchr::memchr(0, rest).ok_or_else(|| StartupError::MissingValue(name.into()))?;
        if vend + 1 == rest.len() {
            // The final terminator was taken as this value's: the value is missing.
            return Err(StartupError::MissingValue(name.into()));
        }
        let value = std::str::from_utf8(&rest[..vend]).map_err(|_| StartupError::NotUtf8)?;
        rest = &rest[vend + 1..];
        params.push((name.to_owned(), value.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((rest.len() + 8) as i32).to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn startup_parameters_keep_their_order() {
        let mut b = packet(
            ProtocolVersion::V3_0.code(),
            b"user\0app\0database\0db\0application_name\0psql\0\0",
        );
        let Some(StartupPacket::Startup(m)) = parse_startup(&mut b).unwrap() else {
            panic!("not a startup message");
        };
        assert!(b.is_empty());
        assert_eq!(m.user(), Some("app"));
        assert_eq!(m.database(), Some("db"));
        assert_eq!(m.application_name(), Some("psql"));
        assert_eq!(m.params[0].0, "user");
    }

    #[test]
    fn a_value_eaten_by_the_terminator_is_missing() {
        let mut b = packet(ProtocolVersion::V3_0.code(), b"user\0\0");
        assert_eq!(
            parse_startup(&mut b),
            Err(StartupError::MissingValue("user".into()))
        );
    }

    #[test]
    fn negotiation_clamps_minor_and_strips_pq_options() {
        let mut m = StartupMessage {
            version: ProtocolVersion { major: 3, minor: 9 },
            params: vec![
                ("user".into(), "a".into()),
                ("_pq_.compression".into(), "on".into()),
            ],
        };
        let n = m.negotiate(ProtocolVersion::LATEST);
        assert!(n.downgraded);
        assert_eq!(n.unsupported_options, vec!["_pq_.compression".to_string()]);
        assert_eq!(m.version, ProtocolVersion::V3_2);
        assert_eq!(m.params.len(), 1);
    }

    #[test]
    fn cancel_request_accepts_long_keys_of_protocol_3_2() {
        let mut rest = 42i32.to_be_bytes().to_vec();
        rest.extend_from_slice(&[9u8; 32]);
        let mut b = packet(CANCEL_REQUEST_CODE, &rest);
        let Some(StartupPacket::Cancel(c)) = parse_startup(&mut b).unwrap() else {
            panic!("not a cancel");
        };
        assert_eq!(c.pid, 42);
        assert_eq!(c.key.len(), 32);
    }
}
