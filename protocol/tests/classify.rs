//! Property tests for SQL classification: any bytes are safe to classify, statements are found
//! wherever they are, and whatever is quoted or commented out stays hidden.

use pgsteer_protocol::classify::{
    Effect, Lexer, Reason, Syntax, TokenKind, plain_select, session_effects, session_effects_with,
    statements,
};
use proptest::prelude::*;

const SYNTAXES: [Syntax; 2] = [
    Syntax {
        standard_conforming_strings: true,
    },
    Syntax {
        standard_conforming_strings: false,
    },
];

/// Bytes that matter to the lexer, and some that do not.
fn sqlish() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"'\"$;()-/*\\\nEeUu&_.,=:1 aLISTENset".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..200)
}

/// Classifies everything in `sql` and checks what can be checked without knowing the answer.
fn walk(sql: &[u8], syntax: Syntax) {
    let mut end = 0;
    for t in Lexer::with_syntax(sql, syntax) {
        assert!(t.start >= end, "tokens overlap");
        assert!(!t.text.is_empty(), "empty token");
        assert_eq!(sql.get(t.start..t.end()), Some(t.text));
        end = t.end();
    }
    let mut end = 0;
    for s in statements(sql, syntax) {
        assert!(s.start >= end && !s.text.is_empty());
        assert_eq!(sql.get(s.start..s.start + s.text.len()), Some(s.text));
        end = s.start + s.text.len();
        assert_eq!(
            s.tokens().count(),
            Lexer::with_syntax(s.text, syntax).count()
        );
    }
    let count = statements(sql, syntax).count();
    let mut effects = 0;
    for e in session_effects_with(sql, syntax) {
        effects += 1;
        match e {
            Effect::Set { name, .. } | Effect::Reset { name } | Effect::Execute { name } => {
                assert!(name.bytes().count() <= name.raw().len());
            }
            _ => {}
        }
    }
    assert_eq!(effects, count, "one effect per statement");
}

/// Statements whose effect is known, each with tricky quoting or comments.
const NOISE: [(&str, &str); 12] = [
    ("SELECT 'a;b'", "other"),
    ("SELECT $$;LISTEN x$$", "other"),
    ("SELECT $t$ $$ ; $t$", "other"),
    ("SELECT E'\\';LISTEN x'", "other"),
    ("SELECT \"a;\"\"b\" FROM t", "other"),
    ("SELECT 1 /* ; /* ; */ LISTEN */", "other"),
    ("SELECT 1 -- ; LISTEN\n", "other"),
    ("SET a = 'x;y'", "set"),
    ("SET LOCAL b TO 1", "local"),
    ("SELECT pg_advisory_lock(1)", "advisory_lock"),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
        "other",
    ),
    (
        "CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; LISTEN b)",
        "other",
    ),
];

fn label(e: &Effect<'_>) -> &'static str {
    match e {
        Effect::Other => "other",
        Effect::Set { local: true, .. } => "local",
        Effect::Set { .. } => "set",
        Effect::Pin(r) => r.as_str(),
        _ => "?",
    }
}

/// `LISTEN` spelled in a random case.
fn listen() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), 6).prop_map(|upper| {
        "listen"
            .chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect::<String>()
            + " chan"
    })
}

/// How a payload is hidden: the wrapped text, and the text without its closing delimiter.
fn hide(how: u8, payload: &str, tag: &str) -> (String, String) {
    let clean = |bad: &[char]| payload.replace(bad, " ");
    let (open, body, close) = match how % 7 {
        0 => ("'".to_string(), payload.replace('\'', "''"), "'"),
        1 => (
            "E'".to_string(),
            payload.replace('\\', "\\\\").replace('\'', "\\'"),
            "'",
        ),
        2 => ("U&'".to_string(), payload.replace(['\'', '\\'], "''"), "'"),
        3 => ("\"".to_string(), payload.replace('"', "\"\""), "\""),
        4 => (format!("${tag}$"), payload.replace('$', " "), "$"),
        5 => (
            "/*".to_string(),
            format!("{} /* {} */", clean(&['/', '*']), clean(&['/', '*'])),
            "*/",
        ),
        _ => ("--".to_string(), clean(&['\n', '\r']), "\n"),
    };
    let close = if how % 7 == 4 {
        format!("${tag}$")
    } else {
        close.to_string()
    };
    (format!("{open}{body}{close}"), format!("{open}{body}"))
}

