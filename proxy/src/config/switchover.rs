//! `[switchover]`: a switchover led by pgsteer (`POST /switchover` on the admin port).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[switchover]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switchover {
    /// How long transactions in flight on the old primary may take to finish once new
    /// ones are held; what is left is then ended (its clients stay).
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Bound on the whole switchover: held transactions wait at most this long.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// `user:password` for Patroni's REST API when it asks for basic authentication
    /// (`restapi.authentication`).
    pub patroni_auth_file: Option<PathBuf>,
    /// CloudNativePG: the name of the `Cluster` whose `status.targetPrimary` is set; default:
    /// the old primary's pod name without its `-<n>` suffix (CloudNativePG names pods
    /// `<cluster>-<n>`).
    pub cluster: Option<String>,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for Switchover {
    fn default() -> Self {
        Switchover {
            drain_timeout: default_drain_timeout(),
            timeout: default_timeout(),
            patroni_auth_file: None,
            cluster: None,
        }
    }
}
