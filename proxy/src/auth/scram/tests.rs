//! SCRAM exchanges end to end: the RFC 7677 test vector on both sides, a real
//! client implementation (postgres-protocol's) against the server side,
//! ClientKey pass-through, channel-binding rules and malformed input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::client::MAX_LOGIN_ITERATIONS;
use super::*;
use crate::auth::secrets::{Password, Secret};
use crate::auth::{Credentials, FailureReason, LoginError};

// RFC 7677 §3.
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
// ClientKey for "pencil" with that salt, computed independently with Python's hashlib.
const CLIENT_KEY: &str = "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos=";

fn rfc_verifier() -> ScramVerifier {
    verifier_for(b"pencil", &BASE64.decode(SALT).unwrap(), 4096)
}

fn salt_key() -> SaltKey {
    SaltKey::new([42; 32])
}

/// Runs the server side with this secret and binding against a client-first.
fn start(
    user: &str,
    secret: Option<&Secret>,
    binding: &ServerBinding,
    mechanism: &str,
    client_first: &[u8],
) -> Result<(ScramServer, Vec<u8>), AuthError> {
    let key = salt_key();
    let ctx = ServerContext {
        user,
        secret,
        binding,
        salt_key: &key,
    };
    ScramServer::start(ctx, mechanism, client_first, SERVER_NONCE)
}

/// A whole exchange between postgres-protocol's client and our server.
fn exchange_with_real_client(
    password: &[u8],
    secret: Option<&Secret>,
    binding: &ServerBinding,
    client_binding: ChannelBinding,
) -> Result<ScramSuccess, AuthError> {
    let mechanism = match binding {
        ServerBinding::TlsServerEndPoint(_) => SCRAM_SHA_256_PLUS,
        ServerBinding::None => SCRAM_SHA_256,
    };
    let mut client = ScramSha256::new(password, client_binding);
    let (server, server_first) = start("alice", secret, binding, mechanism, client.message())?;
    client.update(&server_first).unwrap();
    let success = server.finish(client.message())?;
    client
        .finish(&success.server_final)
        .expect("the real client accepts our signature");
    Ok(success)
}

fn assert_failed(result: Result<ScramSuccess, AuthError>, want: FailureReason) {
    match result {
        Err(e @ AuthError::Failed { reason, .. }) => {
            assert_eq!(reason, want);
            assert_eq!(e.sqlstate().code(), "28P01");
            assert_eq!(
                e.to_string(),
                "password authentication failed for user \"alice\""
            );
        }
        other => panic!("expected a failed authentication, got {other:?}"),
    }
}

