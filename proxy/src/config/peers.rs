//! `[peers]`: the other pgsteer processes behind the same Service, to which cancel requests
//! for keys they own are forwarded (`[listen] peer` turns peering on).

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError::Peers(msg.into())
}

/// `[peers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    /// This process's peer id; default: a stable hash of env `POD_NAME`, else the host name.
    pub id: Option<u16>,
    /// The HMAC-SHA256 key shared by all peers (every forwarded request carries an HMAC).
    pub secret_file: Option<PathBuf>,
    /// `off` or `mutual` (the peer port uses `[tls] cert_file`/`key_file` and verifies peers
    /// against `ca_file`).
    #[serde(default)]
    pub tls: PeerTls,
    /// PEM CA bundle peers' certificates are verified against (`tls = "mutual"`; ignored with
    /// `tls = "off"`, so a deployment can mount it before turning mutual TLS on).
    pub ca_file: Option<PathBuf>,
    /// Most cancel requests forwarded per second per source address; excess dropped.
    #[serde(default = "default_forward_rate")]
    pub forward_rate: u32,
    /// Static peers.
    #[serde(default)]
    pub member: Vec<PeerMember>,
    /// Peers found as pgsteer's own pods.
    pub kubernetes: Option<PeerKubernetes>,
}

fn default_forward_rate() -> u32 {
    100
}

impl Default for Peers {
    fn default() -> Self {
        Peers {
            id: None,
            secret_file: None,
            tls: PeerTls::Off,
            ca_file: None,
            forward_rate: default_forward_rate(),
            member: Vec::new(),
            kubernetes: None,
        }
    }
}

/// TLS on the peer port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTls {
    /// Plaintext; requests are authenticated by their HMAC alone.
    #[default]
    Off,
    /// Mutual TLS, on top of the HMAC.
    Mutual,
}

/// `[[peers.member]]`: one static peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerMember {
    /// Its peer id.
    pub id: u16,
    /// Its peer port, `host:port`.
    pub address: String,
}

/// `[peers.kubernetes]`: peers are the pods this selector matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerKubernetes {
    /// Label selector of pgsteer's own pods.
    pub selector: String,
    /// Namespace; default: `[discovery.kubernetes] namespace`, else the pod's own.
    pub namespace: Option<String>,
    /// The peer port on every pod.
    #[serde(default = "default_peer_port")]
    pub port: u16,
    /// Kubeconfig file; default: `[discovery.kubernetes] kubeconfig`, else `KUBECONFIG` or
    /// the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

fn default_peer_port() -> u16 {
    6440
}

impl Peers {
    /// The shared secret, read from `secret_file` (surrounding whitespace removed).
    pub fn secret(&self) -> Result<Vec<u8>, ConfigError> {
        const SETTING: &str = "peers.secret_file";
        let Some(path) = &self.secret_file else {
            return Err(err(
                "listen.peer needs peers.secret_file (the HMAC key shared by all peers)",
            ));
        };
        let raw = std::fs::read(path).map_err(|source| ConfigError::SettingFile {
            setting: SETTING,
            path: path.clone(),
            source,
        })?;
        let secret = raw.trim_ascii().to_vec();
        if secret.len() < 16 {
            return Err(err(format!(
                "{SETTING} {}: the secret must be at least 16 bytes",
                path.display()
            )));
        }
        Ok(secret)
    }

