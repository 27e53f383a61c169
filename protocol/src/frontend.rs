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

#[cfg(test)]
mod tests {
    use super::*;

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
