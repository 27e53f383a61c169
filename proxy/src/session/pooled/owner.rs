//! The relay's [`Owner`] for a pooled session: what it reads of the client's messages
//! (session effects of SQL, prepared-statement names), how it rewrites them for the
//! server connection lent now, and which of the server's answers are its own to drop.
//!
//! Named statements are renamed to their shared server-side name; a Bind or Describe of a
//! statement the connection lacks is preceded by a Close and a Parse of it (the Close makes
//! the Parse safe whatever the server has), and their CloseComplete and ParseComplete are
//! dropped. A queue of the Parse/Close/Sync messages on their way tells which answer belongs
//! to whom; an error skips the server to the next Sync, and the queue follows.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use pgsteer_protocol::backend::{BackendMessage, tag as btag};
use pgsteer_protocol::classify::{Discard, Effect, Reason, Tx, plain_select, session_effects};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::{Flow, FrameRef, TagSet};

use super::auto::SafetyNet;
use super::state::{ClientState, TxEnd};
use crate::pool::server::Settings;
use crate::pool::statements::{ServerStatements, Statement};
use crate::session::SessionError;
use crate::session::relay::Owner;

/// Bytes of a large Parse to wait for before deciding it has a name too long to matter.
const NAME_WAIT: usize = 1024;

/// Describe and Close.
const DESCRIBE: u8 = b'D';
const CLOSE: u8 = b'C';
/// ParseComplete and CloseComplete.
const PARSE_COMPLETE: u8 = b'1';
const CLOSE_COMPLETE: u8 = b'3';
/// BindComplete, ParameterDescription, NoData, RowDescription.
const BIND_COMPLETE: u8 = b'2';
const PARAMETER_DESCRIPTION: u8 = b't';
const NO_DATA: u8 = b'n';
const ROW_DESCRIPTION: u8 = b'T';

/// A message on its way to the server whose answer must be matched.
#[derive(Debug)]
pub enum Sent {
    /// A Parse; `ours`: pgsteer sent it, its ParseComplete is dropped. The statement is
    /// forgotten by the connection if the Parse fails.
    Parse {
        ours: bool,
        statement: Option<Arc<Statement>>,
    },
    /// A Close; `ours` as for Parse.
    Close { ours: bool },
    /// Sync, Query or FunctionCall: answered by ReadyForQuery. Whether the request ends
    /// the transaction (tells a lost `COMMIT`, whose outcome is unknown, from the rest).
    Sync(TxEnd),
}

/// What the relay asks of a pooled session, borrowing the client's state and the server
/// connection lent now.
pub struct Pooled<'s> {
    /// The client's side.
    pub client: &'s mut ClientState,
    /// The statements of the connection lent now.
    pub statements: &'s mut ServerStatements,
    /// The parameters it reported.
    pub reported: &'s mut Settings,
    /// Their fingerprint.
    pub reported_fingerprint: &'s mut u64,
    /// Answers still to match.
    pub sent: &'s mut VecDeque<Sent>,
    /// Prepared statements per connection.
    pub cap: usize,
    /// Route `auto`: the safety net of a replica transaction.
    pub net: Option<&'s mut SafetyNet>,
}

/// The queue of a pooled session's messages in flight (kept across transactions: it is
/// empty whenever the connection is given back).
pub type InFlight = VecDeque<Sent>;

