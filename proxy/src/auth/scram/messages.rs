//! The four SCRAM messages (RFC 5802 §7) parsed strictly from untrusted bytes:
//! attribute names and order are checked, nonces must be printable, base64
//! must be canonical. Errors are short static descriptions; nothing panics.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::auth::secrets::parse_iterations;

/// The channel-binding flag of a gs2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gs2Flag<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    Yes,
    /// `p=<cb-name>`: the client binds with this channel-binding type.
    Bind(&'a [u8]),
}

/// A client-first-message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientFirst<'a> {
    /// The gs2 header including its two commas (`n,,`), echoed in `c=`.
    pub gs2_header: &'a [u8],
    /// Its channel-binding flag.
    pub flag: Gs2Flag<'a>,
    /// client-first-message-bare, part of the AuthMessage.
    pub bare: &'a [u8],
    /// The client nonce.
    pub nonce: &'a str,
}

/// A client-final-message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ClientFinal<'a> {
    /// The decoded `c=` attribute: gs2 header plus channel-binding data.
    pub channel_binding: Vec<u8>,
    /// The combined nonce.
    pub nonce: &'a [u8],
    /// client-final-message-without-proof, part of the AuthMessage.
    pub without_proof: &'a [u8],
    /// The decoded proof.
    pub proof: [u8; 32],
}

/// A server-first-message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ServerFirst<'a> {
    /// The combined nonce.
    pub nonce: &'a str,
    /// The decoded salt.
    pub salt: Vec<u8>,
    /// The iteration count.
    pub iterations: u32,
}

/// A server-final-message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerFinal<'a> {
    /// `v=`: the decoded server signature.
    Verifier([u8; 32]),
    /// `e=`: the server refused.
    Error(&'a str),
}

type Result<T> = std::result::Result<T, &'static str>;

