//! Tokens of SQL text, the way the Postgres server lexer (`scan.l`) finds their boundaries.
//!
//! The lexer works on bytes, so it takes UTF-8 and every other ASCII-compatible client encoding
//! (LATIN*, EUC_*, …). It only has to find where quotes, comments and words begin and end; it does
//! not validate, and it never allocates: every [`Token`] borrows from the input. Input Postgres would
//! reject is still cut into tokens; an unterminated quote or comment becomes one
//! [`TokenKind::Unterminated`] token running to the end, which callers treat as "unsure".
//!
//! Known gap: in the client-only encodings SJIS, BIG5, GBK, UHC and GB18030 a backslash (0x5C) can be
//! the second byte of a character. Inside `E''` strings (or any string when
//! `standard_conforming_strings` is off) the lexer would read it as an escape, as Postgres would not.

/// Server settings that change how SQL text is cut into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syntax {
    /// `standard_conforming_strings` (on by default since PostgreSQL 9.1). When off, a backslash
    /// escapes the next byte in plain `'…'` strings too, as it always does in `E'…'`.
    pub standard_conforming_strings: bool,
}

impl Default for Syntax {
    fn default() -> Self {
        Syntax {
            standard_conforming_strings: true,
        }
    }
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A keyword or unquoted identifier: compare with [`Token::is_keyword`].
    Ident,
    /// `"…"` (with `""` for a quote inside) or `U&"…"`.
    QuotedIdent,
    /// A string constant: `'…'`, `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'` or `$tag$…$tag$`.
    String,
    /// A numeric constant.
    Number,
    /// A parameter placeholder: `$1`.
    Param,
    /// A run of operator characters, cut where Postgres cuts it (before `--` and `/*`; trailing
    /// `+`/`-` split off unless the operator has one of `~!@#^&|`?%`).
    Operator,
    /// `(`.
    LParen,
    /// `)`.
    RParen,
    /// `,`.
    Comma,
    /// `.` (not part of a number).
    Dot,
    /// `;`.
    Semicolon,
    /// Any other single byte: `[`, `]`, `:`, a `$` that starts nothing, stray bytes.
    Punct,
    /// A quote or comment that never ends; the token runs to the end of the input.
    Unterminated,
}

/// One token, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// What it is.
    pub kind: TokenKind,
    /// Byte offset of its first byte in the input.
    pub start: usize,
    /// Its bytes, quotes and prefixes included.
    pub text: &'a [u8],
}

impl<'a> Token<'a> {
    /// Byte offset just past its last byte.
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// Whether this is the unquoted word `lower` (given in lowercase), in any case.
    pub fn is_keyword(&self, lower: &[u8]) -> bool {
        self.kind == TokenKind::Ident && self.text.eq_ignore_ascii_case(lower)
    }

    /// Whether this names `lower` (given in lowercase) the way Postgres resolves identifiers: an
    /// unquoted word in any case, or a quoted identifier that is exactly `lower`. `U&"…"` with
    /// escapes is compared as written, so it never matches an escaped spelling.
    pub fn is_name(&self, lower: &[u8]) -> bool {
        match self.kind {
            TokenKind::Ident => self.text.eq_ignore_ascii_case(lower),
            TokenKind::QuotedIdent => {
                let inner = quoted_inner(self.text);
                // `""` inside becomes one quote: compare byte by byte with that folding.
                let mut unescaped = Unescape::new(inner, b'"');
                lower.iter().all(|&b| unescaped.next() == Some(b)) && unescaped.next().is_none()
            }
            _ => false,
        }
    }

    /// For a quoted identifier or string: the text between the quotes (prefixes and dollar tags
    /// removed), still escaped. For other tokens, the text itself.
    pub fn inner(&self) -> &'a [u8] {
        match self.kind {
            TokenKind::QuotedIdent => quoted_inner(self.text),
            TokenKind::String => string_inner(self.text),
            _ => self.text,
        }
    }
}

