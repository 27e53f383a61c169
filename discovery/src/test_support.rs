//! Builders shared by the fold and verify table tests.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::probe::Observation;
use crate::topology::{Member, Role};

/// Round-trip time of every probe built by [`up`].
pub const ROUND_TRIP: Duration = Duration::from_millis(2);

/// A probe that answered in [`ROUND_TRIP`].
pub fn up(in_recovery: bool, lsn: u64, replay_delay: Option<f64>) -> Observation {
    Observation::Up {
        in_recovery,
        lsn,
        replay_delay,
        round_trip: ROUND_TRIP,
    }
}

/// A probe that failed.
pub fn down(error: &str) -> Observation {
    Observation::Down {
        error: error.to_owned(),
    }
}

/// Observations by member name.
pub fn observed(pairs: &[(&str, Observation)]) -> BTreeMap<String, Observation> {
    pairs
        .iter()
        .map(|(n, o)| ((*n).to_owned(), o.clone()))
        .collect()
}

/// (role, routable, lsn, lag_bytes, lag_seconds, note) of a member.
pub type Row = (
    Role,
    bool,
    Option<u64>,
    Option<u64>,
    Option<f64>,
    Option<String>,
);

/// The fields the tables compare.
pub fn row(m: &Member) -> Row {
    (
        m.role,
        m.routable,
        m.lsn,
        m.lag_bytes,
        m.lag_seconds,
        m.note.clone(),
    )
}