/// `SELECT` followed by pieces that are harmless, and pieces that are not, in any order.
fn selectish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop::sample::select(vec![
        " a",
        ",",
        " *",
        " from t",
        " where",
        " x = $1",
        " 'lit'",
        " 'it''s'",
        " and",
        " 1",
        "\n",
        " for update",
        ";",
        " ;",
        "(",
        ")",
        "'",
        " into",
        "into",
        "1into",
        " 1_",
        "1_into temp t",
        "1_pg_temp.t",
        " pinto",
        " pg_temp.t",
        ".pg_temp.t",
        "_pg_temp",
        " --",
        " /*",
        "*/",
        "$$",
        "$t$",
        "\"q\"",
        " e'\\''",
        " set_config",
        " pg_advisory_lock",
        " listen x",
        " select",
        "\0",
        "\t",
    ]);
    (
        prop::sample::select(vec!["select", "SELECT", "  Select", "select*"]),
        prop::collection::vec(piece, 0..12),
    )
        .prop_map(|(head, pieces)| {
            let mut sql = head.as_bytes().to_vec();
            for p in pieces {
                sql.extend_from_slice(p.as_bytes());
            }
            sql
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_plain_select_is_one_statement_with_no_session_effect_by_the_full_scan(
        sql in prop_oneof![selectish(), sqlish()],
    ) {
        if plain_select(&sql) {
            for syntax in SYNTAXES {
                let got: Vec<_> = session_effects_with(&sql, syntax).map(|e| label(&e)).collect();
                prop_assert_eq!(got, vec!["other"], "{}", String::from_utf8_lossy(&sql));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_tokens_stay_in_bounds(sql in sqlish()) {
        for syntax in SYNTAXES {
            walk(&sql, syntax);
        }
    }

    #[test]
    fn a_listen_between_other_statements_is_found_wherever_it_is(
        noise in prop::collection::vec(0..NOISE.len(), 0..6),
        at in any::<prop::sample::Index>(),
        listen in listen(),
        separators in prop::collection::vec(prop::sample::select(vec![";", ";\n", " ; -- c\n", "/* ; */;"]), 6),
    ) {
        let at = at.index(noise.len() + 1);
        let mut parts: Vec<(&str, &str)> = noise.iter().map(|&i| NOISE[i]).collect();
        parts.insert(at, (listen.as_str(), "listen"));
        let sql: String = parts
            .iter()
            .zip(separators.iter().cycle())
            .map(|((text, _), sep)| format!("{text}{sep}"))
            .collect();
        let got: Vec<_> = session_effects(sql.as_bytes()).map(|e| label(&e)).collect();
        let want: Vec<_> = parts.iter().map(|(_, label)| *label).collect();
        prop_assert_eq!(got, want, "{}", sql);
    }

    #[test]
    fn quoted_or_commented_text_has_no_effect_and_unclosed_it_pins(
        how in any::<u8>(),
        payload in "[ -~\n]{0,40}",
        tag in "[a-z_]{0,3}",
    ) {
        let payload = format!("{payload}; LISTEN x; SET a = 1; SELECT pg_advisory_lock(1); {payload}");
        let (closed, open) = hide(how, &payload, &tag);
        let sql = format!("SELECT {closed}\n; LISTEN y");
        let got: Vec<_> = session_effects(sql.as_bytes()).map(|e| label(&e)).collect();
        prop_assert_eq!(got, ["other", "listen"], "{}", sql);
        if how % 7 != 6 {
            let sql = format!("SELECT {open}\n; LISTEN y");
            let last = session_effects(sql.as_bytes()).last();
            prop_assert_eq!(last, Some(Effect::Pin(Reason::Unsure)), "{}", sql);
        }
    }
}

#[test]
fn token_kinds_cover_a_mixed_statement() {
    let kinds: Vec<_> = Lexer::new(b"SELECT $1::int, 'a' || E'b' FROM \"t\" WHERE x[1] = $$c$$;")
        .map(|t| t.kind)
        .collect();
    for kind in [
        TokenKind::Ident,
        TokenKind::Param,
        TokenKind::Punct,
        TokenKind::Comma,
        TokenKind::String,
        TokenKind::Operator,
        TokenKind::QuotedIdent,
        TokenKind::Number,
        TokenKind::Semicolon,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} missing");
    }
}

#[test]
fn pathological_inputs_are_classified_in_one_pass() {
    // Each would take minutes if any look-ahead rescanned the rest of the input per token.
    let n = 5_000;
    let inputs: Vec<Vec<u8>> = vec![
        format!("SELECT {}", "set_config('a', 'b', true), ".repeat(n)).into(),
        format!(
            "SELECT {}1",
            "into temp create or replace on commit ".repeat(n)
        )
        .into(),
        format!("SET {}a = 1", "a . ".repeat(n)).into(),
        format!("SELECT $x$ {}", "$ $x $y$ ".repeat(n)).into(),
        format!("SELECT {}", "/* ".repeat(n)).into(),
        format!("SELECT {}", "E'\\'' \n".repeat(n)).into(),
        format!("SELECT {}", "( ".repeat(n)).into(),
        format!("CREATE FUNCTION f() {}", "BEGIN CASE ".repeat(n)).into(),
        format!("DECLARE c {}", "WITH ".repeat(n)).into(),
    ];
    for sql in inputs {
        for syntax in SYNTAXES {
            walk(&sql, syntax);
        }
    }
}