/// The bytes of `"…"` or `U&"…"` between the quotes.
fn quoted_inner(text: &[u8]) -> &[u8] {
    let text = text
        .strip_prefix(b"U&")
        .or_else(|| text.strip_prefix(b"u&"))
        .unwrap_or(text);
    let text = text.strip_prefix(b"\"").unwrap_or(text);
    text.strip_suffix(b"\"").unwrap_or(text)
}

/// The bytes of a string constant between its quotes or dollar tags.
fn string_inner(text: &[u8]) -> &[u8] {
    if text.first() == Some(&b'$') {
        let tag_len = text
            .iter()
            .skip(1)
            .position(|&b| b == b'$')
            .map_or(text.len(), |p| p + 2);
        let body = text.get(tag_len..).unwrap_or_default();
        return body
            .get(..body.len().saturating_sub(tag_len))
            .unwrap_or_default();
    }
    let open = text.iter().position(|&b| b == b'\'').map_or(0, |p| p + 1);
    let body = text.get(open..).unwrap_or_default();
    body.strip_suffix(b"'").unwrap_or(body)
}

/// Iterates over quoted text with each doubled `quote` folded into one.
#[derive(Debug, Clone)]
pub(crate) struct Unescape<'a> {
    rest: &'a [u8],
    quote: u8,
}

impl<'a> Unescape<'a> {
    pub(crate) fn new(rest: &'a [u8], quote: u8) -> Self {
        Unescape { rest, quote }
    }
}

impl Iterator for Unescape<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        if b == self.quote && self.rest.first() == Some(&self.quote) {
            self.rest = self.rest.get(1..).unwrap_or_default();
        }
        Some(b)
    }
}

/// Byte classes, looked up in [`CLASS`]: one load per byte on the hot loops.
const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
const DOLQ_CONT: u8 = 8;
const OP_CHAR: u8 = 16;

/// The class bits of every byte value.
static CLASS: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < table.len() {
        let b = i as u8;
        let mut c = 0;
        // Postgres `space`: space, tab, newline, carriage return, form feed, vertical tab.
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            c |= SPACE;
        }
        // `ident_start`: a letter, `_` or any byte with the high bit set; `dolq_cont` adds digits
        // (a dollar-quote tag has no `$`) and `ident_cont` adds `$` too.
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            c |= IDENT_START | IDENT_CONT | DOLQ_CONT;
        }
        if b.is_ascii_digit() {
            c |= IDENT_CONT | DOLQ_CONT;
        }
        if b == b'$' {
            c |= IDENT_CONT;
        }
        // `op_chars`.
        if matches!(
            b,
            b'~' | b'!'
                | b'@'
                | b'#'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
                | b'+'
                | b'-'
                | b'*'
                | b'/'
                | b'%'
                | b'<'
                | b'>'
                | b'='
        ) {
            c |= OP_CHAR;
        }
        table[i] = c;
        i += 1;
    }
    table
}

fn is(class: u8, b: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

fn ident_start(b: u8) -> bool {
    is(IDENT_START, b)
}

fn ident_cont(b: u8) -> bool {
    is(IDENT_CONT, b)
}

fn dolq_cont(b: u8) -> bool {
    is(DOLQ_CONT, b)
}

fn op_char(b: u8) -> bool {
    is(OP_CHAR, b)
}

/// Cuts SQL text into [`Token`]s, skipping whitespace and comments.
///
/// `Copy`, so a caller can look ahead by copying it. After the input ends (or after an
/// [`TokenKind::Unterminated`] token) it yields `None` forever.
#[derive(Debug, Clone, Copy)]
pub struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    syntax: Syntax,
}

impl<'a> Lexer<'a> {
    /// A lexer over `src` with default [`Syntax`] (`standard_conforming_strings` on).
    pub fn new(src: &'a [u8]) -> Self {
        Self::with_syntax(src, Syntax::default())
    }

    /// A lexer over `src` for a server with these settings.
    pub fn with_syntax(src: &'a [u8], syntax: Syntax) -> Self {
        Lexer {
            src,
            pos: 0,
            syntax,
        }
    }

