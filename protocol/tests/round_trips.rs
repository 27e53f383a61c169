//! Property tests: what the encoders write, the decoders read back unchanged.

use bytes::BytesMut;
use pgsteer_protocol::backend::{Authentication, BackendMessage, TxStatus};
use pgsteer_protocol::encode::{self, ErrorInfo, Severity};
use pgsteer_protocol::frame::{Frame, split_frame};
use pgsteer_protocol::frontend::FrontendMessage;
use pgsteer_protocol::options;
use pgsteer_protocol::sqlstate::SqlState;
use pgsteer_protocol::startup::{
    CancelRequest, MAX_STARTUP_PACKET_LEN, ProtocolVersion, StartupMessage, StartupPacket,
    parse_startup,
};
use proptest::prelude::*;

const LIMIT: u32 = 1 << 20;

/// Splits exactly one frame off what an encoder wrote.
fn only_frame(mut buf: BytesMut) -> Frame {
    let frame = split_frame(&mut buf, LIMIT).unwrap().unwrap();
    assert!(buf.is_empty(), "{} bytes after the frame", buf.len());
    frame
}

/// What a string becomes on the wire: encoders replace NUL, which would end the field early.
fn on_wire(s: &str) -> Vec<u8> {
    s.replace('\0', "?").into_bytes()
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![
        Just(Severity::Fatal),
        Just(Severity::Error),
        Just(Severity::Warning),
        Just(Severity::Notice),
    ]
}

fn sqlstate() -> impl Strategy<Value = SqlState> {
    prop::sample::select(vec![
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::CONNECTION_FAILURE,
        SqlState::UNABLE_TO_CONNECT,
        SqlState::PROTOCOL_VIOLATION,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::READ_ONLY_SQL_TRANSACTION,
        SqlState::INVALID_AUTHORIZATION,
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::UNDEFINED_OBJECT,
        SqlState::INVALID_PARAMETER_VALUE,
        SqlState::INTERNAL_ERROR,
    ])
}

fn tx_status() -> impl Strategy<Value = TxStatus> {
    prop_oneof![
        Just(TxStatus::Idle),
        Just(TxStatus::InTransaction),
        Just(TxStatus::Failed),
    ]
}

/// A non-empty string: an empty startup parameter name would read as the list's end.
fn name() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("empty", |s| !s.is_empty())
}

