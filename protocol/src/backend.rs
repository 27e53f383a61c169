//! Server→client messages the proxy acts on, as borrowed views of a frame body.
//!
//! Parse a body only when the proxy needs it; anything not listed here is
//! [`BackendMessage::Other`] and passes through untouched.

use std::borrow::Cow;

use crate::{DecodeError, Reader};

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries rejected until rollback).
    Failed,
}

impl TxStatus {
    /// Decodes the status byte.
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    /// The status byte.
    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Message type bytes of the backend messages pgsteer looks at.
pub mod tag {
    /// Authentication request (all kinds).
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// CopyData (both directions).
    pub const COPY_DATA: u8 = b'd';
}

/// Authentication request kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authentication succeeded.
    Ok,
    /// 3: send the password in clear text.
    CleartextPassword,
    /// 5: send the MD5-hashed password with this salt.
    Md5Password {
        /// Four salt bytes.
        salt: [u8; 4],
    },
    /// 10: start SASL with one of these mechanisms.
    Sasl {
        /// The mechanism list: NUL-terminated names ending with an empty one.
        mechanisms: SaslMechanisms<'a>,
    },
    /// 11: a SASL challenge.
    SaslContinue {
        /// Mechanism-specific data.
        data: &'a [u8],
    },
    /// 12: the SASL outcome.
    SaslFinal {
        /// Mechanism-specific data.
        data: &'a [u8],
    },
    /// Any other code (Kerberos, GSS, SSPI, …): relayed untouched.
    Other {
        /// The request code.
        code: i32,
        /// What follows it.
        data: &'a [u8],
    },
}

/// The SASL mechanism names offered by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslMechanisms<'a> {
    raw: &'a [u8],
}

impl<'a> SaslMechanisms<'a> {
    /// The mechanism names, in the server's order of preference.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.raw.split(|&b| b == 0).take_while(|s| !s.is_empty())
    }
}

/// BackendKeyData: the process id and secret key a client cancels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKeyData<'a> {
    /// Backend process id.
    pub pid: i32,
    /// Secret key: 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub key: &'a [u8],
}

/// Error and notice fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    raw: &'a [u8],
}

/// One error or notice field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Field type byte (`S`, `V`, `C`, `M`, `D`, `H`, …).
    pub code: u8,
    /// Field value, in the server's encoding.
    pub value: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    fn parse(tag: u8, raw: &'a [u8]) -> Result<Self, DecodeError> {
        // Validate once so the iterator and getters cannot fail later.
        let mut r = Reader::new(tag, raw);
        loop {
            let code = r.u8()?;
            if code == 0 {
                break;
            }
            r.cstr()?;
        }
        r.finish()?;
        Ok(ErrorFields { raw })
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let mut rest = self.raw;
        std::iter::from_fn(move || {
            let (&code, tail) = rest.split_first()?;
            if code == 0 {
                return None;
            }
            let end = memchr::memchr(0, tail)?;
            rest = &tail[end + 1..];
            Some(Field {
                code,
                value: &tail[..end],
            })
        })
    }

    /// The first field of this type.
    pub fn get(&self, code: u8) -> Option<Cow<'a, str>> {
        self.iter()
            .find(|f| f.code == code)
            .map(|f| String::from_utf8_lossy(f.value))
    }

    /// Severity, not localized (`V`) when present, else the localized one (`S`).
    pub fn severity(&self) -> Option<Cow<'a, str>> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    /// The SQLSTATE code (`C`).
    pub fn code(&self) -> Option<Cow<'a, str>> {
        self.get(b'C')
    }

    /// The primary message (`M`).
    pub fn message(&self) -> Option<Cow<'a, str>> {
        self.get(b'M')
    }

    /// The detail (`D`).
    pub fn detail(&self) -> Option<Cow<'a, str>> {
        self.get(b'D')
    }

    /// The hint (`H`).
    pub fn hint(&self) -> Option<Cow<'a, str>> {
        self.get(b'H')
    }
}