#[test]
fn the_rfc_7677_exchange_is_reproduced_by_the_server() {
    let secret = Secret::Scram(rfc_verifier());
    let (server, server_first) = start(
        "user",
        Some(&secret),
        &ServerBinding::None,
        SCRAM_SHA_256,
        CLIENT_FIRST.as_bytes(),
    )
    .unwrap();
    assert_eq!(String::from_utf8(server_first).unwrap(), SERVER_FIRST);
    let success = server.finish(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(
        String::from_utf8(success.server_final).unwrap(),
        SERVER_FINAL
    );
    let Credentials::Scram(keys) = success.credentials else {
        panic!("a verifier yields SCRAM keys")
    };
    assert_eq!(
        BASE64.encode(keys.client_key),
        CLIENT_KEY,
        "the recovered ClientKey"
    );
    assert_eq!(keys.verifier(), rfc_verifier());
}

#[test]
fn the_rfc_7677_exchange_is_reproduced_by_the_client_with_a_password_and_with_pass_through() {
    let keys = ScramKeys::from_password(b"pencil", &BASE64.decode(SALT).unwrap(), 4096);
    for credentials in [
        Credentials::Password(Password::new("pencil")),
        Credentials::Scram(keys),
    ] {
        let client = ScramClient::with_sasl_user(
            &credentials,
            ClientBinding::Unsupported,
            CLIENT_NONCE,
            "user",
        )
        .unwrap();
        assert_eq!(
            (client.mechanism(), client.client_first()),
            (SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
        );
        let (client, client_final) = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(client_final).unwrap(), CLIENT_FINAL);
        client.server_final(SERVER_FINAL.as_bytes()).unwrap();
    }
}

#[test]
fn a_real_client_logs_in_with_the_right_password_against_a_postgres_verifier() {
    let secret = Secret::parse(&postgres_protocol::password::scram_sha_256(b"pencil")).unwrap();
    let success = exchange_with_real_client(
        b"pencil",
        Some(&secret),
        &ServerBinding::None,
        ChannelBinding::unsupported(),
    )
    .unwrap();
    let Credentials::Scram(keys) = success.credentials else {
        panic!("a verifier yields SCRAM keys")
    };
    let Secret::Scram(verifier) = secret else {
        unreachable!()
    };
    assert_eq!(keys.verifier(), verifier);
}

#[test]
fn a_wrong_password_is_refused_with_28p01() {
    let secret = Secret::parse(&postgres_protocol::password::scram_sha_256(b"pencil")).unwrap();
    let result = exchange_with_real_client(
        b"pen",
        Some(&secret),
        &ServerBinding::None,
        ChannelBinding::unsupported(),
    );
    assert_failed(result, FailureReason::WrongPassword);
}

#[test]
fn a_plaintext_secret_logs_in_and_yields_the_password() {
    let secret = Secret::Plain(Password::new("pencil"));
    let success = exchange_with_real_client(
        b"pencil",
        Some(&secret),
        &ServerBinding::None,
        ChannelBinding::unrequested(),
    )
    .unwrap();
    assert_eq!(
        success.credentials,
        Credentials::Password(Password::new("pencil"))
    );
    let result = exchange_with_real_client(
        b"Pencil",
        Some(&secret),
        &ServerBinding::None,
        ChannelBinding::unsupported(),
    );
    assert_failed(result, FailureReason::WrongPassword);
}

#[test]
fn unknown_users_and_unusable_secrets_fail_like_a_wrong_password() {
    let md5 = Secret::parse("md5a3556571e93b0d20722ba62be61e8c2d").unwrap();
    let empty = Secret::Plain(Password::new(""));
    let none = ServerBinding::None;
    assert_failed(
        exchange_with_real_client(b"pencil", None, &none, ChannelBinding::unsupported()),
        FailureReason::UnknownUser,
    );
    assert_failed(
        exchange_with_real_client(b"pencil", Some(&md5), &none, ChannelBinding::unsupported()),
        FailureReason::UnusableSecret,
    );
    assert_failed(
        exchange_with_real_client(b"", Some(&empty), &none, ChannelBinding::unsupported()),
        FailureReason::NoPassword,
    );
}

#[test]
fn an_unknown_user_sees_the_same_stable_salt_as_a_plaintext_user_of_that_name() {
    let salt_of = |secret: Option<&Secret>, user: &str| {
        let (_, first) = start(
            user,
            secret,
            &ServerBinding::None,
            SCRAM_SHA_256,
            b"n,,n=,r=abc",
        )
        .unwrap();
        let first = String::from_utf8(first).unwrap();
        first.split(',').skip(1).collect::<Vec<_>>().join(",")
    };
    let plain = Secret::Plain(Password::new("pencil"));
    assert_eq!(
        salt_of(None, "alice"),
        salt_of(None, "alice"),
        "stable per user"
    );
    assert_eq!(
        salt_of(None, "alice"),
        salt_of(Some(&plain), "alice"),
        "indistinguishable"
    );
    assert_ne!(salt_of(None, "alice"), salt_of(None, "bob"));
    assert!(salt_of(None, "alice").ends_with(",i=4096"));
    let other_key = SaltKey::new([1; 32]);
    assert_ne!(other_key.salt_for("alice"), salt_key().salt_for("alice"));
}

#[test]
fn channel_binding_with_pgsteers_certificate_hash_works_end_to_end() {
    let secret = Secret::Scram(verifier_for(b"pencil", b"salty", 4096));
    let binding = ServerBinding::TlsServerEndPoint(vec![7; 32]);
    assert_eq!(binding.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    let ok = exchange_with_real_client(
        b"pencil",
        Some(&secret),
        &binding,
        ChannelBinding::tls_server_end_point(vec![7; 32]),
    );
    assert!(ok.is_ok(), "{ok:?}");
    // A man in the middle terminates TLS with another certificate: the hashes differ.
    let mitm = exchange_with_real_client(
        b"pencil",
        Some(&secret),
        &binding,
        ChannelBinding::tls_server_end_point(vec![8; 32]),
    );
    assert!(
        matches!(mitm, Err(AuthError::ChannelBinding(_))),
        "{mitm:?}"
    );
    assert_eq!(
        mitm.unwrap_err().sqlstate().code(),
        "28000",
        "as Postgres answers"
    );
}

#[test]
fn the_gs2_flag_must_agree_with_the_mechanism_and_the_offer() {
    let tls = ServerBinding::TlsServerEndPoint(vec![1, 2, 3]);
    let none = ServerBinding::None;
    let secret = Secret::Scram(rfc_verifier());
    // (offer, mechanism, client-first, Ok or the error's kind)
    let cases: [(&ServerBinding, &str, &str, &str); 12] = [
        (&none, SCRAM_SHA_256, "n,,n=,r=a", "ok"),
        (&none, SCRAM_SHA_256, "y,,n=,r=a", "ok"),
        (
            &none,
            SCRAM_SHA_256,
            "p=tls-server-end-point,,n=,r=a",
            "malformed",
        ),
        (
            &none,
            SCRAM_SHA_256_PLUS,
            "p=tls-server-end-point,,n=,r=a",
            "malformed",
        ),
        (&tls, SCRAM_SHA_256, "n,,n=,r=a", "ok"),
        (&tls, SCRAM_SHA_256, "y,,n=,r=a", "binding"),
        (
            &tls,
            SCRAM_SHA_256,
            "p=tls-server-end-point,,n=,r=a",
            "malformed",
        ),
        (
            &tls,
            SCRAM_SHA_256_PLUS,
            "p=tls-server-end-point,,n=,r=a",
            "ok",
        ),
        (
            &tls,
            SCRAM_SHA_256_PLUS,
            "p=tls-unique,,n=,r=a",
            "malformed",
        ),
        (&tls, SCRAM_SHA_256_PLUS, "n,,n=,r=a", "malformed"),
        (&tls, SCRAM_SHA_256_PLUS, "y,,n=,r=a", "malformed"),
        (&tls, "SCRAM-SHA-1", "n,,n=,r=a", "malformed"),
    ];
    for (binding, mechanism, first, want) in cases {
        let got = match start("u", Some(&secret), binding, mechanism, first.as_bytes()) {
            Ok(_) => "ok",
            Err(AuthError::ChannelBinding(_)) => "binding",
            Err(AuthError::Malformed(_)) => "malformed",
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(got, want, "{binding:?} {mechanism} {first}");
    }
}

#[test]
fn a_mismatched_binding_or_nonce_in_client_final_is_a_protocol_violation() {
    let secret = Secret::Scram(rfc_verifier());
    let run = |client_final: &str| {
        let (server, _) = start(
            "user",
            Some(&secret),
            &ServerBinding::None,
            SCRAM_SHA_256,
            CLIENT_FIRST.as_bytes(),
        )
        .unwrap();
        server.finish(client_final.as_bytes())
    };
    assert!(matches!(
        run(&CLIENT_FINAL.replace("c=biws", "c=eSws")),
        Err(AuthError::Malformed(_))
    ));
    assert!(matches!(
        run(&CLIENT_FINAL.replace("hNlF$k0", "hNlF$k1")),
        Err(AuthError::Malformed(_))
    ));
    let forged = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
    assert!(matches!(
        run(&forged),
        Err(AuthError::Failed {
            reason: FailureReason::WrongPassword,
            ..
        })
    ));
}

#[test]
fn every_truncation_of_client_messages_is_refused_without_panic() {
    let secret = Secret::Scram(rfc_verifier());
    for end in 0..CLIENT_FIRST.len() {
        // Cut inside the nonce, the message is still well formed (and then the nonce does not match).
        let ok = start(
            "user",
            Some(&secret),
            &ServerBinding::None,
            SCRAM_SHA_256,
            &CLIENT_FIRST.as_bytes()[..end],
        );
        assert_eq!(
            ok.is_ok(),
            end >= CLIENT_FIRST.find("r=").unwrap() + 3,
            "{end}"
        );
    }
    for end in 0..CLIENT_FINAL.len() {
        let (server, _) = start(
            "user",
            Some(&secret),
            &ServerBinding::None,
            SCRAM_SHA_256,
            CLIENT_FIRST.as_bytes(),
        )
        .unwrap();
        let e = server.finish(&CLIENT_FINAL.as_bytes()[..end]).unwrap_err();
        assert_eq!(e.sqlstate().code(), "08P01", "{end}: {e}");
    }
}

#[test]
fn clientkey_pass_through_logs_in_to_a_server_with_the_same_verifier() {
    // The client proves its password to pgsteer …
    let stored = postgres_protocol::password::scram_sha_256(b"correct horse");
    let secret = Secret::parse(&stored).unwrap();
    let success = exchange_with_real_client(
        b"correct horse",
        Some(&secret),
        &ServerBinding::None,
        ChannelBinding::unsupported(),
    )
    .unwrap();
    assert!(matches!(success.credentials, Credentials::Scram(_)));
    // … and pgsteer logs in to "Postgres" (our server side with the same verifier) without the password.
    let postgres = ServerBinding::TlsServerEndPoint(vec![9; 48]);
    let binding =
        ClientBinding::negotiate(postgres.mechanisms().iter().copied(), Some(vec![9; 48])).unwrap();
    let login = ScramClient::new(&success.credentials, binding, "pgsteer-nonce").unwrap();
    let key = SaltKey::new([3; 32]);
    let ctx = ServerContext {
        user: "alice",
        secret: Some(&secret),
        binding: &postgres,
        salt_key: &key,
    };
    let (server, server_first) =
        ScramServer::start(ctx, login.mechanism(), login.client_first(), "pg-nonce").unwrap();
    let (login, client_final) = login.server_first(&server_first).unwrap();
    let done = server.finish(&client_final).unwrap();
    login.server_final(&done.server_final).unwrap();
    assert_eq!(
        done.credentials, success.credentials,
        "Postgres recovers the same ClientKey"
    );
}

#[test]
fn pass_through_fails_clearly_when_the_server_has_another_verifier() {
    let keys = ScramKeys::from_password(b"pencil", &BASE64.decode(SALT).unwrap(), 4096);
    let credentials = Credentials::Scram(keys);
    for server_first in [
        SERVER_FIRST.replace("i=4096", "i=4097"),
        SERVER_FIRST.replace("W22ZaJ0SNY7soEsUEjb6gQ==", "AAAAAAAAAAAAAAAAAAAAAA=="),
    ] {
        let client =
            ScramClient::new(&credentials, ClientBinding::Unsupported, CLIENT_NONCE).unwrap();
        assert!(matches!(
            client.server_first(server_first.as_bytes()),
            Err(LoginError::VerifierChanged)
        ));
    }
}

#[test]
fn the_client_refuses_a_bad_server() {
    let password = Credentials::Password(Password::new("pencil"));
    let client = || ScramClient::new(&password, ClientBinding::Unsupported, CLIENT_NONCE).unwrap();
    let huge = SERVER_FIRST.replace("i=4096", &format!("i={}", MAX_LOGIN_ITERATIONS + 1));
    assert!(matches!(
        client().server_first(huge.as_bytes()),
        Err(LoginError::TooManyIterations(_))
    ));
    for bad_nonce in [
        "r=rOprNGfwEbeRWgbNEkqO,s=QUJD,i=1",
        "r=XOprNGfwEbeRWgbNEkqOabc,s=QUJD,i=1",
        "r=rOpr,s=QUJD,i=1",
    ] {
        assert!(
            matches!(
                client().server_first(bad_nonce.as_bytes()),
                Err(LoginError::Malformed(_))
            ),
            "{bad_nonce}"
        );
    }
    for end in 0..SERVER_FIRST.len() - 3 {
        assert!(
            client()
                .server_first(&SERVER_FIRST.as_bytes()[..end])
                .is_err(),
            "{end}"
        );
    }
    let finals = [
        (
            "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "signature",
        ),
        ("e=invalid-proof", "rejected"),
        ("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4", "malformed"),
        ("", "malformed"),
    ];
    for (server_final, want) in finals {
        let (waiting, _) = ScramClient::with_sasl_user(
            &password,
            ClientBinding::Unsupported,
            CLIENT_NONCE,
            "user",
        )
        .unwrap()
        .server_first(SERVER_FIRST.as_bytes())
        .unwrap();
        let got = match waiting.server_final(server_final.as_bytes()) {
            Err(LoginError::ServerSignature) => "signature",
            Err(LoginError::Rejected(_)) => "rejected",
            Err(LoginError::Malformed(_)) => "malformed",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, want, "{server_final}");
    }
    let md5 = Credentials::Md5(crate::auth::Md5Hash([0; 16]));
    assert!(matches!(
        ScramClient::new(&md5, ClientBinding::Unsupported, "n"),
        Err(LoginError::Unusable(_))
    ));
}

#[test]
fn channel_binding_is_negotiated_from_the_offer_and_the_connection() {
    let both = [SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
    let cases = [
        (
            &both[..],
            Some(vec![1]),
            Some(ClientBinding::TlsServerEndPoint(vec![1])),
        ),
        (&both[..], None, Some(ClientBinding::Unsupported)),
        (&both[1..], Some(vec![1]), Some(ClientBinding::NotOffered)),
        (&both[1..], None, Some(ClientBinding::Unsupported)),
        (
            &both[..1],
            Some(vec![1]),
            Some(ClientBinding::TlsServerEndPoint(vec![1])),
        ),
        (&both[..1], None, None),
        (&["SCRAM-SHA-1"][..], None, None),
    ];
    for (offered, end_point, want) in cases {
        let got = ClientBinding::negotiate(offered.iter().copied(), end_point).ok();
        assert_eq!(got, want, "{offered:?}");
    }
}

#[test]
fn passwords_are_saslprepped_unless_saslprep_refuses_them() {
    assert_eq!(&*normalize("I\u{00AD}X".as_bytes()), b"IX");
    assert_eq!(&*normalize("a\u{00A0}b".as_bytes()), b"a b");
    assert_eq!(
        &*normalize(b"\xff\xfe"),
        b"\xff\xfe",
        "not UTF-8: raw bytes"
    );
    assert_eq!(
        &*normalize("a\u{0007}b".as_bytes()),
        "a\u{0007}b".as_bytes(),
        "prohibited: raw bytes"
    );
    // The client normalises "I\u{AD}X" to "IX" too, so it matches a plaintext "IX".
    let secret = Secret::Plain(Password::new("IX"));
    let ok = exchange_with_real_client(
        "I\u{00AD}X".as_bytes(),
        Some(&secret),
        &ServerBinding::None,
        ChannelBinding::unsupported(),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn debug_output_shows_no_keys() {
    let keys = ScramKeys::from_password(b"pencil", b"salt", 4096);
    let shown = format!("{keys:?} {:?} {:?}", salt_key(), keys.verifier());
    assert!(
        !shown.contains('[') && !shown.contains(&BASE64.encode(keys.client_key)),
        "{shown}"
    );
}

#[test]
fn nonces_are_fresh_and_printable() {
    let (a, b) = (new_nonce().unwrap(), new_nonce().unwrap());
    assert_ne!(a, b);
    assert_eq!(a.len(), 24);
    assert!(messages::is_printable(a.as_bytes()));
}

proptest::proptest! {
    #[test]
    fn random_client_messages_never_panic_the_server(
        first in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        last in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
    ) {
        let secret = Secret::Scram(rfc_verifier());
        let tls = ServerBinding::TlsServerEndPoint(vec![1; 32]);
        let _ = start("u", Some(&secret), &tls, SCRAM_SHA_256_PLUS, &first);
        if let Ok((server, _)) = start("u", Some(&secret), &ServerBinding::None, SCRAM_SHA_256, CLIENT_FIRST.as_bytes()) {
            let _ = server.finish(&last);
        }
    }

    #[test]
    fn random_server_messages_never_panic_the_client(
        first in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
        suffix in "[a-zA-Z0-9=,+/]{0,60}",
    ) {
        let password = Credentials::Password(Password::new("pencil"));
        let client = ScramClient::new(&password, ClientBinding::Unsupported, CLIENT_NONCE).unwrap();
        let _ = client.server_first(&first);
        let shaped = format!("r={CLIENT_NONCE}x,s=QUJD,i=1,{suffix}");
        let client = ScramClient::new(&password, ClientBinding::Unsupported, CLIENT_NONCE).unwrap();
        if let Ok((waiting, _)) = client.server_first(shaped.as_bytes()) {
            let _ = waiting.server_final(suffix.as_bytes());
        }
    }
}
