//! From configuration to a configuration `pgsteer` can run: the settings parsed and validated
//! (`config`), then the files they name loaded (`tls`), so that a bad certificate path is a
//! configuration error (exit code 64) before anything starts.
//!
//! `config` holds plain settings and knows nothing of TLS; this module is where the two meet,
//! which keeps the dependency one way (`tls` → `config`).

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::tls::{Tls, TlsError};

/// Why a configuration cannot be run. Both kinds are configuration errors to the user.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The settings are unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate, key or CA file named in `[tls]` does not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads a configuration file, applies `PGSTEER_*` overrides from `env`, validates it and
/// loads its TLS files: what `pgsteer run` and `pgsteer check` accept.
pub fn file(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, LoadError> {
    let config = Config::load(path, env)?;
    check_files(&config)?;
    Ok(config)
}

/// The same as [`file`] for configuration text.
pub fn text(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, LoadError> {
    let config = Config::parse(text, env)?;
    check_files(&config)?;
    Ok(config)
}

/// Loads the files a validated configuration names (the `[tls]` certificates, keys and CA
/// bundles) and drops them again; [`crate::start`] loads them for use.
pub fn check_files(config: &Config) -> Result<(), TlsError> {
    Tls::load(&config.tls, config.peer_ca()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[discovery]\nsource = \"static\"\n[discovery.probe]\nuser = \"x\"\n\
                        [[discovery.members]]\nname = \"pg-0\"\naddress = \"127.0.0.1:1\"\n";

    #[test]
    fn a_missing_certificate_file_is_a_load_error_naming_the_setting() {
        let text = format!(
            "{BASE}[tls]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"/nonexistent/tls.key\"\n"
        );
        Config::parse(&text, []).expect("the settings alone are valid");
        let e = super::text(&text, []).unwrap_err();
        assert!(matches!(e, LoadError::Tls(TlsError::Read { .. })), "{e}");
        let e = e.to_string();
        assert!(e.contains("tls.cert_file /nonexistent/tls.crt"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn settings_mistakes_stay_configuration_errors() {
        let e = super::text(&format!("{BASE}[runtime]\nthreads = 0\n"), []).unwrap_err();
        assert!(matches!(e, LoadError::Config(_)), "{e}");
        assert!(e.to_string().contains("runtime.threads"), "{e}");
    }
}