/// A cursor over comma-separated `x=value` attributes.
struct Attrs<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Attrs<'a> {
    fn new(input: &'a [u8]) -> Self {
        Attrs { input, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek_name(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// The value of attribute `name` (up to the next comma or the end), consuming a following comma.
    fn expect(&mut self, name: u8, missing: &'static str) -> Result<&'a [u8]> {
        let rest = self.input.get(self.pos..).unwrap_or_default();
        if rest.len() < 2 || rest[0] != name || rest[1] != b'=' {
            return Err(missing);
        }
        let value_start = self.pos + 2;
        let value_len = rest[2..]
            .iter()
            .position(|&b| b == b',')
            .unwrap_or(rest.len() - 2);
        self.pos = value_start + value_len;
        if self.pos < self.input.len() {
            self.pos += 1; // the comma
            if self.at_end() {
                return Err("trailing comma");
            }
        }
        Ok(&self.input[value_start..value_start + value_len])
    }

    /// Skips optional extensions (`ALPHA "=" 1*value-char`) up to the end, or up to `stop`.
    fn skip_extensions(&mut self, stop: Option<u8>) -> Result<()> {
        while let Some(name) = self.peek_name() {
            if Some(name) == stop {
                break;
            }
            if !name.is_ascii_alphabetic() {
                return Err("malformed attribute");
            }
            let value = self.expect(name, "malformed attribute")?;
            if value.is_empty() {
                return Err("empty attribute value");
            }
        }
        Ok(())
    }

    fn done(&self) -> Result<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err("unexpected attribute")
        }
    }
}

/// Whether `s` is a valid, non-empty nonce (RFC 5802 `printable`: 0x21–0x7E except ',').
pub(crate) fn is_printable(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// RFC 5802 `cb-name`: 1*(ALPHA / DIGIT / "." / "-").
fn is_cb_name(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn nonce_str(value: &[u8]) -> Result<&str> {
    if !is_printable(value) {
        return Err("invalid nonce");
    }
    std::str::from_utf8(value).map_err(|_| "invalid nonce")
}

fn base64(value: &[u8], what: &'static str) -> Result<Vec<u8>> {
    BASE64.decode(value).map_err(|_| what)
}

fn base64_32(value: &[u8], what: &'static str) -> Result<[u8; 32]> {
    base64(value, what)?.try_into().map_err(|_| what)
}

/// Parses a client-first-message. Authorization identities (`a=`) and
/// mandatory extensions (`m=`) are refused, as Postgres does; the user name
/// (`n=`) is ignored (the startup packet's user counts), but must be there.
pub(crate) fn parse_client_first(msg: &[u8]) -> Result<ClientFirst<'_>> {
    let mut a = Attrs::new(msg);
    let flag = match a.peek_name() {
        Some(b'n') if msg.get(1) == Some(&b',') => Gs2Flag::No,
        Some(b'y') if msg.get(1) == Some(&b',') => Gs2Flag::Yes,
        Some(b'p') => Gs2Flag::Bind(a.expect(b'p', "malformed channel-binding flag")?),
        _ => return Err("malformed channel-binding flag"),
    };
    match flag {
        Gs2Flag::Bind(name) if !is_cb_name(name) => return Err("malformed channel-binding type"),
        Gs2Flag::Bind(_) if a.pos == msg.len() => return Err("malformed gs2 header"),
        Gs2Flag::Bind(_) => {}
        Gs2Flag::No | Gs2Flag::Yes => a.pos = 2,
    }
    match a.peek_name() {
        Some(b',') => a.pos += 1,
        Some(b'a') => return Err("authorization identities are not supported"),
        _ => return Err("malformed gs2 header"),
    }
    let gs2_header = &msg[..a.pos];
    let bare = &msg[a.pos..];
    if a.peek_name() == Some(b'm') {
        return Err("mandatory extensions are not supported");
    }
    a.expect(b'n', "missing user name")?;
    let nonce = nonce_str(a.expect(b'r', "missing nonce")?)?;
    a.skip_extensions(None)?;
    a.done()?;
    Ok(ClientFirst {
        gs2_header,
        flag,
        bare,
        nonce,
    })
}

/// Parses a client-final-message: `c=…,r=…[,ext…],p=…`, the proof last.
pub(crate) fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>> {
    let mut a = Attrs::new(msg);
    let channel_binding = base64(
        a.expect(b'c', "missing channel binding")?,
        "invalid channel binding",
    )?;
    let nonce = a.expect(b'r', "missing nonce")?;
    nonce_str(nonce)?;
    a.skip_extensions(Some(b'p'))?;
    let proof_start = a.pos;
    let proof = base64_32(a.expect(b'p', "missing proof")?, "invalid proof")?;
    a.done()?;
    // proof_start is past the comma that precedes "p=" (at least "c=,r=x," came before).
    let without_proof = &msg[..proof_start - 1];
    Ok(ClientFinal {
        channel_binding,
        nonce,
        without_proof,
        proof,
    })
}

/// Parses a server-first-message: `r=…,s=…,i=…[,ext…]`.
pub(crate) fn parse_server_first(msg: &[u8]) -> Result<ServerFirst<'_>> {
    let mut a = Attrs::new(msg);
    if a.peek_name() == Some(b'm') {
        return Err("mandatory extensions are not supported");
    }
    let nonce = nonce_str(a.expect(b'r', "missing nonce")?)?;
    let salt = base64(a.expect(b's', "missing salt")?, "invalid salt")?;
    if salt.is_empty() {
        return Err("empty salt");
    }
    let iterations = a.expect(b'i', "missing iteration count")?;
    let iterations = std::str::from_utf8(iterations)
        .ok()
        .and_then(parse_iterations)
        .ok_or("invalid iteration count")?;
    a.skip_extensions(None)?;
    a.done()?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// Parses a server-final-message: `v=…` or `e=…`, then optional extensions.
pub(crate) fn parse_server_final(msg: &[u8]) -> Result<ServerFinal<'_>> {
    let mut a = Attrs::new(msg);
    let outcome = match a.peek_name() {
        Some(b'v') => ServerFinal::Verifier(base64_32(
            a.expect(b'v', "missing verifier")?,
            "invalid verifier",
        )?),
        Some(b'e') => {
            let value = a.expect(b'e', "missing error")?;
            let text = std::str::from_utf8(value).map_err(|_| "invalid error value")?;
            ServerFinal::Error(text)
        }
        _ => return Err("missing verifier"),
    };
    a.skip_extensions(None)?;
    a.done()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn the_rfc_7677_messages_parse() {
        let first = parse_client_first(CLIENT_FIRST).unwrap();
        assert_eq!(first.gs2_header, b"n,,");
        assert_eq!(first.flag, Gs2Flag::No);
        assert_eq!(first.bare, b"n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first.nonce, "rOprNGfwEbeRWgbNEkqO");
        let fin = parse_client_final(CLIENT_FINAL).unwrap();
        assert_eq!(fin.channel_binding, b"n,,");
        assert_eq!(
            fin.without_proof,
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        let sf = parse_server_first(SERVER_FIRST).unwrap();
        assert_eq!((sf.iterations, sf.salt.len()), (4096, 16));
        assert!(matches!(
            parse_server_final(SERVER_FINAL),
            Ok(ServerFinal::Verifier(_))
        ));
        assert_eq!(
            parse_server_final(b"e=invalid-proof"),
            Ok(ServerFinal::Error("invalid-proof"))
        );
    }

    #[test]
    fn gs2_headers_with_binding_and_extensions_parse() {
        let first = parse_client_first(b"p=tls-server-end-point,,n=,r=abc,x=1").unwrap();
        assert_eq!(first.flag, Gs2Flag::Bind(b"tls-server-end-point"));
        assert_eq!(first.gs2_header, b"p=tls-server-end-point,,");
        assert_eq!(first.bare, b"n=,r=abc,x=1");
        assert_eq!(
            parse_client_first(b"y,,n=*,r=abc").unwrap().flag,
            Gs2Flag::Yes
        );
        let fin = parse_client_final(
            b"c=eSws,r=abcdef,x=ext,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        )
        .unwrap();
        assert_eq!(fin.without_proof, b"c=eSws,r=abcdef,x=ext");
        assert_eq!(
            parse_server_first(b"r=ab,s=QUJD,i=1,z=q")
                .unwrap()
                .iterations,
            1
        );
    }

    #[test]
    fn truncated_messages_are_rejected_unless_still_well_formed() {
        // (message, parser, shortest well-formed prefix): a client-first cut inside its nonce
        // and a server-first cut inside its iteration count are still valid messages.
        for (msg, parse, shortest) in [
            (
                CLIENT_FIRST,
                (|m| parse_client_first(m).is_ok()) as fn(&[u8]) -> bool,
                13,
            ),
            (
                CLIENT_FINAL,
                |m| parse_client_final(m).is_ok(),
                CLIENT_FINAL.len(),
            ),
            (
                SERVER_FIRST,
                |m| parse_server_first(m).is_ok(),
                SERVER_FIRST.len() - 3,
            ),
            (
                SERVER_FINAL,
                |m| parse_server_final(m).is_ok(),
                SERVER_FINAL.len(),
            ),
        ] {
            assert!(parse(msg));
            for end in 0..msg.len() {
                let cut = &msg[..end];
                assert_eq!(
                    parse(cut),
                    end >= shortest,
                    "{:?}",
                    String::from_utf8_lossy(cut)
                );
            }
        }
    }

    #[test]
    fn malformed_client_first_messages_are_rejected() {
        for msg in [
            &b""[..],
            b"n",
            b"n,",
            b"x,,n=,r=abc",
            b"p,,n=,r=abc",
            b"p=,,n=,r=abc",
            b"p=tls-server-end-point,n=,r=abc",
            b"n,a=admin,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,r=abc,n=",
            b"n,,n=,r=",
            b"n,,n=,r=a,b",
            b"n,,n=,r=a b",
            b"n,,n=,r=\xff",
            b"n,,n=,r=abc,",
            b"n,,n=,r=abc,1=x",
            b"n,,n=,r=abc,x=",
            b"n,,n=,r=abc,x",
            b"nn,n=,r=abc",
        ] {
            assert!(
                parse_client_first(msg).is_err(),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn malformed_client_final_messages_are_rejected() {
        let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        for msg in [
            "r=abc,c=biws,p=x".to_string(),
            format!("c=biws,p={proof}"),
            format!("c=biws,r=abc,p={proof},x=1"),
            format!("c=biws,r=abc,p={}", &proof[..40]),
            "c=biws,r=abc,p=AAAA".to_string(),
            format!("c=bi#s,r=abc,p={proof}"),
            format!("c=biw,r=abc,p={proof}"),
            format!("c=biws,r=a,c,p={proof}"),
            format!("c=biws,r=abc,,p={proof}"),
            format!("c=biws,r=abc,p={proof},"),
        ] {
            assert!(parse_client_final(msg.as_bytes()).is_err(), "{msg}");
        }
    }

    #[test]
    fn huge_zero_and_odd_iteration_counts_are_rejected() {
        for i in [
            "0",
            "-1",
            "+1",
            "4096x",
            "2147483648",
            "99999999999999999999",
            "",
            " 1",
            "1.0",
        ] {
            let msg = format!("r=ab,s=QUJD,i={i}");
            assert!(parse_server_first(msg.as_bytes()).is_err(), "{i}");
        }
        for msg in [
            "s=QUJD,r=ab,i=1",
            "r=ab,s=,i=1",
            "r=ab,s=QUJ,i=1",
            "m=x,r=ab,s=QUJD,i=1",
            "r=a,b,s=QUJD,i=1",
        ] {
            assert!(parse_server_first(msg.as_bytes()).is_err(), "{msg}");
        }
    }

    #[test]
    fn malformed_server_final_messages_are_rejected() {
        for msg in [
            &b"v="[..],
            b"v=AAAA",
            b"x=1",
            b"e=\xff",
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,",
        ] {
            assert!(
                parse_server_final(msg).is_err(),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_client_first(&bytes);
            let _ = parse_client_final(&bytes);
            let _ = parse_server_first(&bytes);
            let _ = parse_server_final(&bytes);
        }

        #[test]
        fn attribute_shaped_input_never_panics_the_parsers(s in "[nypcrsiveam=,a-z0-9+/]{0,60}") {
            let _ = parse_client_first(s.as_bytes());
            let _ = parse_client_final(s.as_bytes());
            let _ = parse_server_first(s.as_bytes());
            let _ = parse_server_final(s.as_bytes());
        }
    }
}