    /// The whole input.
    pub fn source(&self) -> &'a [u8] {
        self.src
    }

    /// The settings this lexer follows.
    pub fn syntax(&self) -> Syntax {
        self.syntax
    }

    /// Byte offset where the next token (or the whitespace before it) begins.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    fn token(&mut self, kind: TokenKind, start: usize, end: usize) -> Token<'a> {
        let end = end.min(self.src.len());
        self.pos = end;
        Token {
            kind,
            start,
            text: self.src.get(start..end).unwrap_or_default(),
        }
    }

    /// Skips whitespace and comments. `Err(start)` if a `/*` comment starting at `start` never ends.
    fn skip_blank(&mut self) -> Result<(), usize> {
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Ok(());
            };
            if is(SPACE, b) {
                self.pos += 1;
                continue;
            }
            match (b, self.at(self.pos + 1)) {
                (b'-', Some(b'-')) => self.pos = self.line_end(self.pos),
                (b'/', Some(b'*')) => {
                    let start = self.pos;
                    self.pos = block_comment_end(self.src, start).ok_or(start)?;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Offset of the newline ending the `--` comment at `from` (or the end of the input).
    fn line_end(&self, from: usize) -> usize {
        let rest = self.src.get(from..).unwrap_or_default();
        memchr::memchr2(b'\n', b'\r', rest).map_or(self.src.len(), |p| from + p)
    }

    /// Lexes a quoted run starting at the opening quote `open`; returns the offset past its close.
    /// With `backslash`, `\` escapes the next byte. A string (not an identifier) may be continued by
    /// whitespace with a newline and another quote, and keeps its kind: `E'a'\n'\''` is one string
    /// with escapes, `B'1'\n'\'` one without.
    fn quoted_end(&self, open: usize, quote: u8, backslash: bool) -> Option<usize> {
        let mut i = open + 1;
        loop {
            let rest = self.src.get(i..)?;
            let found = if backslash {
                memchr::memchr2(quote, b'\\', rest)
            } else {
                memchr::memchr(quote, rest)
            };
            let at = i + found?;
            // A backslash escape, or a doubled quote: skip both bytes.
            if self.at(at) == Some(b'\\') || self.at(at + 1) == Some(quote) {
                i = at + 2;
            } else if let Some(next) = (quote == b'\'')
                .then(|| self.continuation(at + 1))
                .flatten()
            {
                i = next + 1;
            } else {
                return Some(at + 1);
            }
        }
    }

    /// Postgres `quotecontinue`: from `from`, horizontal whitespace and `--` comments, at least one
    /// newline, then any whitespace and comments, then a quote. Returns the quote's offset.
    fn continuation(&self, from: usize) -> Option<usize> {
        let mut i = from;
        let mut newline = false;
        loop {
            match (self.at(i)?, self.at(i + 1)) {
                (b'\n' | b'\r', _) => newline = true,
                (b' ' | b'\t' | 0x0c, _) => {}
                (0x0b, _) if newline => {}
                (b'-', Some(b'-')) => {
                    i = self.line_end(i);
                    continue;
                }
                (b'\'', _) if newline => return Some(i),
                _ => return None,
            }
            i += 1;
        }
    }

    /// A quoted string or identifier whose opening quote is at `open` (after a prefix of
    /// `open - start` bytes).
    fn quoted(&mut self, start: usize, open: usize, kind: TokenKind, backslash: bool) -> Token<'a> {
        let quote = if kind == TokenKind::QuotedIdent {
            b'"'
        } else {
            b'\''
        };
        match self.quoted_end(open, quote, backslash) {
            Some(end) => self.token(kind, start, end),
            None => self.token(TokenKind::Unterminated, start, self.src.len()),
        }
    }

    /// At a `$`: a parameter `$1`, a dollar-quoted string, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Token<'a> {
        let mut i = start + 1;
        if self.at(i).is_some_and(|b| b.is_ascii_digit()) {
            while self.at(i).is_some_and(|b| b.is_ascii_digit()) {
                i += 1;
            }
            return self.token(TokenKind::Param, start, i);
        }
        if self.at(i).is_some_and(ident_start) {
            while self.at(i).is_some_and(dolq_cont) {
                i += 1;
            }
        }
        if self.at(i) != Some(b'$') {
            return self.token(TokenKind::Punct, start, start + 1);
        }
        let delimiter = self.src.get(start..=i).unwrap_or_default();
        // The first `$tag$` after the opening one closes it: every `$` inside is a place Postgres
        // tries a delimiter, and a tag never contains `$`.
        // Each comparison stops at the next `$` in the body at the latest, so this is linear.
        let mut at = i + 1;
        loop {
            let rest = self.src.get(at..).unwrap_or_default();
            let Some(p) = memchr::memchr(b'$', rest) else {
                return self.token(TokenKind::Unterminated, start, self.src.len());
            };
            at += p;
            if rest.get(p..).is_some_and(|r| r.starts_with(delimiter)) {
                return self.token(TokenKind::String, start, at + delimiter.len());
            }
            at += 1;
        }
    }

    /// A number: digits (with `_`), an optional fraction and an optional exponent. What follows
    /// (`1abc`, `0x1F`) starts a new token, as in PostgreSQL 14 and older; 15 and newer reject it.
    fn number(&mut self, start: usize) -> Token<'a> {
        let digits = |lx: &Self, mut i: usize| {
            while lx.at(i).is_some_and(|b| b.is_ascii_digit() || b == b'_') {
                i += 1;
            }
            i
        };
        let mut i = digits(self, start);
        if self.at(i) == Some(b'.') && self.at(i + 1) != Some(b'.') {
            i = digits(self, i + 1);
        }
        if matches!(self.at(i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.at(i + 1), Some(b'+' | b'-')));
            if self.at(i + 1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                i = digits(self, i + 1 + sign);
            }
        }
        self.token(TokenKind::Number, start, i)
    }

    /// A run of operator characters starting at `start`, cut as Postgres cuts it.
    fn operator(&mut self, start: usize) -> Token<'a> {
        let mut end = start;
        while let Some(b) = self.at(end).filter(|&b| op_char(b)) {
            let next = self.at(end + 1);
            if end > start
                && ((b == b'-' && next == Some(b'-')) || (b == b'/' && next == Some(b'*')))
            {
                break;
            }
            end += 1;
        }
        let run = self.src.get(start..end).unwrap_or_default();
        let trailing_sign = |r: &[u8]| matches!(r.last(), Some(b'+' | b'-'));
        if run.len() > 1 && trailing_sign(run) && !run.iter().any(|b| b"~!@#^&|`?%".contains(b)) {
            while end - start > 1 && trailing_sign(self.src.get(start..end).unwrap_or_default()) {
                end -= 1;
            }
        }
        self.token(TokenKind::Operator, start, end)
    }

    /// An identifier or keyword starting at `start`.
    fn word(&mut self, start: usize) -> Token<'a> {
        let rest = self.src.get(start..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| !ident_cont(b))
            .unwrap_or(rest.len());
        self.token(TokenKind::Ident, start, start + len)
    }
}

