//! Cleartext password authentication (AuthenticationCleartextPassword): the
//! check of a password a client sent in the clear, against any kind of
//! secret, as Postgres's `password` method does. Only ever offered over TLS;
//! that rule belongs to the session, which knows the connection.

use subtle::ConstantTimeEq;

use super::md5::hash_password;
use super::scram::{SaltKey, ScramKeys, verifier_for};
use super::secrets::Secret;
use super::{AuthError, Credentials, FailureReason, password_message};

/// Checks the client's PasswordMessage body (with or without its NUL) for
/// `user`. On success, returns what pgsteer can log in to Postgres with —
/// derived from the secret, so never more than pgsteer already had (a SCRAM
/// verifier yields SCRAM keys, not the password). Unknown users cost a
/// derivation too (with `salt_key`'s salt), so they take as long as SCRAM users.
/// CPU-bound (PBKDF2 with the verifier's iteration count): run it off the
/// async reactor.
pub fn verify(
    user: &str,
    secret: Option<&Secret>,
    salt_key: &SaltKey,
    body: &[u8],
) -> Result<Credentials, AuthError> {
    let password = password_message(body);
    let fail = |reason| {
        Err(AuthError::Failed {
            user: user.to_owned(),
            reason,
        })
    };
    match secret {
        None => {
            verifier_for(
                password,
                &salt_key.salt_for(user),
                super::scram::DEFAULT_ITERATIONS,
            );
            fail(FailureReason::UnknownUser)
        }
        Some(s) if s.is_empty_password() => fail(FailureReason::NoPassword),
        Some(Secret::Plain(p)) => {
            if bool::from(password.ct_eq(p.expose().as_bytes())) {
                Ok(Credentials::Password(p.clone()))
            } else {
                fail(FailureReason::WrongPassword)
            }
        }
        Some(Secret::Md5(h)) => {
            if bool::from(hash_password(password, user).0.ct_eq(&h.0)) {
                Ok(Credentials::Md5(*h))
            } else {
                fail(FailureReason::WrongPassword)
            }
        }
        Some(Secret::Scram(v)) => {
            let keys = ScramKeys::from_password(password, &v.salt, v.iterations);
            if bool::from(keys.stored_key().ct_eq(&v.stored_key)) {
                Ok(Credentials::Scram(keys))
            } else {
                fail(FailureReason::WrongPassword)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Password;

    fn key() -> SaltKey {
        SaltKey::new([7; 32])
    }

    #[test]
    fn the_right_password_is_accepted_against_every_kind_of_secret() {
        let scram = Secret::Scram(verifier_for(b"pencil", b"salt", 4096));
        let md5 = Secret::Md5(hash_password(b"pencil", "alice"));
        let plain = Secret::Plain(Password::new("pencil"));
        let Credentials::Scram(keys) = verify("alice", Some(&scram), &key(), b"pencil\0").unwrap()
        else {
            panic!("a SCRAM verifier yields SCRAM keys");
        };
        assert_eq!(keys, ScramKeys::from_password(b"pencil", b"salt", 4096));
        assert_eq!(
            verify("alice", Some(&md5), &key(), b"pencil").unwrap(),
            Credentials::Md5(hash_password(b"pencil", "alice"))
        );
        assert_eq!(
            verify("alice", Some(&plain), &key(), b"pencil").unwrap(),
            Credentials::Password(Password::new("pencil"))
        );
    }

    #[test]
    fn wrong_passwords_and_unknown_users_fail_alike() {
        let scram = Secret::Scram(verifier_for(b"pencil", b"salt", 4096));
        let plain = Secret::Plain(Password::new("pencil"));
        let empty = Secret::Plain(Password::new(""));
        for (secret, body) in [
            (Some(&scram), &b"pencil!"[..]),
            (Some(&plain), b"pencil\0\0"),
            (None, b"pencil"),
            (Some(&empty), b""),
            (Some(&plain), b""),
        ] {
            let e = verify("alice", secret, &key(), body).unwrap_err();
            assert_eq!(
                e.to_string(),
                "password authentication failed for user \"alice\""
            );
            assert_eq!(e.sqlstate().code(), "28P01");
        }
    }
}
