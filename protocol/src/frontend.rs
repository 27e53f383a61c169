//! Client→server messages the proxy acts on, as borrowed views of a frame body.

use crate::{DecodeError, Reader};

/// Message type bytes of the frontend messages pgsteer looks at.
pub mod tag {
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Parse (extended protocol).
    pub const PARSE: u8 = b'P';
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Sync: ends an extended-protocol batch; the server answers ReadyForQuery.
    pub const SYNC: u8 = b'S';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// Password, SASLInitialResponse and SASLResponse all use `p`.
    pub const PASSWORD: u8 = b'p';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// FunctionCall (answered with ReadyForQuery like a query).
    pub const FUNCTION_CALL: u8 = b'F';
}

/// A client→server message, borrowed from its frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// `Q`: SQL text in the client encoding.
    Query {
        /// The query string, without its terminator.
        sql: &'a [u8],
    },
    /// `P`: prepare a statement.
    Parse {
        /// Statement name (empty = unnamed).
        name: &'a [u8],
        /// The query string.
        query: &'a [u8],
        /// Number of parameter types specified.
        param_types: i16,
    },
    /// `S`.
    Sync,
    /// `H`.
    Flush,
    /// `X`.
    Terminate,
    /// `p`: password or SASL data; which one depends on the authentication request before it.
    Password {
        /// Raw body.
        data: &'a [u8],
    },
    /// Anything else; relayed untouched.
    Other {
        /// Message type byte.
        tag: u8,
        /// Body.
        body: &'a [u8],
    },
}

