//! PgBouncer's `auth_file` (`userlist.txt`): the parser, and a store that
//! swaps in a new list when the file's contents change and keeps the last
//! good one when they do not parse. The session's timer drives the reload.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::secrets::{Secret, SecretError};

/// Users and their secrets, as read from a `userlist.txt`.
#[derive(Clone, Default)]
pub struct UserList {
    users: HashMap<String, Secret>,
}

impl fmt::Debug for UserList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserList")
            .field("users", &self.users.len())
            .finish()
    }
}

/// Why a `userlist.txt` could not be used. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum UserListError {
    /// A line is not `"user" "secret"`.
    #[error("line {line}: {problem}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// A secret on a line is malformed.
    #[error("line {line}: {source}")]
    Secret {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        source: SecretError,
    },
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl UserList {
    /// Parses PgBouncer's format: one `"user" "secret"` per line, `""` for a
    /// double quote inside quotes; lines starting with `;` or `#` and blank
    /// lines are ignored, and so is text after the secret (as in PgBouncer).
    /// A user listed twice gets the later secret (as in PgBouncer).
    pub fn parse(text: &str) -> Result<UserList, UserListError> {
        let mut users = HashMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let content = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
            if content.is_empty() || content.starts_with(';') || content.starts_with('#') {
                continue;
            }
            let (user, secret) =
                parse_line(content).map_err(|problem| UserListError::Syntax { line, problem })?;
            let secret =
                Secret::parse(&secret).map_err(|source| UserListError::Secret { line, source })?;
            users.insert(user, secret);
        }
        Ok(UserList { users })
    }

    /// The secret of `user`, if listed.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// How many users are listed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is listed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// `"user" "secret" [ignored]` → (user, secret).
fn parse_line(content: &str) -> Result<(String, String), &'static str> {
    let (user, rest) = quoted(content).ok_or("expected a user name in double quotes")?;
    if user.is_empty() {
        return Err("empty user name");
    }
    let after_space = rest.trim_start();
    if after_space.len() == rest.len() && !rest.is_empty() {
        return Err("expected white space after the user name");
    }
    let (secret, _ignored) =
        quoted(after_space).ok_or("expected a secret in double quotes after the user name")?;
    Ok((user, secret))
}

/// A `"…"` string with `""` escapes at the start of `s`, and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let end = rest.find('"')?;
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                out.push('"');
                rest = after;
            }
            None => return Some((out, rest)),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The contents are the same as last time; nothing was parsed.
    Unchanged,
    /// The contents changed and the new list is in place, with this many users.
    Replaced(usize),
}

/// An `auth_file`: the current list, and a fingerprint of the text it came
/// from, so a reload only parses (and swaps) when the contents changed.
/// Readers hold an `Arc` of the list they got; a swap does not disturb them.
pub struct UserListFile {
    path: PathBuf,
    current: Arc<UserList>,
    fingerprint: [u8; 32],
}

impl fmt::Debug for UserListFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserListFile")
            .field("path", &self.path)
            .field("users", &self.current.len())
            .finish()
    }
}

impl UserListFile {
    /// Reads and parses the file.
    pub fn load(path: impl Into<PathBuf>) -> Result<UserListFile, UserListError> {
        let path = path.into();
        let text = read(&path)?;
        UserListFile::from_text(path, &text)
    }

