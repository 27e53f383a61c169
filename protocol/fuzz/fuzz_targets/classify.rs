//! SQL classification over arbitrary bytes: the lexer, the statement splitter and
//! `session_effects` never panic, stay linear (libFuzzer's `-timeout` catches a blow-up), and
//! agree with each other: tokens are in order and are the input's own bytes, there is one effect
//! per statement, and names and values are slices of the input.
//!
//! Input: a flags byte (bit 0: `standard_conforming_strings` off), then the SQL text. Seeds are
//! the Query and Parse strings of the recorded sessions plus a few statements of each kind (see
//! `bounded`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsteer_protocol::classify::{
    Effect, Lexer, Syntax, TokenKind, Value, session_effects_with, statements,
};

/// Whether `part` lies inside `whole` (same allocation, in bounds).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, sql)) = data.split_first() else {
        return;
    };
    let syntax = Syntax {
        standard_conforming_strings: flags & 1 == 0,
    };

    let mut end = 0;
    for t in Lexer::with_syntax(sql, syntax) {
        assert!(t.start >= end && !t.text.is_empty());
        assert_eq!(sql.get(t.start..t.end()), Some(t.text));
        assert!(t.kind != TokenKind::Unterminated || t.end() == sql.len());
        end = t.end();
    }

    let mut count = 0;
    for s in statements(sql, syntax) {
        assert_eq!(sql.get(s.start..s.start + s.text.len()), Some(s.text));
        count += 1;
    }

    let mut effects = 0;
    for e in session_effects_with(sql, syntax) {
        effects += 1;
        match e {
            Effect::Set { name, value, .. } => {
                assert!(within(sql, name.raw()) || name.raw().is_ascii());
                if let Value::Text(v) = value {
                    assert!(within(sql, v) && !v.is_empty());
                }
                let _ = name.bytes().count();
                let _ = name.eq_ignore_ascii_case(b"search_path");
            }
            Effect::Reset { name } | Effect::Execute { name } => {
                assert!(within(sql, name.raw()) || name.raw().is_ascii());
                let _ = name.is(b"s1");
            }
            _ => {}
        }
    }
    assert_eq!(effects, count);
});
