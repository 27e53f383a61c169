//! What pgsteer knows about a user's password: a plaintext password, an md5
//! hash or a SCRAM verifier, parsed from PgBouncer's `userlist.txt` values and
//! from `pg_authid.rolpassword`. Nothing here prints a secret.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The largest iteration count accepted in a SCRAM verifier or from a server
/// (Postgres's own limit for `scram_iterations` is `INT_MAX`).
pub const MAX_ITERATIONS: u32 = i32::MAX as u32;

/// A plaintext password. Its `Debug` does not show it and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a plaintext password.
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password itself, for the exchanges that need it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An md5 password hash as Postgres stores it: `md5(password || user)`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Md5Hash(pub [u8; 16]);

impl Md5Hash {
    /// The 32 lowercase hex digits (without the `md5` prefix).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Md5Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Md5Hash(<redacted>)")
    }
}

/// A SCRAM-SHA-256 verifier, exactly what `pg_authid.rolpassword` holds:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// The PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt (decoded).
    pub salt: Vec<u8>,
    /// `H(ClientKey)`: what a client proof is checked against.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server-final message.
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// The verifier in `pg_authid.rolpassword` format.
    pub fn to_rolpassword(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A user's secret: how pgsteer checks the client's password, and how it logs
/// in to Postgres as that user.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plaintext password. An empty one never authenticates anyone (as in
    /// Postgres, which refuses empty passwords).
    Plain(Password),
    /// `md5<32 hex digits>`: md5 of password and user name.
    Md5(Md5Hash),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Md5(_) => f.write_str("Secret::Md5(<redacted>)"),
            Secret::Scram(v) => write!(f, "Secret::Scram({v:?})"),
        }
    }
}