    /// A store for `path` whose first contents are `text`.
    pub fn from_text(path: impl Into<PathBuf>, text: &str) -> Result<UserListFile, UserListError> {
        let current = Arc::new(UserList::parse(text)?);
        Ok(UserListFile {
            path: path.into(),
            current,
            fingerprint: fingerprint(text),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The list in force.
    pub fn current(&self) -> Arc<UserList> {
        Arc::clone(&self.current)
    }

    /// The pure core of a reload: parses `text` only if it differs from the
    /// text of the list in force, and swaps the list in if it parses. On an
    /// error the list in force stays, and the same broken text is reported
    /// again on the next reload (its fingerprint is not remembered).
    pub fn reload_if_changed(&mut self, text: &str) -> Result<Reload, UserListError> {
        let new = fingerprint(text);
        if new == self.fingerprint {
            return Ok(Reload::Unchanged);
        }
        let list = UserList::parse(text)?;
        let users = list.len();
        self.current = Arc::new(list);
        self.fingerprint = new;
        Ok(Reload::Replaced(users))
    }

    /// Reads the file and [`reload_if_changed`](Self::reload_if_changed).
    /// Blocking file IO: call it from a blocking-friendly context.
    pub fn reload(&mut self) -> Result<Reload, UserListError> {
        let text = read(&self.path)?;
        self.reload_if_changed(&text)
    }
}

fn read(path: &Path) -> Result<String, UserListError> {
    std::fs::read_to_string(path).map_err(|source| UserListError::Read {
        path: path.to_owned(),
        source,
    })
}

fn fingerprint(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Password;

    const FILE: &str = concat!(
        "; PgBouncer comment\n",
        "# another comment\n",
        "\n",
        "\"alice\" \"pencil\"\n",
        "  \"bob\"\t\"md5a3556571e93b0d20722ba62be61e8c2d\" trailing text is ignored\r\n",
        "\"q\"\"uote\" \"pass\"\"word\"\n",
        "\"carol\" \"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=\"\n",
        "\"dave\" \"\"\n",
        "\"alice\" \"later wins\"",
    );

    #[test]
    fn a_pgbouncer_userlist_parses() {
        let list = UserList::parse(FILE).unwrap();
        assert_eq!(list.len(), 5);
        assert_eq!(
            list.get("alice"),
            Some(&Secret::Plain(Password::new("later wins")))
        );
        assert!(matches!(list.get("bob"), Some(Secret::Md5(_))));
        assert_eq!(
            list.get("q\"uote"),
            Some(&Secret::Plain(Password::new("pass\"word")))
        );
        assert!(matches!(list.get("carol"), Some(Secret::Scram(v)) if v.iterations == 4096));
        assert_eq!(list.get("dave"), Some(&Secret::Plain(Password::new(""))));
        assert_eq!(list.get("eve"), None);
        assert!(UserList::parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_are_reported_with_their_line_number() {
        let cases = [
            ("alice pencil", 1, "expected a user name in double quotes"),
            (
                "\n\n\"alice\" pencil",
                3,
                "expected a secret in double quotes after the user name",
            ),
            (
                "\"alice\" \"pencil",
                1,
                "expected a secret in double quotes after the user name",
            ),
            ("\"alice", 1, "expected a user name in double quotes"),
            (
                "\"alice\"",
                1,
                "expected a secret in double quotes after the user name",
            ),
            (
                "\"alice\"\"pencil\"",
                1,
                "expected a secret in double quotes after the user name",
            ),
            (
                "\"alice\"x\"pencil\"",
                1,
                "expected white space after the user name",
            ),
            ("\"\" \"pencil\"", 1, "empty user name"),
        ];
        for (text, want_line, want) in cases {
            match UserList::parse(text) {
                Err(UserListError::Syntax { line, problem }) => {
                    assert_eq!((line, problem), (want_line, want), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let e = UserList::parse("\"a\" \"b\"\n\"carol\" \"SCRAM-SHA-256$4096:bad\"").unwrap_err();
        assert!(matches!(e, UserListError::Secret { line: 2, .. }), "{e:?}");
        assert!(!e.to_string().contains("bad"), "{e}");
    }

    #[test]
    fn debug_output_shows_no_secrets() {
        let shown = format!("{:?}", UserList::parse(FILE).unwrap());
        assert!(
            !shown.contains("pencil") && !shown.contains("later") && !shown.contains("a3556571"),
            "{shown}"
        );
    }

    #[test]
    fn a_reload_swaps_the_list_only_when_the_contents_change_and_parse() {
        let mut file = UserListFile::from_text("/dev/null", "\"alice\" \"one\"").unwrap();
        let first = file.current();
        assert_eq!(
            file.reload_if_changed("\"alice\" \"one\"").unwrap(),
            Reload::Unchanged
        );
        assert!(Arc::ptr_eq(&first, &file.current()));
        assert_eq!(
            file.reload_if_changed("\"alice\" \"two\"\n\"bob\" \"x\"")
                .unwrap(),
            Reload::Replaced(2)
        );
        assert_eq!(
            file.current().get("alice"),
            Some(&Secret::Plain(Password::new("two")))
        );
        assert_eq!(
            first.get("alice"),
            Some(&Secret::Plain(Password::new("one"))),
            "readers keep their list"
        );
        assert!(file.reload_if_changed("broken").is_err());
        assert!(
            file.reload_if_changed("broken").is_err(),
            "a broken file is reported every time"
        );
        assert_eq!(file.current().len(), 2, "the last good list stays");
    }

    #[test]
    fn the_file_is_read_and_reread_from_disk() {
        let path =
            std::env::temp_dir().join(format!("pgsteer-userlist-{}.txt", std::process::id()));
        std::fs::write(&path, "\"alice\" \"one\"\n").unwrap();
        let mut file = UserListFile::load(&path).unwrap();
        assert_eq!(file.reload().unwrap(), Reload::Unchanged);
        std::fs::write(&path, "\"alice\" \"one\"\n\"bob\" \"two\"\n").unwrap();
        assert_eq!(file.reload().unwrap(), Reload::Replaced(2));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(file.reload(), Err(UserListError::Read { .. })));
        assert_eq!(file.current().len(), 2);
    }
}
