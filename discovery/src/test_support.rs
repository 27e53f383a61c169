//! Builders shared by the fold and verify table tests.

use std::collections::BTreeMap;

use crate::probe::Observation;
use crate::topology::{Member, Role};

/// A probe that answered.
pub fn up(in_recovery: bool, lsn: u64, replay_delay: Option<f64>) -> Observation {
    Observation::Up {
        in_recovery,
        lsn,
        replay_delay,
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
