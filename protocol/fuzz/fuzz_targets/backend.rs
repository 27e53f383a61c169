//! Typed views over arbitrary bodies: the first byte is the message type, the rest the
//! body. `BackendMessage::parse`, `FrontendMessage::parse` and (for `p`)
//! `SaslInitialResponse::parse` never panic, and whatever they accept can be walked
//! (ErrorFields, SaslMechanisms, column formats, SASL data) without panics and consistently
//! with the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsteer_protocol::backend::{Authentication, BackendMessage};
use pgsteer_protocol::frontend::{FrontendMessage, SaslInitialResponse, tag as frontend_tag};

fuzz_target!(|data: &[u8]| {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    if let Ok(m) = BackendMessage::parse(tag, body) {
        match m {
            BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e) => {
                // Each field is its code, its value and a NUL; then the closing zero byte.
                let mut size = 1;
                for f in e.iter() {
                    assert_ne!(f.code, 0);
                    assert!(!f.value.contains(&0));
                    size += 2 + f.value.len();
                }
                assert_eq!(size, body.len());
                let _ = (e.severity(), e.code(), e.message(), e.detail(), e.hint());
            }
            BackendMessage::Authentication(Authentication::Sasl { mechanisms }) => {
                let mut size = 4 + 1;
                for name in mechanisms.iter() {
                    assert!(!name.is_empty() && !name.contains(&0));
                    size += name.len() + 1;
                }
                assert_eq!(size, body.len());
            }
            BackendMessage::CopyInResponse(c)
            | BackendMessage::CopyOutResponse(c)
            | BackendMessage::CopyBothResponse(c) => {
                assert_eq!(c.column_formats().count(), c.columns as usize);
            }
            BackendMessage::BackendKeyData(k) => {
                assert!((4..=256).contains(&k.key.len()));
            }
            BackendMessage::NegotiateProtocolVersion { options, .. } => {
                let size: usize = options.iter().map(|o| o.len() + 1).sum();
                assert_eq!(8 + size, body.len());
            }
            BackendMessage::Other { tag: t, body: b } => {
                assert_eq!((t, b), (tag, body));
            }
            _ => {}
        }
    }
    if let Ok(FrontendMessage::Other { tag: t, body: b }) = FrontendMessage::parse(tag, body) {
        assert_eq!((t, b), (tag, body));
    }
    if tag == frontend_tag::PASSWORD
        && let Ok(m) = SaslInitialResponse::parse(body)
    {
        // The mechanism, its NUL, the data length and the data.
        assert!(!m.mechanism.contains(&0));
        let size = m.mechanism.len() + 1 + 4 + m.data.map_or(0, <[u8]>::len);
        assert_eq!(size, body.len());
        assert_eq!(m.gs2_flag(), m.data.and_then(|d| d.first().copied()));
    }
});
