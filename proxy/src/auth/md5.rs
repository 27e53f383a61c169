//! md5 password authentication (AuthenticationMD5Password): the check pgsteer
//! runs towards a client and the answer it gives Postgres. Weak by design of
//! the protocol, so only used where configured; a stored md5 hash is enough
//! to answer (pass-the-hash), as in PgBouncer.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::secrets::{Md5Hash, Secret, hex};
use super::{AuthError, Credentials, FailureReason, LoginError, password_message};

/// A fresh random salt for AuthenticationMD5Password.
pub fn new_salt() -> Result<[u8; 4], AuthError> {
    let mut salt = [0u8; 4];
    getrandom::fill(&mut salt).map_err(AuthError::Random)?;
    Ok(salt)
}

/// The md5 hash Postgres stores: `md5(password || user)`.
pub fn hash_password(password: &[u8], user: &str) -> Md5Hash {
    Md5Hash(md5(&[password, user.as_bytes()]))
}

/// The PasswordMessage answer to a salt: `"md5" || hex(md5(hex(hash) || salt))`.
fn salted_response(hash: &Md5Hash, salt: [u8; 4]) -> String {
    format!("md5{}", hex(&md5(&[hash.to_hex().as_bytes(), &salt])))
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// An md5 exchange with a client, after AuthenticationMD5Password was sent.
#[derive(Debug)]
pub struct Md5Server {
    user: String,
    salt: [u8; 4],
    /// The stored hash to check against (a dummy one when doomed).
    hash: Md5Hash,
    doomed: Option<FailureReason>,
    credentials: Option<Credentials>,
}

impl Md5Server {
    /// Starts an exchange with `salt` ([`new_salt`] in production), to be sent
    /// in AuthenticationMD5Password. Unknown users and secrets that cannot
    /// check md5 (a SCRAM verifier) get the same exchange, doomed to fail.
    pub fn start(user: &str, secret: Option<&Secret>, salt: [u8; 4]) -> Md5Server {
        let (hash, doomed, credentials) = match secret {
            None => (Md5Hash([0; 16]), Some(FailureReason::UnknownUser), None),
            Some(s) if s.is_empty_password() => {
                (Md5Hash([0; 16]), Some(FailureReason::NoPassword), None)
            }
            Some(Secret::Scram(_)) => (Md5Hash([0; 16]), Some(FailureReason::UnusableSecret), None),
            Some(Secret::Plain(p)) => (
                hash_password(p.expose().as_bytes(), user),
                None,
                Some(Credentials::Password(p.clone())),
            ),
            Some(Secret::Md5(h)) => (*h, None, Some(Credentials::Md5(*h))),
        };
        Md5Server {
            user: user.to_owned(),
            salt,
            hash,
            doomed,
            credentials,
        }
    }

    /// The salt for AuthenticationMD5Password.
    pub fn salt(&self) -> [u8; 4] {
        self.salt
    }

    /// Checks the client's PasswordMessage body (with or without its NUL).
    /// Returns what pgsteer can log in to Postgres with; any failure is the
    /// same [`AuthError::Failed`].
    pub fn finish(self, body: &[u8]) -> Result<Credentials, AuthError> {
        let expected = salted_response(&self.hash, self.salt);
        let matches: bool = password_message(body).ct_eq(expected.as_bytes()).into();
        let reason = match (self.doomed, self.credentials) {
            (None, Some(credentials)) if matches => return Ok(credentials),
            (Some(reason), _) => reason,
            (None, _) => FailureReason::WrongPassword,
        };
        Err(AuthError::Failed {
            user: self.user,
            reason,
        })
    }
}

/// The PasswordMessage body (without NUL) that answers Postgres's
/// AuthenticationMD5Password for `user`: from a plaintext password or an md5
/// hash; SCRAM keys cannot answer md5.
pub fn client_response(
    credentials: &Credentials,
    user: &str,
    salt: [u8; 4],
) -> Result<String, LoginError> {
    let hash = match credentials {
        Credentials::Password(p) => hash_password(p.expose().as_bytes(), user),
        Credentials::Md5(h) => *h,
        Credentials::Scram(_) => {
            return Err(LoginError::Unusable(
                "only SCRAM keys are known, but the server asks for md5",
            ));
        }
        Credentials::None => {
            return Err(LoginError::Unusable(
                "no password is known (auth method trust), but the server asks for one",
            ));
        }
    };
    Ok(salted_response(&hash, salt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Password;

    const SALT: [u8; 4] = [0x2a, 0x00, 0xff, 0x10];

    fn answer(user: &str, password: &str) -> String {
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), SALT)
    }

    #[test]
    fn stored_hashes_match_postgres() {
        assert_eq!(
            hash_password(b"pencil", "postgres").to_hex(),
            "4c21b325d75177d5e9b9789a50ab0c9c"
        );
        let theirs = postgres_protocol::password::md5(b"s3cr\xc3\xa9t", "alice");
        assert_eq!(
            format!(
                "md5{}",
                hash_password("s3crét".as_bytes(), "alice").to_hex()
            ),
            theirs
        );
    }

    #[test]
    fn the_right_password_is_accepted_against_plain_and_md5_secrets() {
        let plain = Secret::Plain(Password::new("pencil"));
        let md5 = Secret::Md5(hash_password(b"pencil", "alice"));
        let ok = Md5Server::start("alice", Some(&plain), SALT)
            .finish(answer("alice", "pencil").as_bytes());
        assert_eq!(ok.unwrap(), Credentials::Password(Password::new("pencil")));
        let with_nul = format!("{}\0", answer("alice", "pencil"));
        let ok = Md5Server::start("alice", Some(&md5), SALT).finish(with_nul.as_bytes());
        assert_eq!(
            ok.unwrap(),
            Credentials::Md5(hash_password(b"pencil", "alice"))
        );
    }

    #[test]
    fn a_wrong_password_an_unknown_user_and_a_scram_secret_all_fail_alike() {
        let md5 = Secret::Md5(hash_password(b"pencil", "alice"));
        let scram = Secret::Scram(crate::auth::scram::verifier_for(b"pencil", b"salt", 4096));
        let empty = Secret::Plain(Password::new(""));
        let cases = [
            (
                Some(&md5),
                answer("alice", "wrong"),
                FailureReason::WrongPassword,
            ),
            (
                Some(&md5),
                answer("bob", "pencil"),
                FailureReason::WrongPassword,
            ),
            (None, answer("alice", "pencil"), FailureReason::UnknownUser),
            (
                Some(&scram),
                answer("alice", "pencil"),
                FailureReason::UnusableSecret,
            ),
            (Some(&empty), answer("alice", ""), FailureReason::NoPassword),
        ];
        for (secret, response, want) in cases {
            let e = Md5Server::start("alice", secret, SALT)
                .finish(response.as_bytes())
                .unwrap_err();
            assert_eq!(e.sqlstate().code(), "28P01");
            assert_eq!(
                e.to_string(),
                "password authentication failed for user \"alice\""
            );
            assert!(
                matches!(e, AuthError::Failed { reason, .. } if reason == want),
                "{e:?}"
            );
        }
    }

    #[test]
    fn garbage_responses_fail_without_panicking() {
        let md5 = Secret::Md5(hash_password(b"pencil", "alice"));
        let good = answer("alice", "pencil");
        for end in 0..good.len() {
            assert!(
                Md5Server::start("alice", Some(&md5), SALT)
                    .finish(&good.as_bytes()[..end])
                    .is_err()
            );
        }
        for body in [&b""[..], b"\0", b"\0\0", b"md5", &[0xff; 300]] {
            assert!(
                Md5Server::start("alice", Some(&md5), SALT)
                    .finish(body)
                    .is_err()
            );
        }
    }

    #[test]
    fn pgsteer_answers_postgres_from_a_password_or_a_hash_but_not_from_scram_keys() {
        let from_password = client_response(
            &Credentials::Password(Password::new("pencil")),
            "alice",
            SALT,
        );
        let from_hash = client_response(
            &Credentials::Md5(hash_password(b"pencil", "alice")),
            "alice",
            SALT,
        );
        assert_eq!(from_password.unwrap(), answer("alice", "pencil"));
        assert_eq!(from_hash.unwrap(), answer("alice", "pencil"));
        let keys = crate::auth::ScramKeys::from_password(b"pencil", b"salt", 4096);
        assert!(matches!(
            client_response(&Credentials::Scram(keys), "alice", SALT),
            Err(LoginError::Unusable(_))
        ));
    }

    #[test]
    fn salts_are_random() {
        assert_ne!(new_salt().unwrap(), new_salt().unwrap());
    }
}
