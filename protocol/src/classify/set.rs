//! `SET` and `RESET` in all their forms (`gram.y`: `VariableSetStmt`, `VariableResetStmt`).

use super::effect::{Effect, Reason, Word};
use super::lexer::{Token, TokenKind};
use super::name::{Name, Value};
use super::split::StatementTokens;

/// Settings that only ever last until the end of the transaction.
const TRANSACTION_SCOPED: [&[u8]; 3] = [
    b"transaction_isolation",
    b"transaction_read_only",
    b"transaction_deferrable",
];

const UNSURE: Effect<'static> = Effect::Pin(Reason::Unsure);

/// Whether `after` (the token after a `SET` word) makes the word the name of a plain
/// `SET name {TO | =} …` or `SET name FROM CURRENT`.
fn generic_follows(after: Option<&Token<'_>>) -> bool {
    after.is_some_and(|t| {
        t.kind == TokenKind::Dot
            || (t.kind == TokenKind::Operator && t.text == b"=")
            || t.is_keyword(b"to")
            || t.is_keyword(b"from")
    })
}

/// The statement after `SET`.
pub(super) fn set<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let Some(mut t) = st.next() else {
        return UNSURE;
    };
    let local = t.is_keyword(b"local");
    let session = t.is_keyword(b"session");
    if local || session {
        let Some(next) = st.next() else {
            return UNSURE;
        };
        t = next;
    }
    let after = st.clone().next();
    if generic_follows(after.as_ref()) {
        return generic(t, st, local);
    }
    let after_is = |word: &[u8]| after.is_some_and(|a| a.is_keyword(word));
    match Word::of(Some(&t)).as_bytes() {
        b"transaction" | b"constraints" => Effect::Other,
        b"characteristics" => Effect::Pin(Reason::SessionCharacteristics),
        b"time" if after_is(b"zone") => {
            st.next();
            time_zone(st, local)
        }
        b"schema" => fixed(st, b"search_path", local),
        b"names" => match value(st) {
            None => setting(Name::new(b"client_encoding"), Value::Default, local),
            Some(v) => setting(Name::new(b"client_encoding"), v, local),
        },
        b"xml" if after_is(b"option") => {
            st.next();
            fixed(st, b"xmloption", local)
        }
        b"role" => fixed(st, b"role", local),
        // `SET SESSION AUTHORIZATION`: SESSION was taken as the scope.
        b"authorization" if session => fixed(st, b"session_authorization", false),
        b"session" if after_is(b"authorization") => {
            st.next();
            fixed(st, b"session_authorization", local)
        }
        _ => generic(t, st, local),
    }
}

/// `SET [scope] name {TO | =} {value [, …] | DEFAULT}`, with `name` starting at `t`.
fn generic<'a>(t: Token<'a>, st: &mut StatementTokens<'a>, local: bool) -> Effect<'a> {
    let Some((name, after)) = name(t, st) else {
        return UNSURE;
    };
    match after {
        Some(a) if a.is_keyword(b"to") || (a.kind == TokenKind::Operator && a.text == b"=") => {
            match value(st) {
                Some(v) => setting(name, v, local),
                None => UNSURE,
            }
        }
        // `SET name FROM CURRENT` and anything else.
        _ => UNSURE,
    }
}

/// A special form whose setting is `name` and whose value is the rest of the statement.
fn fixed<'a>(st: &mut StatementTokens<'a>, name: &'static [u8], local: bool) -> Effect<'a> {
    match value(st) {
        Some(v) => setting(Name::new(name), v, local),
        None => UNSURE,
    }
}

/// `SET TIME ZONE {value | LOCAL | DEFAULT | INTERVAL …}`. The `INTERVAL` form has no
/// `SET timezone TO …` spelling to replay, so it pins.
fn time_zone<'a>(st: &mut StatementTokens<'a>, local: bool) -> Effect<'a> {
    let name = Name::new(b"timezone");
    let mut ahead = *st;
    let first = ahead.next();
    let single = ahead.next().is_none();
    match first {
        Some(t) if t.is_keyword(b"interval") => UNSURE,
        Some(t) if single && t.is_keyword(b"local") => {
            st.next();
            setting(name, Value::Default, local)
        }
        _ => fixed(st, b"timezone", local),
    }
}

/// A dotted name starting at `first`; returns it and the token after it.
fn name<'a>(
    first: Token<'a>,
    st: &mut StatementTokens<'a>,
) -> Option<(Name<'a>, Option<Token<'a>>)> {
    let is_part = |t: &Token<'_>| matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent);
    if !is_part(&first) {
        return None;
    }
    let mut end = first.end();
    loop {
        let next = st.next();
        if !next.is_some_and(|t| t.kind == TokenKind::Dot) {
            let raw = st.source().get(first.start..end)?;
            return Some((Name::new(raw), next));
        }
        end = st.next().filter(is_part)?.end();
    }
}

/// The rest of the statement as a value: `None` if there is none.
fn value<'a>(st: &mut StatementTokens<'a>) -> Option<Value<'a>> {
    let first = st.next()?;
    let end = st.by_ref().last().map_or(first.end(), |t| t.end());
    if end == first.end() && first.is_keyword(b"default") {
        return Some(Value::Default);
    }
    st.source().get(first.start..end).map(Value::Text)
}

/// The effect of setting `name`: some settings pin, some are transaction-scoped.
fn setting<'a>(name: Name<'a>, value: Value<'a>, local: bool) -> Effect<'a> {
    if !local {
        if name.eq_ignore_ascii_case(b"role") {
            return Effect::Pin(Reason::SetRole);
        }
        if name.eq_ignore_ascii_case(b"session_authorization") {
            return Effect::Pin(Reason::SessionAuthorization);
        }
    }
    let local = local
        || TRANSACTION_SCOPED
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n));
    Effect::Set { name, value, local }
}

/// The statement after `RESET`.
pub(super) fn reset<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let Some(t) = st.next() else {
        return UNSURE;
    };
    let mut ahead = *st;
    let after = ahead.next();
    let only = |word: &[u8], ahead: &mut StatementTokens<'_>| {
        after.is_some_and(|a| a.is_keyword(word)) && ahead.next().is_none()
    };
    match Word::of(Some(&t)).as_bytes() {
        b"all" if after.is_none() => return Effect::ResetAll,
        b"time" if only(b"zone", &mut ahead) => {
            return Effect::Reset {
                name: Name::new(b"timezone"),
            };
        }
        b"session" if only(b"authorization", &mut ahead) => {
            return Effect::Pin(Reason::SessionAuthorization);
        }
        // RESET TRANSACTION ISOLATION LEVEL
        b"transaction" if after.is_some_and(|a| a.kind == TokenKind::Ident) => {
            return Effect::Other;
        }
        _ => {}
    }
    let Some((name, None)) = name(t, st) else {
        return UNSURE;
    };
    if name.eq_ignore_ascii_case(b"role") {
        Effect::Pin(Reason::SetRole)
    } else if name.eq_ignore_ascii_case(b"session_authorization") {
        Effect::Pin(Reason::SessionAuthorization)
    } else if TRANSACTION_SCOPED
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    {
        Effect::Other
    } else {
        Effect::Reset { name }
    }
}