/// Why a secret could not be parsed. It never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The value starts like a SCRAM verifier but is not one.
    #[error("malformed SCRAM-SHA-256 verifier: {0}")]
    MalformedScram(&'static str),
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

impl Secret {
    /// Parses a `userlist.txt` or `rolpassword` value. `md5` followed by 32
    /// hex digits is an md5 hash; a value starting with `SCRAM-SHA-256$` must
    /// be a well-formed verifier (an error, rather than Postgres's fallback to
    /// treating it as a plaintext password, so that a mangled verifier is
    /// noticed); anything else is a plaintext password.
    pub fn parse(value: &str) -> Result<Secret, SecretError> {
        if let Some(rest) = value.strip_prefix(SCRAM_PREFIX) {
            return parse_scram(rest).map(Secret::Scram);
        }
        if let Some(hash) = parse_md5(value) {
            return Ok(Secret::Md5(hash));
        }
        Ok(Secret::Plain(Password::new(value)))
    }

    /// The secret of an `auth_query` row: its `rolpassword` column. NULL (and
    /// an empty string) means the role has no password, so nobody can log in
    /// as it by password; that is `Ok(None)`, which callers treat exactly as
    /// an unknown user.
    pub fn from_rolpassword(rolpassword: Option<&str>) -> Result<Option<Secret>, SecretError> {
        match rolpassword {
            None | Some("") => Ok(None),
            Some(value) => Secret::parse(value).map(Some),
        }
    }

    /// Whether this is an empty plaintext password, which never authenticates.
    pub(crate) fn is_empty_password(&self) -> bool {
        matches!(self, Secret::Plain(p) if p.expose().is_empty())
    }
}

fn parse_md5(value: &str) -> Option<Md5Hash> {
    let digits = value.strip_prefix("md5")?.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_value(pair[0])? << 4 | hex_value(pair[1])?;
    }
    Some(Md5Hash(out))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses `<iterations>:<salt>$<StoredKey>:<ServerKey>` (after the prefix).
fn parse_scram(rest: &str) -> Result<ScramVerifier, SecretError> {
    let bad = SecretError::MalformedScram;
    let (params, keys) = rest
        .split_once('$')
        .ok_or(bad("missing '$' before the keys"))?;
    let (iterations, salt) = params
        .split_once(':')
        .ok_or(bad("missing ':' after the iteration count"))?;
    let (stored_key, server_key) = keys
        .split_once(':')
        .ok_or(bad("missing ':' between the keys"))?;
    let iterations = parse_iterations(iterations).ok_or(bad("invalid iteration count"))?;
    let salt = BASE64.decode(salt).map_err(|_| bad("salt is not base64"))?;
    if salt.is_empty() {
        return Err(bad("empty salt"));
    }
    Ok(ScramVerifier {
        iterations,
        salt,
        stored_key: decode_key(stored_key).ok_or(bad("StoredKey is not 32 bytes of base64"))?,
        server_key: decode_key(server_key).ok_or(bad("ServerKey is not 32 bytes of base64"))?,
    })
}

/// A positive decimal iteration count of at most [`MAX_ITERATIONS`], digits only.
pub(crate) fn parse_iterations(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = s.parse().ok()?;
    (1..=MAX_ITERATIONS).contains(&n).then_some(n)
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    BASE64.decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The RFC 7677 user's verifier (password "pencil", the RFC's salt and iteration count) as
    // pg_authid stores it; computed independently with Python's hashlib.
    const PG_VERIFIER: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    #[test]
    fn a_verifier_in_pg_authid_format_parses_and_prints_back_identically() {
        let Secret::Scram(v) = Secret::parse(PG_VERIFIER).unwrap() else {
            panic!("not a verifier");
        };
        assert_eq!(v.iterations, 4096);
        assert_eq!(BASE64.encode(&v.salt), "W22ZaJ0SNY7soEsUEjb6gQ==");
        assert_eq!(v.to_rolpassword(), PG_VERIFIER);
    }

    #[test]
    fn a_verifier_from_postgres_protocol_parses() {
        let text = postgres_protocol::password::scram_sha_256(b"pencil");
        assert!(matches!(Secret::parse(&text), Ok(Secret::Scram(_))));
    }

    #[test]
    fn md5_hashes_parse_in_either_case_and_other_text_is_plaintext() {
        let lower = "md5a3556571e93b0d20722ba62be61e8c2d";
        let Secret::Md5(h) = Secret::parse(lower).unwrap() else {
            panic!("not md5")
        };
        assert_eq!(h.to_hex(), &lower[3..]);
        assert_eq!(
            Secret::parse(&lower.to_uppercase().replacen("MD5", "md5", 1)).unwrap(),
            Secret::Md5(h)
        );
        for plain in [
            "md5",
            "md5a3556571e93b0d20722ba62be61e8c2",
            "md5a3556571e93b0d20722ba62be61e8c2dd",
            "md5g3556571e93b0d20722ba62be61e8c2d",
            "pencil",
            "",
            "SCRAM-SHA-256",
        ] {
            assert_eq!(
                Secret::parse(plain).unwrap(),
                Secret::Plain(Password::new(plain)),
                "{plain}"
            );
        }
    }

    #[test]
    fn malformed_scram_verifiers_are_errors_not_passwords() {
        let (head, keys) = PG_VERIFIER.split_at(PG_VERIFIER.find("$W").unwrap());
        let cases = [
            "SCRAM-SHA-256$".to_string(),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==".to_string(),
            PG_VERIFIER.replace("4096", "0"),
            PG_VERIFIER.replace("4096", "-1"),
            PG_VERIFIER.replace("4096", "+4096"),
            PG_VERIFIER.replace("4096", "99999999999"),
            PG_VERIFIER.replace("4096", "2147483648"),
            PG_VERIFIER.replace("4096", ""),
            PG_VERIFIER.replace("W22ZaJ0SNY7soEsUEjb6gQ==", ""),
            PG_VERIFIER.replace("W22ZaJ0SNY7soEsUEjb6gQ==", "!!"),
            format!("{head}{}", &keys[..keys.len() - 4]),
            format!("{head}$AAAA:AAAA"),
            PG_VERIFIER.replacen(':', ";", 2),
        ];
        for case in cases {
            assert!(
                matches!(Secret::parse(&case), Err(SecretError::MalformedScram(_))),
                "{case}"
            );
        }
        assert!(matches!(
            Secret::parse(&PG_VERIFIER.replace("4096", "2147483647")),
            Ok(Secret::Scram(_))
        ));
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let secrets = [
            Secret::parse("hunter2").unwrap(),
            Secret::parse("md5a3556571e93b0d20722ba62be61e8c2d").unwrap(),
            Secret::parse(PG_VERIFIER).unwrap(),
        ];
        for s in secrets {
            let shown = format!("{s:?} {s:#?}");
            for needle in ["hunter2", "a3556571", "W22ZaJ0", "WG5d8", "wfPLw"] {
                assert!(!shown.contains(needle), "{shown}");
            }
        }
        assert_eq!(
            format!("{:?}", Password::new("hunter2")),
            "Password(<redacted>)"
        );
    }

    #[test]
    fn a_null_or_empty_rolpassword_means_no_password() {
        assert_eq!(Secret::from_rolpassword(None), Ok(None));
        assert_eq!(Secret::from_rolpassword(Some("")), Ok(None));
        assert!(matches!(
            Secret::from_rolpassword(Some(PG_VERIFIER)),
            Ok(Some(Secret::Scram(_)))
        ));
        assert!(Secret::from_rolpassword(Some("SCRAM-SHA-256$x")).is_err());
    }
}