impl Owner for Pooled<'_> {
    const CLIENT_INSPECT: TagSet =
        TagSet::of(&[ftag::QUERY, ftag::PARSE, ftag::BIND, DESCRIBE, CLOSE]);
    // The safety net holds back a replica's first answers, and reads its errors' SQLSTATE.
    const SERVER_INSPECT: TagSet = TagSet::of(&[
        PARSE_COMPLETE,
        CLOSE_COMPLETE,
        btag::PARAMETER_STATUS,
        btag::ERROR_RESPONSE,
        BIND_COMPLETE,
        PARAMETER_DESCRIPTION,
        NO_DATA,
        ROW_DESCRIPTION,
    ]);

    fn client_frame(&mut self, f: &FrameRef<'_>) -> Flow {
        if let Some(net) = &mut self.net {
            net.client_frame();
        }
        match f.tag {
            ftag::QUERY => {
                match f.body {
                    Some(body) => self.effects(body.strip_suffix(b"\0").unwrap_or(body)),
                    None => self.client.pin(Reason::Unsure),
                }
                let end = std::mem::take(&mut self.client.batch_end);
                self.sent.push_back(Sent::Sync(end));
                Flow::Continue
            }
            ftag::SYNC | ftag::FUNCTION_CALL => {
                let end = std::mem::take(&mut self.client.batch_end);
                self.sent.push_back(Sent::Sync(end));
                Flow::Continue
            }
            // The client leaves; the pooled connection stays: its Terminate is dropped.
            ftag::TERMINATE => Flow::Hold,
            ftag::PARSE => self.parse(f.body),
            ftag::BIND => match f.body {
                // Large Binds are held too: their names come first.
                None if !self.client.statements.is_empty() => Flow::Hold,
                None => Flow::Continue,
                Some(body) => self.hold_if_named(second_name(body)),
            },
            DESCRIBE => self.hold_if_named(statement_target(f.body)),
            CLOSE => match statement_target(f.body) {
                Some(name) if self.client.statements.get(name).is_some() => Flow::Hold,
                _ => {
                    self.sent.push_back(Sent::Close { ours: false });
                    Flow::Continue
                }
            },
            _ => Flow::Continue,
        }
    }

    fn server_frame(&mut self, f: &FrameRef<'_>, to_client: &mut BytesMut) -> Flow {
        let flow = self.server_frame_own(f);
        match &mut self.net {
            Some(net) if flow == Flow::Continue => net.server_frame(f, to_client),
            _ => flow,
        }
    }
    fn rewrite(
        &mut self,
        tag: u8,
        body: &[u8],
        body_len: usize,
        out: &mut BytesMut,
    ) -> Result<Option<usize>, SessionError> {
        match tag {
            ftag::PARSE => Ok(self.rewrite_parse(body, body_len, out)),
            ftag::BIND => self.rewrite_bind(body, body_len, out),
            DESCRIBE | CLOSE => Ok(Some(self.rewrite_target(tag, body, body_len, out))),
            ftag::TERMINATE => Ok(Some(body_len)),
            _ => {
                frame_header(out, tag, body_len);
                Ok(Some(0))
            }
        }
    }

    fn server_gone(&self) -> bool {
        self.client.server_fatal.is_some()
    }

    fn lends(&self) -> bool {
        self.client.lends() && self.sent.is_empty()
    }
}

