//! What each statement of a query string does to session state, for transaction pooling.
//!
//! One pass over the tokens, no allocation. A statement is dispatched on its first word (`SET`,
//! `RESET`, `LISTEN`, …); every other statement is scanned for what can hide anywhere in it:
//! advisory-lock and `set_config` calls, `CREATE TEMP`, `SELECT … INTO TEMP`, `pg_temp.` names and
//! `UPDATE pg_settings`. When the text is not understood the answer is [`Reason::Unsure`]: pin.

use super::effect::{Discard, Effect, Reason, Tx, Word};
use super::lexer::{Lexer, Syntax, Token, TokenKind};
use super::name::Name;
use super::set;
use super::split::StatementTokens;

/// The effect of each non-empty statement of a query string, in order; see [`session_effects`].
#[derive(Debug, Clone)]
pub struct Effects<'a> {
    lexer: Lexer<'a>,
}

/// What each statement of `sql` (a Query string or a Parse query) does to the session, assuming
/// `standard_conforming_strings` is on. Lazy and allocation-free.
pub fn session_effects(sql: &[u8]) -> Effects<'_> {
    session_effects_with(sql, Syntax::default())
}

/// [`session_effects`] for a server with these settings.
pub fn session_effects_with(sql: &[u8], syntax: Syntax) -> Effects<'_> {
    Effects {
        lexer: Lexer::with_syntax(sql, syntax),
    }
}

/// Whether `sql` is one `SELECT` that cannot touch session state, decided in one pass over the
/// bytes, before any tokenizing: it calls nothing (no `(`), stores nothing (no `into`), names no
/// temporary object (no `pg_temp`), hides nothing (no quotes but `'`, no comments, no
/// backslashes, no dollar quotes; `$1` parameters are fine) and is one statement (a `;` only at
/// the end). Most queries of a read-heavy pooled workload pass; anything else takes
/// [`session_effects`], which agrees whenever this says yes (a property test checks it).
pub fn plain_select(sql: &[u8]) -> bool {
    let s = sql.trim_ascii();
    let s = s.strip_suffix(b";").unwrap_or(s);
    let Some((head, rest)) = s.split_at_checked(6) else {
        return false;
    };
    if !head.eq_ignore_ascii_case(b"select")
        || !rest
            .first()
            .is_some_and(|&b| b.is_ascii_whitespace() || b == b'*')
    {
        return false;
    }
    // `into` and `pg_temp` matter as words: looked for where one may start, after anything
    // but a letter (after a digit or `_` too: the lexer reads `1_into` as `1_` and `into`, as
    // older servers read `1into`).
    let word_at = |at: usize, word: &[u8]| {
        let starts = at == 0 || !rest[at - 1].is_ascii_alphabetic();
        starts
            && rest
                .get(at..at + word.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let looks_at = |b: u8| PLAIN_SELECT_LOOKS_AT[usize::from(b)];
    let mut quotes = 0usize;
    // Whether the byte at `i`, one of those looked at, leaves the statement plain.
    let mut plain_at = |i: usize| {
        match rest[i] {
            b'\'' => quotes += 1,
            b'(' | b';' | b'"' | b'\\' | b'-' | b'/' | 0 => return false,
            b'$' if !rest.get(i + 1).is_some_and(u8::is_ascii_digit) => return false,
            b'i' | b'I' if word_at(i, b"into") => return false,
            b'p' | b'P' if word_at(i, b"pg_temp") => return false,
            _ => {}
        }
        true
    };
    // Most bytes are none of those looked at: eight at a time, their table entries make a
    // bit mask without a branch, and only the bytes it marks are looked at.
    let mut chunks = rest.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut marked = (0..8).fold(0u32, |m, k| m | u32::from(looks_at(chunk[k])) << k);
        while marked != 0 {
            let k = marked.trailing_zeros() as usize;
            marked &= marked - 1;
            if !plain_at(at + k) {
                return false;
            }
        }
        at += 8;
    }
    for (i, &b) in (at..).zip(chunks.remainder()) {
        if looks_at(b) && !plain_at(i) {
            return false;
        }
    }
    // An odd count leaves a string open, which the full scan calls unsure.
    quotes.is_multiple_of(2)
}

/// The bytes the loop in [`plain_select`] must examine; it skips all others.
static PLAIN_SELECT_LOOKS_AT: [bool; 256] = {
    let mut t = [false; 256];
    let looked_at = b"'(;\"\\-/\0$iIpP";
    let mut i = 0;
    while i < looked_at.len() {
        t[looked_at[i] as usize] = true;
        i += 1;
    }
    t
};

impl Effects<'_> {
    /// Whether any statement [affects the session](Effect::affects_session): the check for every
    /// Query and Parse in pooled mode. Stops at the first that does.
    pub fn affects_session(mut self) -> bool {
        self.any(|e| e.affects_session())
    }
}