proptest! {
    #[test]
    fn error_and_notice_responses_decode_to_the_fields_written(
        notice in any::<bool>(),
        sev in severity(),
        code in sqlstate(),
        message in any::<String>(),
        detail in proptest::option::of(any::<String>()),
        hint in proptest::option::of(any::<String>()),
    ) {
        let info = ErrorInfo { severity: sev, code, message: &message, detail: detail.as_deref(), hint: hint.as_deref() };
        let mut buf = BytesMut::new();
        if notice {
            encode::notice_response(&mut buf, &info);
        } else {
            encode::error_response(&mut buf, &info);
        }
        let f = only_frame(buf);
        let fields = match BackendMessage::parse(f.tag, &f.body).unwrap() {
            BackendMessage::NoticeResponse(e) if notice => e,
            BackendMessage::ErrorResponse(e) if !notice => e,
            other => panic!("wrong message {other:?}"),
        };
        let got: Vec<(u8, Vec<u8>)> = fields.iter().map(|f| (f.code, f.value.to_vec())).collect();
        let mut want = vec![
            (b'S', sev.as_str().as_bytes().to_vec()),
            (b'V', sev.as_str().as_bytes().to_vec()),
            (b'C', code.code().as_bytes().to_vec()),
            (b'M', on_wire(&message)),
        ];
        want.extend(detail.as_deref().map(|d| (b'D', on_wire(d))));
        want.extend(hint.as_deref().map(|h| (b'H', on_wire(h))));
        prop_assert_eq!(got, want);
        prop_assert_eq!(fields.severity(), Some(sev.as_str().into()));
        prop_assert_eq!(fields.code(), Some(code.code().into()));
    }

    #[test]
    fn parameter_status_decodes_to_the_name_and_value_written(
        name in any::<String>(),
        value in any::<String>(),
    ) {
        let mut buf = BytesMut::new();
        encode::parameter_status(&mut buf, &name, &value);
        let f = only_frame(buf);
        let got = BackendMessage::parse(f.tag, &f.body).unwrap();
        prop_assert_eq!(
            got,
            BackendMessage::ParameterStatus { name: &on_wire(&name), value: &on_wire(&value) }
        );
    }

    #[test]
    fn backend_key_data_with_keys_of_4_to_256_bytes_decodes_back(
        pid in any::<i32>(),
        key in prop::collection::vec(any::<u8>(), 4..=256),
    ) {
        let mut buf = BytesMut::new();
        encode::backend_key_data(&mut buf, pid, &key);
        let f = only_frame(buf);
        let BackendMessage::BackendKeyData(k) = BackendMessage::parse(f.tag, &f.body).unwrap()
        else {
            panic!("not BackendKeyData");
        };
        prop_assert_eq!(k.pid, pid);
        prop_assert_eq!(k.key, &key[..]);
    }

    #[test]
    fn ready_for_query_decodes_to_the_status_written(status in tx_status()) {
        let mut buf = BytesMut::new();
        encode::ready_for_query(&mut buf, status);
        let f = only_frame(buf);
        prop_assert_eq!(
            BackendMessage::parse(f.tag, &f.body).unwrap(),
            BackendMessage::ReadyForQuery(status)
        );
        prop_assert_eq!(TxStatus::from_byte(status.as_byte()), Some(status));
    }

    #[test]
    fn negotiate_protocol_version_decodes_to_the_minor_and_options_written(
        minor in any::<u16>(),
        opts in prop::collection::vec(any::<String>(), 0..8),
    ) {
        let mut buf = BytesMut::new();
        encode::negotiate_protocol_version(&mut buf, minor, &opts);
        let f = only_frame(buf);
        let BackendMessage::NegotiateProtocolVersion { minor: got_minor, options } =
            BackendMessage::parse(f.tag, &f.body).unwrap()
        else {
            panic!("not NegotiateProtocolVersion");
        };
        prop_assert_eq!(got_minor, i32::from(minor));
        let want: Vec<Vec<u8>> = opts.iter().map(|o| on_wire(o)).collect();
        let got: Vec<Vec<u8>> = options.iter().map(|o| o.to_vec()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn startup_message_with_arbitrary_parameters_decodes_back(
        minor in any::<u16>(),
        params in prop::collection::vec((name(), any::<String>()), 0..12),
    ) {
        let m = StartupMessage {
            version: ProtocolVersion { major: 3, minor },
            params: params.clone(),
        };
        let mut buf = BytesMut::new();
        encode::startup_message(&mut buf, &m);
        prop_assume!(buf.len() <= MAX_STARTUP_PACKET_LEN);
        let mut whole = buf.clone();
        let Some(StartupPacket::Startup(got)) = parse_startup(&mut whole).unwrap() else {
            panic!("not a startup message");
        };
        prop_assert!(whole.is_empty());
        prop_assert_eq!(got.version, m.version);
        let want: Vec<(String, String)> = params
            .iter()
            .map(|(n, v)| (n.replace('\0', "?"), v.replace('\0', "?")))
            .collect();
        prop_assert_eq!(got.params, want);
        // Any strict prefix is incomplete, not an error.
        for cut in 0..buf.len() {
            let mut part = BytesMut::from(&buf[..cut]);
            prop_assert_eq!(parse_startup(&mut part), Ok(None));
        }
    }

    #[test]
    fn cancel_request_with_keys_of_4_to_256_bytes_decodes_back(
        pid in any::<i32>(),
        key in prop::collection::vec(any::<u8>(), 4..=256),
    ) {
        let mut buf = BytesMut::new();
        encode::cancel_request(&mut buf, pid, &key);
        prop_assert_eq!(
            parse_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel(CancelRequest { pid, key }))
        );
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn options_join_then_split_gives_back_the_arguments(
        args in prop::collection::vec(
            // Spaces, escapes and vertical tabs are the interesting characters.
            prop_oneof![name(), "[ \\\\\t\n\x0B\x0C\ra-z=é-]{1,12}"],
            0..8,
        ),
    ) {
        prop_assert_eq!(options::split(&options::join(&args)), args);
    }

    #[test]
    fn options_split_agrees_with_postgres_pg_split_opts(
        s in prop_oneof![any::<String>(), "[ \\\\\t\n\x0B\x0C\ra-z=-]{0,24}"],
    ) {
        let ours: Vec<Vec<u8>> = options::split(&s).into_iter().map(String::into_bytes).collect();
        prop_assert_eq!(ours, pg_split_opts(s.as_bytes()));
    }

    #[test]
    fn query_decodes_to_the_sql_written(sql in any::<String>()) {
        let mut buf = BytesMut::new();
        encode::query(&mut buf, &sql);
        let f = only_frame(buf);
        prop_assert_eq!(
            FrontendMessage::parse(f.tag, &f.body).unwrap(),
            FrontendMessage::Query { sql: &on_wire(&sql) }
        );
    }

    #[test]
    fn authentication_sasl_lists_the_mechanisms_written(
        mechs in prop::collection::vec("[A-Z0-9-]{1,20}", 0..4),
    ) {
        let mut buf = BytesMut::new();
        encode::authentication_sasl(&mut buf, mechs.iter().map(|m| m.as_bytes()));
        let f = only_frame(buf);
        let BackendMessage::Authentication(Authentication::Sasl { mechanisms }) =
            BackendMessage::parse(f.tag, &f.body).unwrap()
        else {
            panic!("not AuthenticationSASL");
        };
        let got: Vec<&[u8]> = mechanisms.iter().collect();
        let want: Vec<&[u8]> = mechs.iter().map(|m| m.as_bytes()).collect();
        prop_assert_eq!(got, want);
    }
}

/// Postgres' `pg_split_opts` (src/backend/utils/init/postinit.c), byte for byte, with C `isspace`.
fn pg_split_opts(opts: &[u8]) -> Vec<Vec<u8>> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
    let mut args = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        while i < opts.len() && is_space(opts[i]) {
            i += 1;
        }
        if i == opts.len() {
            break;
        }
        let mut arg = Vec::new();
        let mut last_was_escape = false;
        while i < opts.len() {
            if is_space(opts[i]) && !last_was_escape {
                break;
            }
            if !last_was_escape && opts[i] == b'\\' {
                last_was_escape = true;
            } else {
                last_was_escape = false;
                arg.push(opts[i]);
            }
            i += 1;
        }
        args.push(arg);
    }
    args
}