impl Pooled<'_> {
    /// The server messages that are the owner's own business (answers to what it sent,
    /// the connection's parameters).
    fn server_frame_own(&mut self, f: &FrameRef<'_>) -> Flow {
        match f.tag {
            PARSE_COMPLETE | CLOSE_COMPLETE => match self.sent.pop_front() {
                Some(Sent::Parse { ours: true, .. } | Sent::Close { ours: true }) => Flow::Hold,
                _ => Flow::Continue,
            },
            btag::ERROR_RESPONSE => {
                if self.client.lends()
                    && let Some(message) = f.body.and_then(Self::fatal)
                {
                    // The connection ends (its server shuts down): the client does not. It
                    // hears of it from pgsteer, with the reason, once the connection closes.
                    self.client.server_fatal = Some(message);
                    return Flow::Hold;
                }
                // The server skips to the next Sync: so do the answers we wait for.
                while let Some(s) = self.sent.front() {
                    match s {
                        Sent::Sync(_) => break,
                        Sent::Parse {
                            statement: Some(st),
                            ..
                        } => self.statements.remove(st.id),
                        _ => {}
                    }
                    self.sent.pop_front();
                }
                Flow::Continue
            }
            btag::READY_FOR_QUERY => {
                while let Some(s) = self.sent.pop_front() {
                    if matches!(s, Sent::Sync(_)) {
                        break;
                    }
                }
                Flow::Continue
            }
            btag::PARAMETER_STATUS => {
                if let Some((name, value)) = f.body.and_then(two_strings) {
                    self.reported.insert(name.clone(), value.clone());
                    Arc::make_mut(&mut self.client.seen).insert(name, value);
                    *self.reported_fingerprint = crate::pool::server::fingerprint(self.reported);
                    self.client.seen_fingerprint = *self.reported_fingerprint;
                }
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    /// The message of a FATAL or PANIC ErrorResponse.
    fn fatal(body: &[u8]) -> Option<String> {
        match BackendMessage::parse(btag::ERROR_RESPONSE, body) {
            Ok(BackendMessage::ErrorResponse(fields))
                if matches!(fields.severity().as_deref(), Some("FATAL" | "PANIC")) =>
            {
                Some(fields.message().unwrap_or_default().into_owned())
            }
            _ => None,
        }
    }

    /// Acts on what a query string does to the session.
    fn effects(&mut self, sql: &[u8]) {
        if plain_select(sql) {
            // Its one effect would be `Other`: nothing to do, and no tokenizing.
            return;
        }
        for effect in session_effects(sql) {
            match effect {
                Effect::Pin(reason) => self.client.pin(reason),
                Effect::Transaction(Tx::Commit) => self.client.batch_end = TxEnd::Commit,
                Effect::Transaction(Tx::Rollback) if self.client.batch_end == TxEnd::No => {
                    self.client.batch_end = TxEnd::Rollback;
                }
                Effect::Set { local: false, .. } | Effect::Reset { .. } | Effect::ResetAll => {
                    self.client.settings_changed = true;
                }
                Effect::Discard(Discard::All) | Effect::Deallocate { name: None } => {
                    self.client.settings_changed = true;
                    self.client.statements.clear();
                    self.statements.clear();
                }
                // SQL that names protocol-level statements cannot see our renames.
                Effect::Execute { .. } | Effect::Deallocate { name: Some(_) } => {
                    self.client.pin(Reason::Prepare)
                }
                _ => {}
            }
        }
    }

    fn parse(&mut self, body: Option<&[u8]>) -> Flow {
        let Some(body) = body else {
            // Too large to keep: its name decides in `rewrite`.
            return Flow::Hold;
        };
        let Some((name, rest)) = split_cstr(body) else {
            return Flow::Continue;
        };
        if let Some((query, _)) = split_cstr(rest) {
            self.effects(query);
        }
        if name.is_empty() {
            self.sent.push_back(Sent::Parse {
                ours: false,
                statement: None,
            });
            Flow::Continue
        } else {
            Flow::Hold
        }
    }

    fn hold_if_named(&self, name: Option<&[u8]>) -> Flow {
        match name {
            Some(n) if self.client.statements.get(n).is_some() => Flow::Hold,
            _ => Flow::Continue,
        }
    }

    /// A named Parse: the client's name now means this statement; the server gets it under
    /// its shared name (after a Close of that name, in case the connection has it).
    fn rewrite_parse(&mut self, body: &[u8], body_len: usize, out: &mut BytesMut) -> Option<usize> {
        let whole = body.len() == body_len;
        let (name, rest) = match split_cstr(body) {
            Some(split) => split,
            // Statement names are short: wait for the whole name.
            None if !whole && body.len() < NAME_WAIT => return None,
            None => (&b"?"[..], &b""[..]),
        };
        if name.is_empty() || !whole {
            // Unnamed, or a named statement too large to keep: it goes as it is, and a
            // named one pins the client (its name is the client's own on this server).
            if !name.is_empty() {
                self.client.pin(Reason::Unsure);
            }
            self.sent.push_back(Sent::Parse {
                ours: false,
                statement: None,
            });
            frame_header(out, ftag::PARSE, body_len);
            return Some(0);
        }
        let statement = self.client.registry.intern(rest);
        self.client.statements.insert(name, statement.clone());
        close_statement(out, &statement.server_name);
        self.sent.push_back(Sent::Close { ours: true });
        self.remember(&statement, out);
        write_parse(out, &statement);
        self.sent.push_back(Sent::Parse {
            ours: false,
            statement: Some(statement),
        });
        Some(body_len)
    }

    /// A Bind of a named statement: prepared on this connection if it lacks it, renamed.
    fn rewrite_bind(
        &mut self,
        body: &[u8],
        body_len: usize,
        out: &mut BytesMut,
    ) -> Result<Option<usize>, SessionError> {
        let Some((portal, rest)) = split_cstr(body) else {
            return need_more(body, body_len);
        };
        let Some((name, _)) = split_cstr(rest) else {
            return need_more(body, body_len);
        };
        let Some(statement) = self.client.statements.get(name).cloned() else {
            frame_header(out, ftag::BIND, body_len);
            return Ok(Some(0));
        };
        // A driver's prepared `COMMIT` (pgjdbc prepares it after a few uses).
        match super::stand_in::tx_end(statement.query()) {
            TxEnd::No => {}
            end => self.client.batch_end = end,
        }
        self.ensure(&statement, out);
        let taken = portal.len() + 1 + name.len() + 1;
        let new_len = body_len - taken + portal.len() + 1 + statement.server_name.len();
        frame_header(out, ftag::BIND, new_len);
        out.extend_from_slice(portal);
        out.extend_from_slice(&[0]);
        out.extend_from_slice(&statement.server_name);
        Ok(Some(taken))
    }

    /// Describe or Close of a named statement, renamed (and prepared first for Describe).
    fn rewrite_target(
        &mut self,
        tag: u8,
        body: &[u8],
        body_len: usize,
        out: &mut BytesMut,
    ) -> usize {
        let statement = statement_target(Some(body)).and_then(|n| {
            let s = self.client.statements.get(n).cloned();
            if tag == CLOSE {
                self.client.statements.remove(n);
            }
            s
        });
        let Some(statement) = statement else {
            frame_header(out, tag, body_len);
            return 0;
        };
        if tag == DESCRIBE {
            self.ensure(&statement, out);
        } else {
            self.statements.remove(statement.id);
            self.sent.push_back(Sent::Close { ours: false });
        }
        frame_header(out, tag, 1 + statement.server_name.len());
        out.extend_from_slice(b"S");
        out.extend_from_slice(&statement.server_name);
        body_len
    }

    /// Prepares `statement` on the connection first if it lacks it.
    fn ensure(&mut self, statement: &Arc<Statement>, out: &mut BytesMut) {
        if self.statements.touch(statement) {
            return;
        }
        self.client.reprepared += 1;
        close_statement(out, &statement.server_name);
        self.sent.push_back(Sent::Close { ours: true });
        self.remember(statement, out);
        write_parse(out, statement);
        self.sent.push_back(Sent::Parse {
            ours: true,
            statement: Some(statement.clone()),
        });
    }

    /// Records `statement` on the connection, closing the one it evicts.
    fn remember(&mut self, statement: &Arc<Statement>, out: &mut BytesMut) {
        if let Some(old) = self.statements.insert(statement.clone(), self.cap) {
            close_statement(out, &old.server_name);
            self.sent.push_back(Sent::Close { ours: true });
        }
    }
}

fn need_more(body: &[u8], body_len: usize) -> Result<Option<usize>, SessionError> {
    if body.len() >= body_len {
        return Err(SessionError::client_protocol(
            "Bind without its names".into(),
        ));
    }
    Ok(None)
}

/// A message header: tag and the length of a `body_len`-byte body.
fn frame_header(out: &mut BytesMut, tag: u8, body_len: usize) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body_len + 4) as u32).to_be_bytes());
}