impl<'a> Iterator for Effects<'a> {
    type Item = Effect<'a>;

    fn next(&mut self) -> Option<Effect<'a>> {
        loop {
            let mut st = StatementTokens::new(self.lexer);
            let Some(first) = st.next() else {
                self.lexer = st.into_lexer();
                if st.input_ended() {
                    return None;
                }
                continue;
            };
            let effect = statement(first, &mut st);
            // Whatever the statement's reader left, up to the `;`.
            st.by_ref().for_each(drop);
            self.lexer = st.into_lexer();
            return Some(if st.saw_unterminated() {
                Effect::Pin(Reason::Unsure)
            } else {
                effect
            });
        }
    }
}

impl core::iter::FusedIterator for Effects<'_> {}

/// The effect of the statement that starts with `first`; may leave tokens unread.
fn statement<'a>(first: Token<'a>, st: &mut StatementTokens<'a>) -> Effect<'a> {
    match Word::of(Some(&first)).as_bytes() {
        b"set" => set::set(st),
        b"reset" => set::reset(st),
        b"discard" => discard(st),
        b"listen" => Effect::Pin(Reason::Listen),
        b"load" => Effect::Pin(Reason::Load),
        b"do" => Effect::Pin(Reason::DoBlock),
        b"declare" => declare(st),
        b"prepare" => prepare(st),
        b"execute" => execute(st),
        b"deallocate" => deallocate(st),
        b"begin" | b"start" => begin(st),
        b"commit" | b"end" | b"abort" | b"rollback" | b"savepoint" | b"release" => end(&first, st),
        _ => scan(Some(first), st),
    }
}

/// `DISCARD {ALL | PLANS | SEQUENCES | TEMP | TEMPORARY}`.
fn discard<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let what = match Word::of(st.next().as_ref()).as_bytes() {
        b"all" => Discard::All,
        b"plans" => Discard::Plans,
        b"sequences" => Discard::Sequences,
        b"temp" | b"temporary" => Discard::Temp,
        _ => return Effect::Pin(Reason::Unsure),
    };
    match st.next() {
        None => Effect::Discard(what),
        Some(_) => Effect::Pin(Reason::Unsure),
    }
}

/// `DECLARE name … [WITH HOLD] FOR query`: only `WITH HOLD` before `FOR` outlives the
/// transaction; the query is scanned like any other.
fn declare<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let mut after_with = false;
    while let Some(t) = st.next() {
        if t.is_keyword(b"for") {
            return scan(None, st);
        }
        if after_with && t.is_keyword(b"hold") {
            return Effect::Pin(Reason::WithHoldCursor);
        }
        after_with = t.is_keyword(b"with");
    }
    Effect::Other
}

/// `PREPARE name [(types)] AS statement`, or two-phase `PREPARE TRANSACTION 'gid'`.
fn prepare<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let name = st.next();
    let then = st.next();
    if name.is_some_and(|t| t.is_keyword(b"transaction"))
        && then.is_some_and(|t| t.kind == TokenKind::String)
    {
        return Effect::Transaction(Tx::PrepareTransaction);
    }
    Effect::Pin(Reason::Prepare)
}

/// One identifier token as a [`Name`].
fn ident<'a>(t: Option<Token<'a>>) -> Option<Name<'a>> {
    t.filter(|t| matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent))
        .map(|t| Name::new(t.text))
}

/// `EXECUTE name [(args)]`; the arguments are scanned like any other expression.
fn execute<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let Some(name) = ident(st.next()) else {
        return Effect::Pin(Reason::Unsure);
    };
    match scan(None, st) {
        Effect::Pin(reason) => Effect::Pin(reason),
        _ => Effect::Execute { name },
    }
}

/// `DEALLOCATE [PREPARE] {name | ALL}`.
fn deallocate<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let mut t = st.next();
    if t.is_some_and(|t| t.is_keyword(b"prepare")) && st.clone().next().is_some() {
        t = st.next();
    }
    let name = match t {
        Some(t) if t.is_keyword(b"all") => None,
        t => match ident(t) {
            Some(name) => Some(name),
            None => return Effect::Pin(Reason::Unsure),
        },
    };
    match st.next() {
        None => Effect::Deallocate { name },
        Some(_) => Effect::Pin(Reason::Unsure),
    }
}

