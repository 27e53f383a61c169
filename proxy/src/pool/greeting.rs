//! What a pooled client is shown at login without waiting for a server connection: the
//! parameters a fresh connection of its pool reports, with the client's own settings on top,
//! each spelt the way Postgres spells it (`iso, dmy` is reported as `ISO, DMY`).

use std::collections::BTreeMap;

use super::server::Settings;

/// Most spellings remembered per pool; past it, clients with new values log in the slow way.
const MAX_SPELLINGS: usize = 256;

/// A pool's knowledge of its server's greeting.
#[derive(Debug, Default)]
pub struct Greeting {
    /// The parameters a fresh connection reports, learnt from the first one opened.
    defaults: Option<Settings>,
    /// (lower-case name, value as a client gave it) → the value as the server reported it.
    spellings: BTreeMap<(String, String), String>,
}

impl Greeting {
    /// Learns the parameters of a freshly opened connection (the first one only).
    pub fn remember_defaults(&mut self, reported: &Settings) {
        if self.defaults.is_none() {
            self.defaults = Some(reported.clone());
        }
    }

    /// Learns how the server spelt the client's `desired` settings, from what a connection
    /// reported once they were applied on it.
    pub fn learn(&mut self, desired: &Settings, reported: &Settings) {
        for (name, value) in reported {
            let lower = name.to_ascii_lowercase();
            if let Some(given) = desired.get(&lower)
                && self.spellings.len() < MAX_SPELLINGS
            {
                self.spellings.insert((lower, given.clone()), value.clone());
            }
        }
    }

    /// What a client with `desired` settings is shown, or `None` when the pool cannot tell
    /// yet: no connection opened, or a value whose spelling it has not seen.
    pub fn shown(&self, desired: &Settings) -> Option<Settings> {
        let mut shown = self.defaults.clone()?;
        for (name, value) in &mut shown {
            let lower = name.to_ascii_lowercase();
            if let Some(given) = desired.get(&lower) {
                value.clone_from(self.spellings.get(&(lower, given.clone()))?);
            }
        }
        Some(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pool::server::settings_of as settings;

    #[test]
    fn nothing_is_shown_before_a_connection_was_opened() {
        assert_eq!(Greeting::default().shown(&Settings::new()), None);
    }

    #[test]
    fn a_client_without_settings_sees_the_defaults() {
        let mut g = Greeting::default();
        let defaults = settings(&[("DateStyle", "ISO, MDY"), ("TimeZone", "UTC")]);
        g.remember_defaults(&defaults);
        g.remember_defaults(&settings(&[("DateStyle", "other")]));
        assert_eq!(g.shown(&Settings::new()), Some(defaults));
    }

    #[test]
    fn a_setting_is_shown_as_the_server_spelt_it_once_learnt() {
        let mut g = Greeting::default();
        g.remember_defaults(&settings(&[("DateStyle", "ISO, MDY"), ("TimeZone", "UTC")]));
        let desired = settings(&[("datestyle", "iso, dmy"), ("search_path", "a")]);
        assert_eq!(g.shown(&desired), None, "spelling not known yet");
        g.learn(
            &desired,
            &settings(&[("DateStyle", "ISO, DMY"), ("TimeZone", "UTC")]),
        );
        assert_eq!(
            g.shown(&desired),
            Some(settings(&[("DateStyle", "ISO, DMY"), ("TimeZone", "UTC")]))
        );
        let other = settings(&[("datestyle", "german")]);
        assert_eq!(g.shown(&other), None, "another value is not guessed");
    }
}
