//! SQL classification over arbitrary bytes: the lexer, the statement splitter,
//! `session_effects` and `read_verdict` never panic, stay linear (libFuzzer's `-timeout` catches a
//! blow-up), and agree with each other: tokens are in order and are the input's own bytes, there
//! is one effect per statement, and names and values are slices of the input. A string
//! `read_verdict` sends to a replica has a token, none unterminated, and no unquoted word that
//! writes, locks or changes the session (except right after a `.`, where a word is a name:
//! `t.comment`).
//!
//! Input: a flags byte (bit 0: `standard_conforming_strings` off), then the SQL text. Seeds are
//! the Query and Parse strings of the recorded sessions plus a few statements of each kind (see
//! `bounded`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsteer_protocol::classify::{
    Effect, Lexer, Syntax, TokenKind, Value, Verdict, read_verdict, session_effects_with,
    statements,
};

/// Words that never appear unquoted in a string sent to a replica (an independent list: the
/// classifier's own lives in `classify/read/words.rs`).
const WRITE_WORDS: [&[u8]; 28] = [
    b"insert",
    b"update",
    b"delete",
    b"merge",
    b"truncate",
    b"copy",
    b"create",
    b"drop",
    b"alter",
    b"grant",
    b"revoke",
    b"lock",
    b"nextval",
    b"setval",
    b"into",
    b"call",
    b"do",
    b"vacuum",
    b"analyze",
    b"analyse",
    b"refresh",
    b"reindex",
    b"cluster",
    b"comment",
    b"security",
    b"notify",
    b"listen",
    b"set_config",
];

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
    let (mut tokens, mut unterminated, mut write_word) = (0, false, None);
    let mut after_dot = false;
    for t in Lexer::with_syntax(sql, syntax) {
        assert!(t.start >= end && !t.text.is_empty());
        assert_eq!(sql.get(t.start..t.end()), Some(t.text));
        assert!(t.kind != TokenKind::Unterminated || t.end() == sql.len());
        end = t.end();
        tokens += 1;
        unterminated |= t.kind == TokenKind::Unterminated;
        if !after_dot && write_word.is_none() && WRITE_WORDS.iter().any(|w| t.is_keyword(w)) {
            write_word = Some(t.text);
        }
        after_dot = t.kind == TokenKind::Dot;
    }

    // Functions whose name starts with `f` are declared read-only, to reach that path too.
    let verdict = read_verdict(sql, syntax, &|name: &[u8]| name.first() == Some(&b'f'));
    if verdict == Verdict::Replica {
        assert!(tokens > 0 && !unterminated);
        assert_eq!(write_word, None, "a replica got a write word");
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
