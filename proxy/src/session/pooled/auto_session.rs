//! Route `auto` in the pooled session's flow: where each transaction goes, whether the
//! replica lent is fresh enough, and sending a refused transaction again to the primary.

use pgsteer_protocol::backend::TxStatus;
use pgsteer_protocol::encode::{self, ErrorInfo};
use pgsteer_protocol::sqlstate::SqlState;
use tracing::debug;

use super::auto::REPLAY_LSN_SQL;
use super::{Lent, Session};
use crate::session::relay::Relay;

impl Session<'_> {
    /// The client's transaction ended: its connection goes back, and a transaction a
    /// replica refused is sent again.
    pub(super) async fn idle(&mut self, lent: Option<Lent>, relay: &mut Relay<'_>) {
        if let Some(l) = lent {
            self.finish_transaction(l).await;
        }
        self.ran_again = false;
        self.retry_on_primary(relay);
    }

    /// Route `auto`: a transaction a replica refused with `25006` before anything reached the
    /// client is sent again, as if the client had sent it, and goes to the primary.
    fn retry_on_primary(&mut self, relay: &mut Relay<'_>) {
        let Some(auto) = &mut self.auto else {
            return;
        };
        if !auto.net.retry {
            return;
        }
        if !relay.replay_client(auto.net.saved()) {
            // Cannot happen with the net's size bound; the client must not wait for nothing.
            auto.net.retry = false;
            let out = relay.client_inject();
            encode::error_response(
                out,
                &ErrorInfo::error(
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                    "pgsteer: a replica refused the transaction as a write and it could not be sent to the primary",
                ),
            );
            encode::ready_for_query(out, TxStatus::Idle);
        }
        auto.net.sent_again();
    }

    /// Route `auto`, read-your-writes: whether the replica lent has replayed the client's
    /// last write (asked when the probe has not shown it yet); if not, the transaction is
    /// routed to the primary instead.
    pub(super) async fn fresh_enough(&mut self, lent: &mut Lent) -> bool {
        let Some(auto) = &mut self.auto else {
            return true;
        };
        let replay = match auto.check_for(&lent.target.member) {
            None => return true,
            Some(Ok(replay)) => Some(replay),
            Some(Err(_)) => match Box::pin(lent.conn.query(REPLAY_LSN_SQL)).await {
                Ok(rows) => rows
                    .first()
                    .and_then(|r| r.first()?.as_deref().and_then(pgsteer_discovery::parse_lsn)),
                Err(e) => {
                    debug!(error = %e, "could not ask a replica how far it has replayed");
                    None
                }
            },
        };
        if auto.checked(&lent.target.member, replay, &self.shared.metrics) {
            return true;
        }
        self.route_now = auto.primary();
        false
    }

    /// Route `auto`: where the transaction that starts with the `waiting` messages goes.
    pub(super) fn route_transaction(&mut self, waiting: &[u8]) {
        let Some(auto) = &mut self.auto else {
            return;
        };
        // A deferred `BEGIN` is part of the transaction: it is read with what follows.
        let with_begin;
        let waiting = match &self.begin {
            Some(begin) => {
                with_begin = [begin.as_slice(), waiting].concat();
                with_begin.as_slice()
            }
            None => waiting,
        };
        self.route_now = auto.route(
            waiting,
            &self.state.statements,
            &self.shared.topology.current(),
            &self.shared.metrics,
        );
    }
}
