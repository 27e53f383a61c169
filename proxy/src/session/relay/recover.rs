//! What a pooled session asks of the relay when pgsteer answers its client itself: after the
//! server connection of a transaction in progress was lost, and while it stands in for a
//! server (a deferred `BEGIN`, a failed block). See `session/pooled/stand_in.rs`.

use pgsteer_protocol::backend::{TxStatus, tag as btag};
use pgsteer_protocol::encode;

use super::{Relay, State};
use crate::drain::DrainState;

impl Relay<'_> {
    /// Whether the client can be told that its server connection was lost and carry on:
    /// every message the client was sent is whole. The client may be half-way through a
    /// message (a Bind's parameters stream on after pgsteer renamed its statement; a large
    /// message arrives in pieces): the rest of it is skipped when it comes. Messages not
    /// written yet, when a write to the dead server failed, are lost with it: their requests
    /// are answered as lost.
    pub fn can_lose_server(&self) -> bool {
        self.s2c.scanner.at_boundary() && self.s2c.delivered()
    }

    /// Whether a request the server has not answered yet is in flight.
    pub fn awaiting_answer(&self) -> bool {
        self.state.pending > 0
    }

    /// Whether a batch of extended-protocol messages is open (no Sync after them yet).
    pub fn batch_open(&self) -> bool {
        self.state.batch_open
    }

    /// Whether the client's input ended.
    pub fn client_ended(&self) -> bool {
        self.c2s.eof
    }

    /// The server connection is gone (it is no longer attached): what it had half sent is
    /// dropped, and the requests it had not answered are answered here, each with `error`
    /// (or another answer) and ReadyForQuery `tx`. `true` if the client got `error` (a request
    /// was in flight).
    pub fn lose_server(&mut self, error: &[u8], tx: TxStatus) -> bool {
        self.drop_server(Some(error), tx)
    }

    /// The server connection is gone and the client's transaction will be sent again
    /// elsewhere: nothing it had sent reached the client, which is owed nothing for it.
    pub fn forget_server(&mut self) {
        self.drop_server(None, TxStatus::Idle);
    }

    fn drop_server(&mut self, error: Option<&[u8]>, tx: TxStatus) -> bool {
        let unwritten = self.c2s.win.approved().len();
        self.c2s.win.consume(unwritten);
        // The rest of a client message half sent to the lost server is skipped as it comes.
        let partial = self.c2s.scanner.abandon();
        self.s2c.win.discard_unscanned();
        self.s2c.held = false;
        self.s2c.eof = false;
        self.c2s.held = false;
        self.c2s.inject.clear();
        self.rejecting = None;
        self.drain = DrainState::default();
        let pending = if error.is_some() {
            self.state.pending
        } else {
            0
        };
        // Every request in flight gets an answer before its ReadyForQuery: a pipelined
        // Query answered by ReadyForQuery alone would confuse the client.
        for _ in 0..pending {
            self.s2c.inject.extend_from_slice(error.unwrap_or_default());
            encode::ready_for_query(&mut self.s2c.inject, tx);
        }
        // Part of a batch went to the lost server: the rest of it is refused up to its Sync,
        // as Postgres skips to the Sync after an error (a client that sent Flush and waits
        // hears of the loss now).
        let batch_open = self.state.batch_open && error.is_some();
        if batch_open {
            self.s2c.inject.extend_from_slice(error.unwrap_or_default());
            self.rejecting = Some(super::Rejecting {
                skip_left: partial,
                one_frame: false,
            });
        } else if partial > 0 {
            // A request (a large Query, a COPY's data) already answered above.
            self.rejecting = Some(super::Rejecting {
                skip_left: partial,
                one_frame: true,
            });
        }
        self.state = State {
            pending: 0,
            batch_open: false,
            tx,
            last_server_tag: if pending > 0 {
                btag::READY_FOR_QUERY
            } else {
                self.state.last_server_tag
            },
            query_start: None,
            tx_start: None,
            ..self.state
        };
        pending > 0 || batch_open
    }

    /// With no server attached: `reply` answers the first `consumed` bytes of the client's
    /// input, which leaves it in status `tx`.
    pub fn answer_client(&mut self, consumed: usize, reply: &[u8], tx: TxStatus) {
        self.c2s.win.skip(consumed);
        self.s2c.inject.extend_from_slice(reply);
        self.state.tx = tx;
    }

    /// With no server attached: ask for one only once `n` bytes of the client are waiting
    /// (or the client's input can take no more).
    pub fn want_client(&mut self, n: usize) {
        self.want_client = n;
    }

    /// With no server attached: the client's first message is dropped, whole or as it
    /// arrives, and not answered (a copy message of a COPY whose connection was lost).
    pub fn drop_client_frame(&mut self) {
        self.rejecting = Some(super::Rejecting {
            skip_left: 0,
            one_frame: true,
        });
    }

    /// Whether `n` bytes can be put back in front of the client's input once the server is
    /// forgotten.
    pub fn can_replay(&self, n: usize) -> bool {
        // What is approved and unwritten is dropped with the server first; a message half
        // sent cannot be sent again.
        self.c2s.scanner.at_boundary()
            && self.c2s.win.unscanned().is_empty()
            && n <= super::BUF_SIZE
    }

    /// Sets the client's transaction status (a request pgsteer refuses is answered with it).
    pub fn set_tx(&mut self, tx: TxStatus) {
        self.state.tx = tx;
    }
}