/// Offset past the end of the (nested) block comment opening at `start`, if it ends.
fn block_comment_end(src: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    loop {
        let rest = src.get(i..)?;
        // Only `/` and `*` matter inside a comment.
        i += memchr::memchr2(b'/', b'*', rest)?;
        match (src.get(i), src.get(i + 1)) {
            (Some(b'/'), Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (Some(b'*'), Some(b'/')) => {
                depth = depth.saturating_sub(1);
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if let Err(start) = self.skip_blank() {
            return Some(self.token(TokenKind::Unterminated, start, self.src.len()));
        }
        let start = self.pos;
        let b = self.at(start)?;
        let b1 = self.at(start + 1);
        // Most tokens are words: only a word followed by a quote or `&` can be a prefix.
        if ident_start(b) && !matches!(b1, Some(b'\'' | b'&')) {
            return Some(self.word(start));
        }
        let b2 = self.at(start + 2);
        let scs = self.syntax.standard_conforming_strings;
        let token = match (b, b1, b2) {
            (b'\'', _, _) => self.quoted(start, start, TokenKind::String, !scs),
            (b'"', _, _) => self.quoted(start, start, TokenKind::QuotedIdent, false),
            (b'e' | b'E', Some(b'\''), _) => self.quoted(start, start + 1, TokenKind::String, true),
            (b'n' | b'N', Some(b'\''), _) => self.quoted(start, start + 1, TokenKind::String, !scs),
            (b'b' | b'B' | b'x' | b'X', Some(b'\''), _) => {
                self.quoted(start, start + 1, TokenKind::String, false)
            }
            (b'u' | b'U', Some(b'&'), Some(b'\'')) => {
                self.quoted(start, start + 2, TokenKind::String, false)
            }
            (b'u' | b'U', Some(b'&'), Some(b'"')) => {
                self.quoted(start, start + 2, TokenKind::QuotedIdent, false)
            }
            (b'$', _, _) => self.dollar(start),
            (b'0'..=b'9', _, _) => self.number(start),
            (b'.', Some(b'0'..=b'9'), _) => self.number(start),
            (b'(', _, _) => self.token(TokenKind::LParen, start, start + 1),
            (b')', _, _) => self.token(TokenKind::RParen, start, start + 1),
            (b',', _, _) => self.token(TokenKind::Comma, start, start + 1),
            (b'.', _, _) => self.token(TokenKind::Dot, start, start + 1),
            (b';', _, _) => self.token(TokenKind::Semicolon, start, start + 1),
            _ if ident_start(b) => self.word(start),
            _ if op_char(b) => self.operator(start),
            _ => self.token(TokenKind::Punct, start, start + 1),
        };
        Some(token)
    }
}

impl core::iter::FusedIterator for Lexer<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, Text)> {
        Lexer::new(sql.as_bytes())
            .map(|t| (t.kind, Text::from_utf8_lossy(t.text).into_owned()))
            .collect()
    }

    fn texts(sql: &str) -> Vec<Text> {
        kinds(sql).into_iter().map(|(_, t)| t).collect()
    }

    use TokenKind::{
        Comma, Dot, Ident, Number, Operator, Param, QuotedIdent, Semicolon, String, Unterminated,
    };
    use std::string::String as Text;

    #[test]
    fn words_numbers_params_and_punctuation_are_separate_tokens() {
        assert_eq!(
            kinds("SELECT a.b, $1 FROM t WHERE x = 1.5e-3;"),
            vec![
                (Ident, "SELECT".into()),
                (Ident, "a".into()),
                (Dot, ".".into()),
                (Ident, "b".into()),
                (Comma, ",".into()),
                (Param, "$1".into()),
                (Ident, "FROM".into()),
                (Ident, "t".into()),
                (Ident, "WHERE".into()),
                (Ident, "x".into()),
                (Operator, "=".into()),
                (Number, "1.5e-3".into()),
                (Semicolon, ";".into()),
            ]
        );
    }

    #[test]
    fn line_and_nested_block_comments_are_skipped() {
        assert_eq!(
            texts("a -- one ; two\nb /* x /* y */ ; z */ c/**/d"),
            ["a", "b", "c", "d"]
        );
        assert_eq!(texts("a --\r;b"), ["a", ";", "b"]);
    }

    #[test]
    fn doubled_quotes_stay_inside_strings_and_identifiers() {
        assert_eq!(
            kinds(r#"'it''s' "a""b" ''"#),
            vec![
                (String, "'it''s'".into()),
                (QuotedIdent, r#""a""b""#.into()),
                (String, "''".into()),
            ]
        );
    }

    #[test]
    fn backslash_escapes_only_in_e_strings_unless_standard_conforming_strings_is_off() {
        assert_eq!(texts(r"E'it\'s' x"), [r"E'it\'s'", "x"]);
        assert_eq!(texts(r"e'\\' x"), [r"e'\\'", "x"]);
        assert_eq!(texts(r"'a\' x"), [r"'a\'", "x"]);
        let off = Syntax {
            standard_conforming_strings: false,
        };
        let lexed: Vec<_> = Lexer::with_syntax(br"'a\' x' y", off)
            .map(|t| t.text)
            .collect();
        assert_eq!(lexed, [&br"'a\' x'"[..], b"y"]);
    }

    #[test]
    fn a_string_continued_on_the_next_line_keeps_its_kind() {
        // Postgres reads `E'a'` newline `'\''` as one escaped string, so the `;` after is real.
        assert_eq!(kinds("E'a'\n'\\'';x").len(), 3);
        assert_eq!(texts("E'a'\n'\\'';x"), ["E'a'\n'\\''", ";", "x"]);
        // Without a newline there is no continuation.
        assert_eq!(texts("E'a' '\\' x"), ["E'a'", "'\\'", "x"]);
        // A bit string stays without escapes even when plain strings have them.
        let off = Syntax {
            standard_conforming_strings: false,
        };
        let lexed: Vec<_> = Lexer::with_syntax(b"B'1'\n'\\';x", off)
            .map(|t| t.text)
            .collect();
        assert_eq!(lexed, [&b"B'1'\n'\\'"[..], b";", b"x"]);
        // Quoted identifiers have no continuation.
        assert_eq!(texts("\"a\"\n\"b\""), ["\"a\"", "\"b\""]);
    }

    #[test]
    fn prefixed_strings_and_unicode_identifiers_are_single_tokens() {
        assert_eq!(
            kinds(r#"B'01' X'ff' N'n' U&'\0041' U&"d\0061t""#),
            vec![
                (String, "B'01'".into()),
                (String, "X'ff'".into()),
                (String, "N'n'".into()),
                (String, r"U&'\0041'".into()),
                (QuotedIdent, r#"U&"d\0061t""#.into()),
            ]
        );
        // A longer word before a quote is a word and then a plain string.
        assert_eq!(texts(r"xe'\' x"), ["xe", r"'\'", "x"]);
    }

    #[test]
    fn dollar_quotes_follow_postgres_tag_rules() {
        assert_eq!(texts("$$ a ; 'b $$ c"), ["$$ a ; 'b $$", "c"]);
        assert_eq!(texts("$fn$ $$ ; $x$ $fn$;"), ["$fn$ $$ ; $x$ $fn$", ";"]);
        assert_eq!(kinds("$1")[0].0, Param);
        assert_eq!(texts("$12$"), ["$12", "$"]);
        // `$` continues an identifier, so this is one word, not a quote.
        assert_eq!(texts("a$$b$$"), ["a$$b$$"]);
        assert_eq!(texts("$a-$"), ["$", "a", "-", "$"]);
        assert_eq!(Token::inner(&Lexer::new(b"$t$x$t$").next().unwrap()), b"x");
    }

    #[test]
    fn operators_stop_before_comments_and_drop_trailing_signs() {
        assert_eq!(texts("a+-- c\n1"), ["a", "+", "1"]);
        assert_eq!(texts("a*/* c */b"), ["a", "*", "b"]);
        assert_eq!(texts("x=-1"), ["x", "=", "-", "1"]);
        assert_eq!(texts("x<>1 y@-1"), ["x", "<>", "1", "y", "@-", "1"]);
    }

    #[test]
    fn unterminated_quotes_and_comments_run_to_the_end() {
        for sql in [
            "SELECT 'abc",
            "SELECT E'abc\\'",
            "SELECT \"abc",
            "SELECT $x$ abc $y$",
            "SELECT /* a /* b */",
            "SELECT U&'",
        ] {
            let last = Lexer::new(sql.as_bytes()).last().unwrap();
            assert_eq!(last.kind, Unterminated, "{sql}");
            assert_eq!(last.end(), sql.len(), "{sql}");
        }
    }

    #[test]
    fn is_name_matches_unquoted_in_any_case_and_quoted_exactly() {
        let t: Vec<_> = Lexer::new(br#"Set_Config "set_config" "Set_Config" "a""b""#).collect();
        assert!(t[0].is_name(b"set_config") && t[1].is_name(b"set_config"));
        assert!(!t[2].is_name(b"set_config"));
        assert!(t[3].is_name(b"a\"b"));
        assert!(t[0].is_keyword(b"set_config") && !t[1].is_keyword(b"set_config"));
    }
}
