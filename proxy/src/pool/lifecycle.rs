//! What happens to a server connection at each turn of its life, as pure functions: handed
//! out from the idle list (reuse or close), given back by a client (keep, reset first, or
//! close). `Idle → Lent → Idle`, `→ Pinned` (the client keeps it; it is reset when the client
//! leaves), `→ Closing`. Table-tested; the pool does the IO.

use std::time::Duration;

use pgsteer_protocol::backend::TxStatus;

/// Why a server connection is closed rather than pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its socket failed, or the server closed it.
    Broken,
    /// Given back inside a transaction or mid-message (the client left).
    Unclean,
    /// Older than `server_lifetime`.
    Lifetime,
    /// Idle longer than `server_idle_timeout` with more than `min_idle` idle.
    IdleTimeout,
    /// Its member lost the role or the address it was opened for, or left.
    Retired,
    /// The reset query failed.
    ResetFailed,
    /// The proxy is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Value of the `reason` label of `pgsteer_pool_server_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Broken => "broken",
            CloseReason::Unclean => "unclean",
            CloseReason::Lifetime => "lifetime",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Retired => "retired",
            CloseReason::ResetFailed => "reset_failed",
            CloseReason::Shutdown => "shutdown",
        }
    }

    /// Every reason, for metrics that start at zero.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Broken,
        CloseReason::Unclean,
        CloseReason::Lifetime,
        CloseReason::IdleTimeout,
        CloseReason::Retired,
        CloseReason::ResetFailed,
        CloseReason::Shutdown,
    ];
}

/// What to do with a connection a client gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back to the idle list as it is.
    Keep,
    /// Run the reset query first (session state the next client must not see), then keep.
    Reset,
    /// Close it.
    Close(CloseReason),
}

/// What is known about a connection when a client gives it back.
#[derive(Debug, Clone, Copy)]
pub struct Returned {
    /// Transaction status of its last ReadyForQuery.
    pub tx: TxStatus,
    /// Nothing in flight: every request answered, both streams at a message boundary.
    pub clean: bool,
    /// Its socket failed.
    pub broken: bool,
    /// It carries session state of its client (session mode, or the client was pinned).
    pub dirty: bool,
    /// Its member no longer fits (role or address changed, member gone).
    pub retired: bool,
    /// How long it has been open.
    pub age: Duration,
}

/// The disposition of a connection given back: broken, unclean and retired connections
/// close; old ones close instead of a reset; dirty ones are reset; the rest are kept.
pub fn on_return(r: Returned, lifetime: Duration) -> Disposition {
    if r.broken {
        Disposition::Close(CloseReason::Broken)
    } else if !r.clean || r.tx != TxStatus::Idle {
        Disposition::Close(CloseReason::Unclean)
    } else if r.retired {
        Disposition::Close(CloseReason::Retired)
    } else if expired(r.age, lifetime) {
        Disposition::Close(CloseReason::Lifetime)
    } else if r.dirty {
        Disposition::Reset
    } else {
        Disposition::Keep
    }
}

/// Whether an idle connection may be handed out: `None` if so, else why it closes.
pub fn on_checkout(age: Duration, lifetime: Duration, retired: bool) -> Option<CloseReason> {
    if retired {
        Some(CloseReason::Retired)
    } else if expired(age, lifetime) {
        Some(CloseReason::Lifetime)
    } else {
        None
    }
}

/// Whether the pool's janitor closes an idle connection: past its lifetime, or idle for
/// `idle_timeout` while more than `min_idle` stay idle (`idle_rank` counts from the most
/// recently used, 0-based).
pub fn on_janitor(
    age: Duration,
    idle_for: Duration,
    idle_rank: usize,
    min_idle: usize,
    lifetime: Duration,
    idle_timeout: Duration,
) -> Option<CloseReason> {
    if expired(age, lifetime) {
        Some(CloseReason::Lifetime)
    } else if !idle_timeout.is_zero() && idle_for >= idle_timeout && idle_rank >= min_idle {
        Some(CloseReason::IdleTimeout)
    } else {
        None
    }
}

/// A zero lifetime means "no limit".
fn expired(age: Duration, lifetime: Duration) -> bool {
    !lifetime.is_zero() && age >= lifetime
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn returned(tx: u8) -> Returned {
        Returned {
            tx: TxStatus::from_byte(tx).unwrap(),
            clean: true,
            broken: false,
            dirty: false,
            retired: false,
            age: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_connection_given_back_is_kept_only_when_idle_clean_and_current() {
        use CloseReason::*;
        use Disposition::*;
        let base = returned(b'I');
        // (facts, lifetime) -> disposition; the status byte is that of the last ReadyForQuery.
        let table = [
            (base, HOUR, Keep),
            (returned(b'T'), HOUR, Close(Unclean)),
            (returned(b'E'), HOUR, Close(Unclean)),
            (
                Returned {
                    clean: false,
                    ..base
                },
                HOUR,
                Close(Unclean),
            ),
            (
                Returned {
                    broken: true,
                    ..base
                },
                HOUR,
                Close(Broken),
            ),
            (
                Returned {
                    retired: true,
                    ..base
                },
                HOUR,
                Close(Retired),
            ),
            (
                Returned {
                    dirty: true,
                    ..base
                },
                HOUR,
                Reset,
            ),
            (Returned { age: HOUR, ..base }, HOUR, Close(Lifetime)),
            (
                Returned {
                    age: HOUR * 9,
                    ..base
                },
                Duration::ZERO,
                Keep,
            ),
            (
                Returned {
                    dirty: true,
                    age: HOUR,
                    ..base
                },
                HOUR,
                Close(Lifetime),
            ),
        ];
        for (facts, lifetime, want) in table {
            assert_eq!(on_return(facts, lifetime), want, "{facts:?}");
        }
    }

    #[test]
    fn an_idle_connection_is_handed_out_unless_retired_or_too_old() {
        assert_eq!(on_checkout(Duration::from_secs(5), HOUR, false), None);
        assert_eq!(
            on_checkout(Duration::from_secs(5), HOUR, true),
            Some(CloseReason::Retired)
        );
        assert_eq!(on_checkout(HOUR, HOUR, false), Some(CloseReason::Lifetime));
        assert_eq!(on_checkout(HOUR, Duration::ZERO, false), None);
    }

    #[test]
    fn the_janitor_keeps_min_idle_connections_however_long_idle() {
        let idle = Duration::from_secs(600);
        let timeout = Duration::from_secs(300);
        let age = Duration::from_secs(900);
        assert_eq!(on_janitor(age, idle, 0, 1, HOUR, timeout), None);
        assert_eq!(
            on_janitor(age, idle, 1, 1, HOUR, timeout),
            Some(CloseReason::IdleTimeout)
        );
        assert_eq!(
            on_janitor(age, Duration::from_secs(10), 3, 0, HOUR, timeout),
            None
        );
        assert_eq!(on_janitor(age, idle, 3, 0, HOUR, Duration::ZERO), None);
        assert_eq!(
            on_janitor(HOUR, Duration::ZERO, 0, 5, HOUR, timeout),
            Some(CloseReason::Lifetime)
        );
    }
}