/// CopyIn/CopyOut/CopyBoth response: overall format and per-column formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyResponse<'a> {
    /// 0 = text, 1 = binary.
    pub format: u8,
    /// Number of columns.
    pub columns: i16,
    raw_formats: &'a [u8],
}

impl CopyResponse<'_> {
    /// Per-column format codes.
    pub fn column_formats(&self) -> impl Iterator<Item = i16> + '_ {
        self.raw_formats
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
    }
}

/// A server→client message, borrowed from its frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `R`.
    Authentication(Authentication<'a>),
    /// `K`.
    BackendKeyData(BackendKeyData<'a>),
    /// `S`.
    ParameterStatus {
        /// Parameter name.
        name: &'a [u8],
        /// Its value.
        value: &'a [u8],
    },
    /// `Z`.
    ReadyForQuery(TxStatus),
    /// `E`.
    ErrorResponse(ErrorFields<'a>),
    /// `N`.
    NoticeResponse(ErrorFields<'a>),
    /// `C`: the command tag, e.g. `INSERT 0 1`.
    CommandComplete {
        /// The command tag.
        tag: &'a [u8],
    },
    /// `G`.
    CopyInResponse(CopyResponse<'a>),
    /// `H`.
    CopyOutResponse(CopyResponse<'a>),
    /// `W`.
    CopyBothResponse(CopyResponse<'a>),
    /// `v`: the newest minor version the server supports and the options it did not recognise.
    NegotiateProtocolVersion {
        /// Newest supported minor version.
        minor: i32,
        /// Unrecognised `_pq_.` options, NUL-separated.
        options: Vec<&'a [u8]>,
    },
    /// Anything else; relayed untouched.
    Other {
        /// Message type byte.
        tag: u8,
        /// Body.
        body: &'a [u8],
    },
}

impl<'a> BackendMessage<'a> {
    /// Decodes the body of a frame with message type `tag`.
    pub fn parse(tag_byte: u8, body: &'a [u8]) -> Result<BackendMessage<'a>, DecodeError> {
        let mut r = Reader::new(tag_byte, body);
        let msg = match tag_byte {
            tag::AUTHENTICATION => BackendMessage::Authentication(parse_auth(&mut r)?),
            tag::BACKEND_KEY_DATA => {
                let pid = r.i32()?;
                let key = r.remaining();
                if key.len() < 4 || key.len() > 256 {
                    return Err(DecodeError::Invalid {
                        tag: tag_byte,
                        what: "secret key length",
                    });
                }
                r = Reader::new(tag_byte, &[]);
                BackendMessage::BackendKeyData(BackendKeyData { pid, key })
            }
            tag::PARAMETER_STATUS => BackendMessage::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            },
            tag::READY_FOR_QUERY => {
                let s = r.u8()?;
                BackendMessage::ReadyForQuery(TxStatus::from_byte(s).ok_or(
                    DecodeError::Invalid {
                        tag: tag_byte,
                        what: "transaction status",
                    },
                )?)
            }
            tag::ERROR_RESPONSE | tag::NOTICE_RESPONSE => {
                let fields = ErrorFields::parse(tag_byte, body)?;
                r = Reader::new(tag_byte, &[]);
                if tag_byte == tag::ERROR_RESPONSE {
                    BackendMessage::ErrorResponse(fields)
                } else {
                    BackendMessage::NoticeResponse(fields)
                }
            }
            tag::COMMAND_COMPLETE => BackendMessage::CommandComplete { tag: r.cstr()? },
            tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                let c = parse_copy(&mut r)?;
                match tag_byte {
                    tag::COPY_IN_RESPONSE => BackendMessage::CopyInResponse(c),
                    tag::COPY_OUT_RESPONSE => BackendMessage::CopyOutResponse(c),
                    _ => BackendMessage::CopyBothResponse(c),
                }
            }
            tag::NEGOTIATE_PROTOCOL_VERSION => parse_negotiate(&mut r)?,
            _ => {
                r = Reader::new(tag_byte, &[]);
                BackendMessage::Other {
                    tag: tag_byte,
                    body,
                }
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// The body of CopyInResponse, CopyOutResponse or CopyBothResponse.
fn parse_copy<'a>(r: &mut Reader<'a>) -> Result<CopyResponse<'a>, DecodeError> {
    let format = r.u8()?;
    let columns = r.i16()?;
    if columns < 0 {
        return Err(r.invalid("column count"));
    }
    let raw_formats = r.bytes(columns as usize * 2)?;
    Ok(CopyResponse {
        format,
        columns,
        raw_formats,
    })
}

/// The body of NegotiateProtocolVersion.
fn parse_negotiate<'a>(r: &mut Reader<'a>) -> Result<BackendMessage<'a>, DecodeError> {
    let minor = r.i32()?;
    let n = r.i32()?;
    if n < 0 {
        return Err(r.invalid("option count"));
    }
    // Grows with what is really there, not with the count sent.
    let mut options = Vec::new();
    for _ in 0..n {
        options.push(r.cstr()?);
    }
    Ok(BackendMessage::NegotiateProtocolVersion { minor, options })
}

fn parse_auth<'a>(r: &mut Reader<'a>) -> Result<Authentication<'a>, DecodeError> {
    let code = r.i32()?;
    Ok(match code {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let s = r.bytes(4)?;
            Authentication::Md5Password {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let raw = r.remaining();
            // A list of NUL-terminated names closed by an empty name.
            let mut check = Reader::new(b'R', raw);
            loop {
                if check.cstr()?.is_empty() {
                    break;
                }
            }
            check.finish()?;
            r.bytes(raw.len())?;
            Authentication::Sasl {
                mechanisms: SaslMechanisms { raw },
            }
        }
        11 => Authentication::SaslContinue {
            data: r.bytes(r.remaining().len())?,
        },
        12 => Authentication::SaslFinal {
            data: r.bytes(r.remaining().len())?,
        },
        _ => Authentication::Other {
            code,
            data: r.bytes(r.remaining().len())?,
        },
    })
}

impl Authentication<'_> {
    /// Whether this request ends the exchange successfully.
    pub fn is_ok(&self) -> bool {
        matches!(self, Authentication::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_fields_are_reachable_by_name() {
        let body = b"SFATAL\0VFATAL\0C57P01\0Mterminating\0Dwhy\0Hreconnect\0\0";
        let BackendMessage::ErrorResponse(e) = BackendMessage::parse(b'E', body).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(e.severity().as_deref(), Some("FATAL"));
        assert_eq!(e.code().as_deref(), Some("57P01"));
        assert_eq!(e.message().as_deref(), Some("terminating"));
        assert_eq!(e.detail().as_deref(), Some("why"));
        assert_eq!(e.hint().as_deref(), Some("reconnect"));
        assert_eq!(e.iter().count(), 6);
    }

    #[test]
    fn sasl_mechanisms_are_listed_in_order() {
        let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let BackendMessage::Authentication(Authentication::Sasl { mechanisms }) =
            BackendMessage::parse(b'R', body).unwrap()
        else {
            panic!("not sasl");
        };
        let names: Vec<_> = mechanisms.iter().collect();
        assert_eq!(names, vec![&b"SCRAM-SHA-256-PLUS"[..], b"SCRAM-SHA-256"]);
    }

    #[test]
    fn ready_for_query_rejects_unknown_status() {
        assert!(BackendMessage::parse(b'Z', b"X").is_err());
        assert_eq!(
            BackendMessage::parse(b'Z', b"T").unwrap(),
            BackendMessage::ReadyForQuery(TxStatus::InTransaction)
        );
    }
}
