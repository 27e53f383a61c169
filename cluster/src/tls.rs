//! TLS for a cluster's servers: certificate files where the server's user can read them, and the
//! `postgresql.conf` lines that turn `ssl` on with them (for [`Spec::extra_conf`](crate::Spec)).
//!
//! PostgreSQL refuses a private key that others can read, or that belongs to someone other than the
//! server's user (or root): the key is written with mode 0600 and, when the servers run as
//! `postgres`, handed to `postgres`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::Error;
use crate::exec::{Tools, run};

/// Writes `server.crt` (`cert_pem`, leaf first) and `server.key` (`key_pem`) into `dir` (created
/// if missing, mode 0755) and returns the lines `ssl = on`, `ssl_cert_file = '…'` and
/// `ssl_key_file = '…'` with absolute paths, to append to [`Spec::extra_conf`](crate::Spec).
///
/// Existing files are replaced. `dir` and its parents must be searchable by the server's user.
pub fn server_tls_conf(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<Vec<String>, Error> {
    let io = |verb: &str, p: &Path, e: std::io::Error| {
        Error::new(format!("cannot {verb} {}: {e}", p.display()))
    };
    fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| io("set permissions of", dir, e))?;
    let dir = fs::canonicalize(dir).map_err(|e| io("resolve", dir, e))?;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    for (path, text, mode) in [(&cert, cert_pem, 0o644), (&key, key_pem, 0o600)] {
        let _ = fs::remove_file(path);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| io("write", path, e))?;
    }
    if Tools::detect()?.as_postgres() {
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(&cert).arg(&key);
        run(&mut chown, Duration::from_secs(30))?;
    }
    let quote = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', "''"));
    Ok(vec![
        "ssl = on".to_owned(),
        format!("ssl_cert_file = {}", quote(&cert)),
        format!("ssl_key_file = {}", quote(&key)),
    ])
}
