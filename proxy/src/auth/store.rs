//! Where pooled mode finds a user's secret: `auth_file` (re-read when it changes) first, then
//! `auth_query` run as `auth_user` on the primary (answers, also "no such user", reused for
//! `cache_ttl`). Also what each user's clients proved, so that pgsteer can open server
//! connections as that user without a plaintext password.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Credentials;
use super::scram::SaltKey;
use super::secrets::{Password, Secret};
use super::userlist::{Reload, UserListFile};
use crate::config::{Auth, AuthMethod, ConfigError};
use crate::pool::server::{self, Login};
use crate::router::Target;
use crate::tls::ServerSide;

/// How often `auth_file` is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// User secrets and proven credentials.
pub struct AuthStore {
    /// What clients are asked for.
    pub method: AuthMethod,
    /// Key of derived SCRAM salts.
    pub salt_key: SaltKey,
    file: Option<Mutex<UserListFile>>,
    query: Option<AuthQuery>,
    cache: Mutex<HashMap<String, (Option<Secret>, Instant)>>,
    proven: Mutex<HashMap<String, Credentials>>,
}

struct AuthQuery {
    sql: String,
    user: String,
    password: Option<Password>,
    ttl: Duration,
}

impl AuthStore {
    /// The store `[auth]` describes (files are read now).
    pub fn load(config: &Auth) -> Result<AuthStore, ConfigError> {
        let file = match &config.auth_file {
            Some(path) => Some(Mutex::new(UserListFile::load(path).map_err(|e| {
                ConfigError::Pooling(format!("auth.auth_file {}: {e}", path.display()))
            })?)),
            None => None,
        };
        let salt_key = match &config.salt_key_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| ConfigError::SettingFile {
                    setting: "auth.salt_key_file",
                    path: path.clone(),
                    source,
                })?;
                let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
                SaltKey::new(digest.into())
            }
            None => SaltKey::generate()
                .map_err(|e| ConfigError::Pooling(format!("auth: cannot make a salt key: {e}")))?,
        };
        let password = match &config.auth_password_file {
            Some(path) => Some(Password::new(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::SettingFile {
                        setting: "auth.auth_password_file",
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r']),
            )),
            None => None,
        };
        let query = match (&config.auth_query, &config.auth_user) {
            (Some(sql), Some(user)) => Some(AuthQuery {
                sql: sql.clone(),
                user: user.clone(),
                password,
                ttl: config.cache_ttl,
            }),
            _ => None,
        };
        Ok(AuthStore {
            method: config.method,
            salt_key,
            file,
            query,
            cache: Mutex::new(HashMap::new()),
            proven: Mutex::new(HashMap::new()),
        })
    }

    /// `user`'s secret from `auth_file`, else from `auth_query` on `target` (the primary)
    /// in `database`; `None` for an unknown user (or when the lookup failed: logged).
    pub async fn secret(
        &self,
        user: &str,
        database: &str,
        target: Option<&Target>,
        tls: &ServerSide,
    ) -> Option<Secret> {
        if let Some(s) = self.in_file(user) {
            return Some(s);
        }
        let q = self.query.as_ref()?;
        if let Some((s, at)) = self.lock_cache().get(user)
            && at.elapsed() < q.ttl
        {
            return s.clone();
        }
        let target = target?;
        match self.run_query(q, user, database, target, tls).await {
            Ok(s) => {
                self.lock_cache()
                    .insert(user.to_owned(), (s.clone(), Instant::now()));
                s
            }
            Err(e) => {
                warn!(user, member = %target.member, error = %e, "auth_query failed");
                None
            }
        }
    }

    fn in_file(&self, user: &str) -> Option<Secret> {
        let file = self.file.as_ref()?;
        let list = file.lock().unwrap_or_else(|e| e.into_inner()).current();
        list.get(user).cloned()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<Secret>, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run_query(
        &self,
        q: &AuthQuery,
        user: &str,
        database: &str,
        target: &Target,
        tls: &ServerSide,
    ) -> Result<Option<Secret>, String> {
        let credentials = match (&q.password, self.in_file(&q.user)) {
            (Some(p), _) => Credentials::Password(p.clone()),
            (None, Some(Secret::Plain(p))) => Credentials::Password(p),
            (None, Some(Secret::Md5(h))) => Credentials::Md5(h),
            _ => self
                .credentials(&q.user)
                .ok_or("auth_user has no usable secret (plaintext or md5 in auth_file, or auth_password_file)")?,
        };
        let login = Login {
            user: &q.user,
            database,
            credentials: &credentials,
            tls,
            timeout: Duration::from_secs(5),
        };
        let mut conn = server::open(target, login)
            .await
            .map_err(|e| e.to_string())?;
        let sql = q.sql.replace("$1", &literal(user));
        let rows = conn.query(&sql).await.map_err(|e| e.to_string());
        crate::pool::close(conn, crate::pool::lifecycle::CloseReason::Shutdown);
        let password = rows?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().nth(1).flatten());
        Secret::from_rolpassword(password.as_deref()).map_err(|e| e.to_string())
    }

    /// Remembers what a client of `user` proved, for opening server connections.
    pub fn remember(&self, user: &str, credentials: Credentials) {
        let mut proven = self.proven.lock().unwrap_or_else(|e| e.into_inner());
        proven.insert(user.to_owned(), credentials);
    }

    /// What pgsteer can log in as `user` with, if a client proved it.
    pub fn credentials(&self, user: &str) -> Option<Credentials> {
        let proven = self.proven.lock().unwrap_or_else(|e| e.into_inner());
        proven.get(user).cloned()
    }

    /// Re-reads `auth_file` when it changes, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Some(file) = &self.file else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            let result = file.lock().unwrap_or_else(|e| e.into_inner()).reload();
            match result {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Replaced(n)) => info!(users = n, "auth_file reloaded"),
                Err(e) => warn!(error = %e, "auth_file not reloaded; the previous list stays"),
            }
        }
    }
}

/// `s` as a dollar-quoted SQL literal whose tag does not occur in it.
pub fn literal(s: &str) -> String {
    let mut tag = String::from("pgsteer");
    while s.contains(&format!("${tag}$")) {
        tag.push('x');
    }
    format!("${tag}${s}${tag}$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_dollar_quoted_with_a_tag_not_in_the_text() {
        assert_eq!(literal("app"), "$pgsteer$app$pgsteer$");
        assert_eq!(literal("a'b"), "$pgsteer$a'b$pgsteer$");
        assert_eq!(literal("x$pgsteer$y"), "$pgsteerx$x$pgsteer$y$pgsteerx$");
    }
}