impl<'a> FrontendMessage<'a> {
    /// Decodes the body of a frame with message type `tag`.
    pub fn parse(tag_byte: u8, body: &'a [u8]) -> Result<FrontendMessage<'a>, DecodeError> {
        let mut r = Reader::new(tag_byte, body);
        let msg = match tag_byte {
            tag::QUERY => FrontendMessage::Query { sql: r.cstr()? },
            tag::PARSE => {
                let name = r.cstr()?;
                let query = r.cstr()?;
                let param_types = r.i16()?;
                if param_types < 0 {
                    return Err(DecodeError::Invalid {
                        tag: tag_byte,
                        what: "parameter count",
                    });
                }
                r.bytes(param_types as usize * 4)?;
                FrontendMessage::Parse {
                    name,
                    query,
                    param_types,
                }
            }
            tag::SYNC => FrontendMessage::Sync,
            tag::FLUSH => FrontendMessage::Flush,
            tag::TERMINATE => FrontendMessage::Terminate,
            tag::PASSWORD => {
                r = Reader::new(tag_byte, &[]);
                FrontendMessage::Password { data: body }
            }
            _ => {
                r = Reader::new(tag_byte, &[]);
                FrontendMessage::Other {
                    tag: tag_byte,
                    body,
                }
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

/// `p` answering AuthenticationSASL: the mechanism the client chose and its first message.
///
/// PasswordMessage, SASLInitialResponse and SASLResponse share the tag `p`; only the
/// authentication request before it says which one a `p` is, so [`FrontendMessage::parse`]
/// leaves it as [`FrontendMessage::Password`] and the caller that knows parses this view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// The SASL mechanism, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a [u8],
    /// The mechanism's initial response; `None` when the client sent none (length -1).
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    /// Decodes the body of a `p` frame sent right after AuthenticationSASL.
    pub fn parse(body: &'a [u8]) -> Result<SaslInitialResponse<'a>, DecodeError> {
        let mut r = Reader::new(tag::PASSWORD, body);
        let mechanism = r.cstr()?;
        let data = match r.i32()? {
            -1 => None,
            len => {
                let len = usize::try_from(len).map_err(|_| DecodeError::Invalid {
                    tag: tag::PASSWORD,
                    what: "SASL data length",
                })?;
                Some(r.bytes(len)?)
            }
        };
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    /// The GS2 channel-binding flag a SCRAM client-first-message starts with: `n` (the client
    /// cannot bind), `y` (it could, but believes the server cannot), `p` (it binds). `None`
    /// without data.
    pub fn gs2_flag(&self) -> Option<u8> {
        self.data?.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{HEADER_LEN, peek_frame};

    /// A `p` frame: mechanism, NUL, the data length as sent, then `data`.
    fn sasl_frame(mechanism: &[u8], len: i32, data: &[u8]) -> Vec<u8> {
        let mut body = mechanism.to_vec();
        body.push(0);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(data);
        let mut frame = vec![b'p'];
        frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn sasl_initial_responses_decode_to_mechanism_and_data() {
        let scram = &b"SCRAM-SHA-256"[..];
        // (frame, data, gs2 flag)
        type Row = (Vec<u8>, Option<&'static [u8]>, Option<u8>);
        let table: &[Row] = &[
            (
                sasl_frame(scram, 11, b"n,,n=,r=abc"),
                Some(b"n,,n=,r=abc"),
                Some(b'n'),
            ),
            (
                sasl_frame(scram, 11, b"y,,n=,r=abc"),
                Some(b"y,,n=,r=abc"),
                Some(b'y'),
            ),
            (sasl_frame(scram, 0, b""), Some(b""), None),
            (sasl_frame(scram, -1, b""), None, None),
        ];
        for (frame, data, flag) in table {
            let body = &frame[HEADER_LEN..];
            let m = SaslInitialResponse::parse(body).unwrap();
            assert_eq!((m.mechanism, m.data, m.gs2_flag()), (scram, *data, *flag));
        }
    }

    #[test]
    fn a_sasl_initial_response_is_incomplete_until_its_last_byte() {
        let frame = sasl_frame(b"SCRAM-SHA-256", 11, b"y,,n=,r=abc");
        for cut in 0..frame.len() {
            assert_eq!(peek_frame(&frame[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        let (header, body) = peek_frame(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(header.tag, tag::PASSWORD);
        assert_eq!(
            SaslInitialResponse::parse(body).unwrap().gs2_flag(),
            Some(b'y')
        );
    }

    #[test]
    fn malformed_sasl_initial_responses_are_errors() {
        let p = tag::PASSWORD;
        let table: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::MissingNul { tag: p }),
            (b"SCRAM-SHA-256", DecodeError::MissingNul { tag: p }),
            (b"SCRAM-SHA-256\0\0\0", DecodeError::Truncated { tag: p }),
            (
                b"SCRAM-SHA-256\0\0\0\0\x05n,,",
                DecodeError::Truncated { tag: p },
            ),
            (
                b"SCRAM-SHA-256\0\xff\xff\xff\xfe",
                DecodeError::Invalid {
                    tag: p,
                    what: "SASL data length",
                },
            ),
            (
                b"SCRAM-SHA-256\0\0\0\0\x01nX",
                DecodeError::TrailingBytes { tag: p, extra: 1 },
            ),
            (
                b"SCRAM-SHA-256\0\xff\xff\xff\xffn",
                DecodeError::TrailingBytes { tag: p, extra: 1 },
            ),
        ];
        for (body, want) in table {
            assert_eq!(
                SaslInitialResponse::parse(body).as_ref(),
                Err(want),
                "{body:?}"
            );
        }
        // Every prefix of a valid body is an error, never a panic.
        let frame = sasl_frame(b"SCRAM-SHA-256", 11, b"n,,n=,r=abc");
        let body = &frame[HEADER_LEN..];
        for cut in 0..body.len() {
            assert!(
                SaslInitialResponse::parse(&body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn parse_reads_name_query_and_skips_parameter_types() {
        let body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        assert_eq!(
            FrontendMessage::parse(b'P', body).unwrap(),
            FrontendMessage::Parse {
                name: b"s1",
                query: b"SELECT $1",
                param_types: 1
            }
        );
    }

    #[test]
    fn terminate_with_a_body_is_rejected() {
        assert!(FrontendMessage::parse(b'X', b"x").is_err());
        assert!(FrontendMessage::parse(b'Q', b"SELECT 1").is_err());
    }
}