    /// Checks the section when peering is on (`[listen] peer` set); `client_tls`: whether
    /// `[tls] cert_file`/`key_file` are set.
    pub(super) fn validate(&self, on: bool, client_tls: bool) -> Result<(), ConfigError> {
        if !on {
            return Ok(());
        }
        self.secret()?;
        if self.forward_rate == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "peers.forward_rate",
                bound: "above zero",
            });
        }
        match (self.tls, &self.ca_file, client_tls) {
            (PeerTls::Mutual, None, _) => {
                return Err(err("peers.tls = \"mutual\" needs peers.ca_file"));
            }
            (PeerTls::Mutual, _, false) => {
                return Err(err(
                    "peers.tls = \"mutual\" needs tls.cert_file and tls.key_file",
                ));
            }
            _ => {}
        }
        let mut ids = std::collections::HashSet::new();
        for m in &self.member {
            if !ids.insert(m.id) {
                return Err(err(format!("peers.member: duplicate id {}", m.id)));
            }
            if m.address
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(err(format!(
                    "peers.member {}: address {:?}, expected host:port",
                    m.id, m.address
                )));
            }
        }
        if let Some(k) = &self.kubernetes
            && k.selector.trim().is_empty()
        {
            return Err(err(
                "peers.kubernetes.selector: give the label selector of pgsteer's own pods",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PeerTls};

    fn with(peers: &str, secret: &std::path::Path) -> Result<Config, String> {
        let text = format!(
            r#"
            [listen]
            rw = "127.0.0.1:0"
            peer = "0.0.0.0:6440"
            [discovery]
            source = "static"
            [discovery.probe]
            user = "pgsteer"
            [[discovery.members]]
            name = "pg-0"
            address = "127.0.0.1:5432"
            [tls]
            cert_file = "/etc/pgsteer/tls.crt"
            key_file = "/etc/pgsteer/tls.key"
            {}
            "#,
            peers.replace("SECRET", &secret.display().to_string())
        );
        Config::parse(&text, std::iter::empty()).map_err(|e| e.to_string())
    }

    fn secret_file(content: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "pgsteer-config-peers-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn the_documented_shape_parses() {
        let s = secret_file("0123456789abcdef0123\n");
        let c = with(
            r#"
            [peers]
            id = 3
            secret_file = "SECRET"
            tls = "mutual"
            ca_file = "/etc/pgsteer-peer/ca.crt"
            forward_rate = 100
            [[peers.member]]
            id = 1
            address = "10.0.0.5:6440"
            [peers.kubernetes]
            selector = "app.kubernetes.io/name=pgsteer"
            port = 6440
            "#,
            &s,
        )
        .unwrap();
        assert_eq!(c.peers.id, Some(3));
        assert_eq!(c.peers.tls, PeerTls::Mutual);
        assert_eq!(c.peers.secret().unwrap(), b"0123456789abcdef0123");
        assert_eq!(c.peers.member[0].address, "10.0.0.5:6440");
        assert_eq!(c.peers.kubernetes.as_ref().unwrap().port, 6440);
        assert!(c.peer_ca().is_some());
    }

    #[test]
    fn the_shape_with_tls_off_and_a_ca_file_parses_and_ignores_the_ca() {
        let s = secret_file("0123456789abcdef0123456789");
        let c = with(
            r#"
            [peers]
            id = 3
            secret_file = "SECRET"
            tls = "off"
            ca_file = "/etc/pgsteer-peer/ca.crt"
            forward_rate = 100
            [[peers.member]]
            id = 1
            address = "10.0.0.5:6440"
            [peers.kubernetes]
            selector = "app.kubernetes.io/name=pgsteer"
            port = 6440
            "#,
            &s,
        )
        .unwrap();
        assert_eq!(c.peers.tls, PeerTls::Off);
        assert_eq!(c.peer_ca(), None);
    }

    #[test]
    fn peering_mistakes_are_one_line_errors_naming_the_setting() {
        let s = secret_file("0123456789abcdef-long-enough");
        let short = secret_file("short");
        let cases = [
            ("[peers]\nid = 1\n", "peers.secret_file"),
            (
                "[peers]\nsecret_file = \"/nonexistent/x\"\n",
                "/nonexistent/x",
            ),
            (
                &format!("[peers]\nsecret_file = \"{}\"\n", short.display()),
                "at least 16 bytes",
            ),
            (
                "[peers]\nsecret_file = \"SECRET\"\ntls = \"mutual\"\n",
                "peers.ca_file",
            ),
            (
                "[peers]\nsecret_file = \"SECRET\"\n[[peers.member]]\nid = 1\naddress = \"a:1\"\n[[peers.member]]\nid = 1\naddress = \"b:1\"\n",
                "duplicate id 1",
            ),
            (
                "[peers]\nsecret_file = \"SECRET\"\n[[peers.member]]\nid = 1\naddress = \"nohost\"\n",
                "host:port",
            ),
            (
                "[peers]\nsecret_file = \"SECRET\"\nforward_rate = 0\n",
                "peers.forward_rate",
            ),
            ("[peers]\nsecret_file = \"SECRET\"\nid = 70000\n", "id"),
        ];
        for (peers, wanted) in cases {
            let e = with(peers, &s).unwrap_err();
            assert!(e.contains(wanted), "{peers}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