#[test]
fn options_split_on_vertical_tab_as_postgres_15_does() {
    // Seen on a real server: PGOPTIONS=$'-c\vsearch_path=vt' gives search_path "vt", and an
    // escaped vertical tab stays in the value.
    assert_eq!(
        options::split("-c\x0Bsearch_path=vt"),
        vec!["-c", "search_path=vt"]
    );
    assert_eq!(
        options::split("-c search_path=a\\\x0Bb"),
        vec!["-c", "search_path=a\x0Bb"]
    );
    assert_eq!(
        options::join(&["-c", "search_path=a\x0Bb"]),
        "-c search_path=a\\\x0Bb"
    );
    let taken = options::take_prefixed("-c\x0Bpgsteer.route=replica", "pgsteer.").unwrap();
    assert_eq!(
        taken.settings,
        vec![("pgsteer.route".to_string(), "replica".to_string())]
    );
    assert_eq!(taken.rest, None);
}

#[test]
fn ssl_request_terminate_and_authentication_ok_decode_back() {
    let mut buf = BytesMut::new();
    encode::ssl_request(&mut buf);
    assert_eq!(parse_startup(&mut buf), Ok(Some(StartupPacket::SslRequest)));
    assert!(buf.is_empty());

    let mut buf = BytesMut::new();
    encode::terminate(&mut buf);
    let f = only_frame(buf);
    assert_eq!(
        FrontendMessage::parse(f.tag, &f.body),
        Ok(FrontendMessage::Terminate)
    );

    let mut buf = BytesMut::new();
    encode::authentication_ok(&mut buf);
    let f = only_frame(buf);
    assert_eq!(
        BackendMessage::parse(f.tag, &f.body),
        Ok(BackendMessage::Authentication(Authentication::Ok))
    );
}