/// `BEGIN`/`START TRANSACTION` with its modes.
fn begin<'a>(st: &mut StatementTokens<'a>) -> Effect<'a> {
    let mut mode = AccessMode::default();
    st.for_each(|t| mode.see(&t));
    Effect::Transaction(Tx::Begin {
        read_only: mode.read_only == Some(true),
    })
}

/// The access mode among transaction modes (`BEGIN`, `START TRANSACTION`, `SET TRANSACTION`),
/// fed one token at a time: the last `READ ONLY` or `READ WRITE` counts.
#[derive(Debug, Default)]
pub(super) struct AccessMode {
    after_read: bool,
    /// `Some(true)` for `READ ONLY`, `Some(false)` for `READ WRITE`, `None` if neither was given.
    pub(super) read_only: Option<bool>,
}

impl AccessMode {
    /// Takes the next token of the modes.
    pub(super) fn see(&mut self, t: &Token<'_>) {
        if self.after_read && t.is_keyword(b"only") {
            self.read_only = Some(true);
        } else if self.after_read && t.is_keyword(b"write") {
            self.read_only = Some(false);
        }
        self.after_read = t.is_keyword(b"read");
    }
}

/// `COMMIT`, `END`, `ABORT`, `ROLLBACK [TO]`, `SAVEPOINT`, `RELEASE`; `COMMIT PREPARED` and
/// `ROLLBACK PREPARED` finish another (prepared) transaction and are [`Effect::Other`].
pub(super) fn end<'a>(first: &Token<'a>, st: &mut StatementTokens<'a>) -> Effect<'a> {
    let mut next = st.next();
    if next.is_some_and(|t| t.is_keyword(b"work") || t.is_keyword(b"transaction")) {
        next = st.next();
    }
    if next.is_some_and(|t| t.is_keyword(b"prepared")) {
        return Effect::Other;
    }
    let tx = match Word::of(Some(first)).as_bytes() {
        b"savepoint" => Tx::Savepoint,
        b"release" => Tx::ReleaseSavepoint,
        b"rollback" if next.is_some_and(|t| t.is_keyword(b"to")) => Tx::RollbackToSavepoint,
        b"rollback" | b"abort" => Tx::Rollback,
        _ => Tx::Commit,
    };
    Effect::Transaction(tx)
}

/// Session-level advisory lock functions (the `_xact_` ones end with the transaction).
const ADVISORY_LOCKS: [&[u8]; 4] = [
    b"pg_advisory_lock",
    b"pg_advisory_lock_shared",
    b"pg_try_advisory_lock",
    b"pg_try_advisory_lock_shared",
];

/// Reserved words that can follow `INTO temp` when `temp` is a table's name, not a keyword.
const AFTER_INTO_NAME: [&[u8]; 13] = [
    b"from",
    b"where",
    b"group",
    b"having",
    b"window",
    b"union",
    b"intersect",
    b"except",
    b"order",
    b"limit",
    b"offset",
    b"fetch",
    b"for",
];

/// How far `set_config(` arguments are read before giving up (and pinning).
const SET_CONFIG_LOOKAHEAD: usize = 64;

/// What the scan of a statement has seen so far.
#[derive(Default)]
struct Scan {
    temp: bool,
    on_commit_drop: bool,
    update: bool,
}

/// Scans the rest of a statement (from `first`, if given) for effects that can hide anywhere.
fn scan<'a>(first: Option<Token<'a>>, st: &mut StatementTokens<'a>) -> Effect<'a> {
    let mut seen = Scan::default();
    let mut prev: Option<Token<'a>> = None;
    let mut cur = first.or_else(|| st.next());
    while let Some(t) = cur {
        let next = st.next();
        if matches!(t.kind, TokenKind::Ident | TokenKind::QuotedIdent)
            && let Some(reason) = seen.word(&t, prev.as_ref(), next.as_ref(), st)
        {
            return Effect::Pin(reason);
        }
        prev = Some(t);
        cur = next;
    }
    if seen.temp && !seen.on_commit_drop {
        Effect::Pin(Reason::TempTable)
    } else {
        Effect::Other
    }
}

