//! A pooled client whose server connection is lost in the middle of a transaction (its
//! primary was demoted, fenced or died) stays connected: it is told once, with a message
//! naming the old and the new primary, and pgsteer keeps its view of the transaction
//! consistent (`stand_in.rs`) until its next transaction runs on the new primary.

use bytes::BytesMut;
use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::frontend::tag as ftag;
use pgsteer_protocol::sqlstate::SqlState;
use tracing::{debug, info};

use pgsteer_discovery::Role;

use super::owner::{InFlight, Sent};
use super::stand_in::{Local, StandIn};
use super::state::TxEnd;
use super::{Lent, Session};
use crate::session::relay::{EndKind, Event, Relay};
use crate::session::{SessionError, Side};

/// The SQLSTATE and message of a lost transaction: rolled back for sure, or `unknown`
/// (a statement that may have committed was in flight).
fn loss_message(why: String, unknown: bool) -> (SqlState, String) {
    if unknown {
        (
            SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
            format!(
                "pgsteer: {why}: whether the statement in flight took effect is unknown; \
                 this connection stays open"
            ),
        )
    } else {
        (
            SqlState::SERIALIZATION_FAILURE,
            format!(
                "pgsteer: the transaction was rolled back: {why}; run it again, this \
                 connection stays open"
            ),
        )
    }
}

/// What the serve loop does after the stand-in looked at the client's waiting bytes.
pub(super) enum Next {
    /// Answered, refused or waiting for more: relay again.
    Relay,
    /// A server connection is needed.
    Lend,
    /// The client leaves (Terminate), or left half-way through a message.
    Leave,
}

impl<'a> Session<'a> {
    /// With no connection lent, lets the stand-in answer what the client sent, if it can.
    pub(super) fn stand_in(&mut self, relay: &mut Relay<'_>) -> Next {
        if relay.client_unscanned().first() == Some(&ftag::TERMINATE) {
            return Next::Leave;
        }
        if !self.state.lends() {
            return Next::Lend;
        }
        let mut reply = std::mem::take(&mut self.reply);
        reply.clear();
        let read_only_begin = self.auto.is_none();
        let waiting = relay.client_unscanned();
        let next = match self
            .stand_in
            .step_with(waiting, &mut reply, read_only_begin)
        {
            Local::Answer { consumed, tx } => {
                if matches!(self.stand_in, StandIn::Begun(_)) {
                    self.shared.metrics.deferred_begins.inc();
                }
                relay.answer_client(consumed, &reply, tx);
                Next::Relay
            }
            Local::Reject { tx } => {
                relay.set_tx(tx);
                relay.reject(&reply);
                Next::Relay
            }
            Local::DropFrame => {
                relay.drop_client_frame();
                Next::Relay
            }
            Local::Wait(_) if relay.client_ended() => Next::Leave,
            Local::Wait(n) => {
                relay.want_client(n);
                Next::Relay
            }
            Local::Server(begin) => {
                self.begin = begin;
                Next::Lend
            }
        };
        self.reply = reply;
        next
    }

    /// After a relay run: if it ended because the lent connection is lost in the middle of
    /// a transaction (its member lost its role with the transaction open, or the server
    /// went away) and the client can stay, the transaction is lost and the client stays:
    /// `true`. The client can stay when it lends per transaction (nothing of its session
    /// lives on the connection), the proxy is not shutting down, and the client was sent
    /// only whole messages (see `Relay::can_lose_server`).
    pub(super) fn lost(
        &mut self,
        event: &Result<Event, SessionError>,
        relay: &mut Relay<'a>,
        lent: &mut Option<Lent>,
        sent: &mut InFlight,
    ) -> bool {
        let why = match event {
            Err(e) if e.side == Side::Server => {
                debug!(error = %e, "server connection lost");
                String::new()
            }
            Ok(Event::End(end)) => match (end.kind, &end.closing) {
                (EndKind::Terminated, Some(closing)) => closing.reason.clone(),
                (EndKind::ServerClosed, _) => String::new(),
                _ => return false,
            },
            _ => return false,
        };
        if !self.state.lends() || self.shared.shutdown.drain.is_cancelled() {
            return false;
        }
        if lent.is_none() {
            // The order was for the connection the client had before: nothing of its
            // transaction is on a server (a `BEGIN` answered by the stand-in, or a block it
            // keeps failed). The client stays; its next statement borrows on whoever leads.
            if matches!(event, Ok(Event::End(e)) if e.kind == EndKind::Terminated)
                && !self.shared.shutdown.now.is_cancelled()
            {
                self.drained(None, relay);
                return true;
            }
            return false;
        }
        if !relay.can_lose_server() {
            return false;
        }
        if let Some(l) = lent.take() {
            self.lose(l, &why, relay, sent);
        }
        true
    }

