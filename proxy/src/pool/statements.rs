//! Protocol-level prepared statements in transaction mode: a client's named statements,
//! the name each has on the servers, and which ones a server connection has prepared.
//!
//! A statement is known by its text and parameter types (the rest of its Parse body). The
//! same statement gets the same server-side name (`pgsteer_<n>`) in every session, so one
//! prepared copy on a server connection serves every client that prepared it, and client
//! names never clash. Each server connection keeps a bounded LRU list of what it has.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    /// Process-unique id; the server-side name is `pgsteer_<id>`.
    pub id: u64,
    /// The server-side name, NUL-terminated, ready to be written into a message.
    pub server_name: Box<[u8]>,
    /// The Parse body after the name: query text, its NUL, parameter count and types.
    pub parse_rest: Box<[u8]>,
    /// Where a transaction that runs it may go (route `auto`), classified once.
    pub verdict: std::sync::OnceLock<pgsteer_protocol::classify::Verdict>,
}

impl Statement {
    /// Its query text.
    pub fn query(&self) -> &[u8] {
        let end = memchr::memchr(0, &self.parse_rest).unwrap_or(self.parse_rest.len());
        &self.parse_rest[..end]
    }
}

/// Interns statements across sessions by their Parse body, so equal statements share one
/// server-side name.
#[derive(Default)]
pub struct Registry {
    by_text: Mutex<Interned>,
    next: AtomicU64,
}

#[derive(Default)]
struct Interned {
    map: HashMap<Box<[u8]>, Weak<Statement>>,
    /// Insertions since the last sweep of dead entries.
    added: usize,
}

impl Registry {
    /// The shared statement for a Parse body's `rest` (everything after the name).
    pub fn intern(&self, rest: &[u8]) -> Arc<Statement> {
        let mut interned = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = interned.map.get(rest).and_then(Weak::upgrade) {
            return s;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut server_name = format!("pgsteer_{id}").into_bytes();
        server_name.push(0);
        let s = Arc::new(Statement {
            id,
            server_name: server_name.into_boxed_slice(),
            parse_rest: rest.into(),
            verdict: std::sync::OnceLock::new(),
        });
        // Forget the statements no session holds any more once as many were added as
        // half the map: amortised O(1), and the map stays within twice the live ones.
        interned.added += 1;
        if interned.added > interned.map.len() / 2 {
            interned.map.retain(|_, w| w.strong_count() > 0);
            interned.added = 0;
        }
        interned.map.insert(rest.into(), Arc::downgrade(&s));
        s
    }

    /// Statements interned and still held by some session.
    pub fn live(&self) -> usize {
        let interned = self.by_text.lock().unwrap_or_else(|e| e.into_inner());
        interned
            .map
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// The statements one server connection has prepared, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    used: HashMap<u64, (u64, Arc<Statement>)>,
    tick: u64,
}

impl ServerStatements {
    /// Whether the connection has `s` prepared; marks it used.
    pub fn touch(&mut self, s: &Statement) -> bool {
        self.tick += 1;
        match self.used.get_mut(&s.id) {
            Some(entry) => {
                entry.0 = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `s` as prepared; with `cap` reached, gives back the least recently used
    /// statement, which the caller closes on the server.
    pub fn insert(&mut self, s: Arc<Statement>, cap: usize) -> Option<Arc<Statement>> {
        self.tick += 1;
        let evicted = if self.used.len() >= cap.max(1) && !self.used.contains_key(&s.id) {
            let oldest = self
                .used
                .iter()
                .min_by_key(|(_, (tick, _))| *tick)
                .map(|(id, _)| *id);
            oldest.and_then(|id| self.used.remove(&id)).map(|(_, s)| s)
        } else {
            None
        };
        self.used.insert(s.id, (self.tick, s));
        evicted
    }

    /// Forgets `s` (closed, or its Parse failed).
    pub fn remove(&mut self, id: u64) {
        self.used.remove(&id);
    }

    /// Forgets everything (`DISCARD ALL`, `DEALLOCATE ALL`, a reset).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// How many are prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// A client's named statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<[u8]>, Arc<Statement>>,
}

impl ClientStatements {
    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Names `s` for the client (replacing what the name meant before).
    pub fn insert(&mut self, name: &[u8], s: Arc<Statement>) {
        self.by_name.insert(name.into(), s);
    }

    /// Forgets a name.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.by_name.remove(name)
    }

    /// Forgets every name.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// How many names the client has.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the client has none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_statements_share_one_server_name_while_someone_holds_them() {
        let r = Registry::default();
        let a = r.intern(b"SELECT 1\0\0\0");
        let b = r.intern(b"SELECT 1\0\0\0");
        let c = r.intern(b"SELECT 2\0\0\0");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, c.id);
        assert_eq!(&a.server_name[..], format!("pgsteer_{}\0", a.id).as_bytes());
        assert_eq!(r.live(), 2);
        drop((a, b, c));
        assert_eq!(r.live(), 0);
        let d = r.intern(b"SELECT 3\0\0\0");
        assert_eq!(r.live(), 1);
        assert!(
            r.by_text.lock().unwrap().map.len() <= 3,
            "dead entries are swept"
        );
        drop(d);
    }

    #[test]
    fn a_full_server_cache_evicts_the_least_recently_used_statement() {
        let r = Registry::default();
        let s: Vec<_> = (0..3)
            .map(|i| r.intern(format!("SELECT {i}\0\0\0").as_bytes()))
            .collect();
        let mut cache = ServerStatements::default();
        assert_eq!(cache.insert(s[0].clone(), 2).map(|e| e.id), None);
        assert_eq!(cache.insert(s[1].clone(), 2).map(|e| e.id), None);
        assert!(cache.touch(&s[0]));
        assert_eq!(cache.insert(s[2].clone(), 2).map(|e| e.id), Some(s[1].id));
        assert!(!cache.touch(&s[1]));
        assert!(cache.touch(&s[2]));
        assert_eq!(
            cache.insert(s[2].clone(), 2).map(|e| e.id),
            None,
            "a statement already there evicts nothing"
        );
        cache.remove(s[0].id);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }
}