impl Scan {
    /// Looks at one word `t` between `prev` and `next`; `rest` follows `next`.
    fn word(
        &mut self,
        t: &Token<'_>,
        prev: Option<&Token<'_>>,
        next: Option<&Token<'_>>,
        rest: &StatementTokens<'_>,
    ) -> Option<Reason> {
        let next_is = |kind| next.is_some_and(|n| n.kind == kind);
        if next_is(TokenKind::LParen) {
            if ADVISORY_LOCKS.iter().any(|name| t.is_name(name)) {
                return Some(Reason::AdvisoryLock);
            }
            if t.is_name(b"set_config") && !set_config_is_local(*rest) {
                return Some(Reason::SetConfig);
            }
            return None;
        }
        if next_is(TokenKind::Dot) && t.is_name(b"pg_temp") {
            return Some(Reason::TempTable);
        }
        if self.update && t.is_name(b"pg_settings") {
            return Some(Reason::SetConfig);
        }
        // Each test starts with a length comparison, so most words cost a few instructions.
        let ahead = || next.copied().into_iter().chain(*rest);
        if t.is_keyword(b"update") {
            self.update = true;
        } else if t.is_keyword(b"create") {
            self.temp |= creates_temp(ahead());
        } else if t.is_keyword(b"into")
            && !prev.is_some_and(|p| p.is_keyword(b"insert") || p.is_keyword(b"merge"))
        {
            self.temp |= selects_into_temp(ahead());
        } else if t.is_keyword(b"on") {
            let mut ahead = ahead();
            self.on_commit_drop |= ahead.next().is_some_and(|t| t.is_keyword(b"commit"))
                && ahead.next().is_some_and(|t| t.is_keyword(b"drop"));
        }
        None
    }
}

fn is_temp(t: Option<Token<'_>>) -> bool {
    t.is_some_and(|t| t.is_keyword(b"temp") || t.is_keyword(b"temporary"))
}

fn is_scope(t: Option<Token<'_>>) -> bool {
    t.is_some_and(|t| t.is_keyword(b"global") || t.is_keyword(b"local"))
}

/// After `CREATE`: `[OR REPLACE] [GLOBAL | LOCAL] {TEMP | TEMPORARY}`.
fn creates_temp<'a>(mut ahead: impl Iterator<Item = Token<'a>>) -> bool {
    let mut t = ahead.next();
    if t.is_some_and(|t| t.is_keyword(b"or")) {
        ahead.next();
        t = ahead.next();
    }
    if is_scope(t) {
        t = ahead.next();
    }
    is_temp(t)
}

/// After `INTO` (not `INSERT INTO`/`MERGE INTO`): `[GLOBAL | LOCAL] {TEMP | TEMPORARY} [TABLE]
/// name`. `INTO temp FROM …` selects into a table called temp.
fn selects_into_temp<'a>(mut ahead: impl Iterator<Item = Token<'a>>) -> bool {
    let mut t = ahead.next();
    if is_scope(t) {
        t = ahead.next();
    }
    if !is_temp(t) {
        return false;
    }
    match ahead.next() {
        Some(n) if n.kind == TokenKind::QuotedIdent || n.is_keyword(b"table") => true,
        Some(n) if n.kind == TokenKind::Ident => !AFTER_INTO_NAME.iter().any(|w| n.is_keyword(w)),
        _ => false,
    }
}

/// After `set_config(`: whether the call is `set_config(name, value, true)` with a literal true,
/// found within [`SET_CONFIG_LOOKAHEAD`] tokens.
fn set_config_is_local(args: StatementTokens<'_>) -> bool {
    let mut depth = 0u32;
    let mut commas = 0;
    let mut third = None;
    let mut third_len = 0;
    for t in args.take(SET_CONFIG_LOOKAHEAD) {
        match t.kind {
            TokenKind::RParen if depth == 0 => {
                return commas == 2 && third_len == 1 && third.is_some_and(is_true);
            }
            TokenKind::Comma if depth == 0 => {
                commas += 1;
                continue;
            }
            TokenKind::LParen => depth += 1,
            TokenKind::RParen => depth -= 1,
            _ => {}
        }
        if commas == 2 {
            third = Some(t);
            third_len += 1;
        }
    }
    false
}

/// `true`, or a plain string constant Postgres reads as boolean true.
fn is_true(t: Token<'_>) -> bool {
    if t.kind == TokenKind::String && t.text.first() == Some(&b'\'') {
        let inner = t.inner();
        return [&b"true"[..], b"t", b"yes", b"y", b"on", b"1"]
            .iter()
            .any(|w| inner.eq_ignore_ascii_case(w));
    }
    t.is_keyword(b"true")
}