/// `Close` of a server-side statement (`name` NUL-terminated).
fn close_statement(out: &mut BytesMut, name: &[u8]) {
    frame_header(out, CLOSE, 1 + name.len());
    out.extend_from_slice(b"S");
    out.extend_from_slice(name);
}

/// `Parse` of `statement` under its server-side name.
fn write_parse(out: &mut BytesMut, statement: &Statement) {
    frame_header(
        out,
        ftag::PARSE,
        statement.server_name.len() + statement.parse_rest.len(),
    );
    out.extend_from_slice(&statement.server_name);
    out.extend_from_slice(&statement.parse_rest);
}

/// A NUL-terminated string at the start of `b`, and what follows it.
fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, b)?;
    Some((b.get(..nul)?, b.get(nul + 1..)?))
}

/// The statement name of a Bind body (its second string).
fn second_name(body: &[u8]) -> Option<&[u8]> {
    let (_, rest) = split_cstr(body)?;
    Some(split_cstr(rest)?.0)
}

/// The statement a Describe or Close body names (`S` + name), if it names one.
fn statement_target(body: Option<&[u8]>) -> Option<&[u8]> {
    let (kind, rest) = body?.split_first()?;
    (*kind == b'S').then(|| split_cstr(rest).map(|(n, _)| n))?
}

/// A ParameterStatus body's name and value.
fn two_strings(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = split_cstr(body)?;
    let (value, _) = split_cstr(rest)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}