    /// The connection lent to the client is lost with its transaction: it is closed, the
    /// client is told (now if a request was in flight, else at its next one) and keeps its
    /// connection to pgsteer; `why` names the cause (empty: the server went away).
    fn lose(&mut self, l: Lent, why: &str, relay: &mut Relay<'a>, sent: &mut InFlight) {
        if !self.run_again(&l, relay) {
            self.report_loss(&l.target.member, why, relay, sent);
        }
        sent.clear();
        self.state.server_fatal = None;
        self.state.batch_end = TxEnd::No;
        if let Some(auto) = &mut self.auto {
            auto.net.disarm();
        }
        let mut l = l;
        l.conn.broken = true;
        self.give_back(l, TxStatus::Idle, false);
        self.lent_binding.set(None);
        relay.rebind(self.drain_order(), None);
    }

    /// Tells the client its transaction was lost (now, or at its next request) and leaves it
    /// in the state Postgres would: in a failed block, or idle.
    fn report_loss(&mut self, member: &str, why: &str, relay: &mut Relay<'a>, sent: &InFlight) {
        let in_block = relay.tx() != TxStatus::Idle;
        let in_flight = relay.awaiting_answer();
        let ends = || {
            sent.iter().filter_map(|s| match s {
                Sent::Sync(end) => Some(*end),
                _ => None,
            })
        };
        self.stand_in = StandIn::Off;
        if in_flight
            && !relay.batch_open()
            && ends().next().is_some()
            && ends().all(|e| e == TxEnd::Rollback)
        {
            // The client was rolling back anyway: its ROLLBACK is answered.
            let mut done = BytesMut::new();
            encode::command_complete(&mut done, "ROLLBACK");
            relay.lose_server(&done, TxStatus::Idle);
            return;
        }
        let may_commit = ends().any(|e| e == TxEnd::Commit);
        let unknown = in_flight && (!in_block || may_commit);
        let (code, message) = loss_message(self.loss_reason(member, why), unknown);
        let mut error = BytesMut::new();
        encode::error_response(&mut error, &ErrorInfo::error(code, &message));
        let tx = if in_block && !may_commit {
            TxStatus::Failed
        } else {
            TxStatus::Idle
        };
        info!(member = %member, sqlstate = code.code(), in_flight, "{message}");
        self.shared
            .metrics
            .transactions_lost
            .with_label_values(&[if unknown { "unknown" } else { "rolled_back" }])
            .inc();
        let reported = relay.lose_server(&error, tx);
        if tx == TxStatus::Failed {
            self.stand_in.abort(error.to_vec(), reported);
        }
    }

    /// Why the connection to `member` was lost, naming the primary now.
    fn loss_reason(&mut self, member: &str, why: &str) -> String {
        if !why.is_empty() {
            // A drain's reason names the new primary already ("… (now pg-1)").
            return why.to_owned();
        }
        let now = match self.shared.topology.current().primary() {
            Some(p) if p.name != member => format!("the primary is now {}", p.name),
            Some(_) => format!("{member} is still the primary"),
            None => "no primary is confirmed yet".to_owned(),
        };
        match self.state.server_fatal.take() {
            Some(fatal) => format!("{member} ended the connection ({fatal}); {now}"),
            None => format!("the connection to {member} was lost; {now}"),
        }
    }

    /// Route `auto`: a read-only transaction on a replica that went away before anything of
    /// its answer reached the client runs again (once) wherever `auto` sends it now: `true`.
    fn run_again(&mut self, l: &Lent, relay: &mut Relay<'a>) -> bool {
        let Some(auto) = &mut self.auto else {
            return false;
        };
        if l.target.role != Role::Replica || self.ran_again || !auto.net.untouched() {
            return false;
        }
        if !relay.can_replay(auto.net.saved().len()) {
            return false;
        }
        let saved = auto.net.saved().to_vec();
        relay.forget_server();
        auto.net.disarm();
        if !relay.replay_client(&saved) {
            // Checked above: it fits.
            return false;
        }
        info!(member = %l.target.member, "a replica went away before answering; the transaction runs again");
        self.ran_again = true;
        true
    }
}
