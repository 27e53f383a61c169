//! Relay buffers: fixed-size, pooled per thread, held only while in use.
//!
//! An idle session holds no buffer at all: a direction takes one from the
//! pool when the socket has bytes to read and gives it back once everything
//! read has been written and the session has gone quiet (the relay decides
//! when). Taking and returning is a push/pop on a
//! thread-local free list, so the hot path does not allocate.

use std::cell::RefCell;

/// Bytes per relay buffer: room for many small messages per read, and the
/// largest frame the relay ever inspects whole (ReadyForQuery is 6 bytes).
pub const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept per thread for reuse; beyond this they are freed.
const POOL_MAX: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// One direction's bytes: `[start, fwd)` is approved for forwarding,
/// `[fwd, end)` read but not yet a complete frame the scanner could pass.
#[derive(Default)]
pub struct Window {
    buf: Option<Box<[u8]>>,
    start: usize,
    fwd: usize,
    end: usize,
}

impl Window {
    /// Bytes ready to be written to the other side.
    pub fn approved(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.start..self.fwd],
            None => &[],
        }
    }

    /// Bytes read but not yet scanned into approval.
    pub fn unscanned(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[self.fwd..self.end],
            None => &[],
        }
    }

    /// Everything read was scanned (nothing waits to be, whole or in part).
    #[inline]
    pub fn all_scanned(&self) -> bool {
        self.fwd == self.end
    }

    /// Marks `n` more unscanned bytes as approved.
    pub fn approve(&mut self, n: usize) {
        self.fwd += n;
        debug_assert!(self.fwd <= self.end);
    }

    /// Marks `n` approved bytes as written (the buffer stays: see
    /// [`Window::release`]).
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.fwd = 0;
            self.end = 0;
        }
    }

    /// Drops the first `n` unscanned bytes (a message the relay took out of
    /// the stream); nothing may be approved and unwritten.
    pub fn skip(&mut self, n: usize) {
        debug_assert!(self.start == self.fwd, "approved bytes would be reordered");
        let n = n.min(self.end - self.fwd);
        self.fwd += n;
        self.consume(n);
    }

    /// Drops every unscanned byte (what a lost server had half sent).
    pub fn discard_unscanned(&mut self) {
        self.end = self.fwd;
        if self.start == self.end {
            self.start = 0;
            self.fwd = 0;
            self.end = 0;
        }
    }

    /// Whether nothing at all is held.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether a read can go in now (the writer is not behind by a whole buffer).
    pub fn has_room(&self) -> bool {
        self.buf.is_none() || self.end < BUF_SIZE || self.start > 0
    }

    /// Space to read into, taking a buffer from the pool if needed and moving
    /// leftover bytes to the front when the tail is full.
    pub fn spare(&mut self) -> &mut [u8] {
        let buf = self.buf.get_or_insert_with(take);
        if self.end == buf.len() && self.start > 0 {
            buf.copy_within(self.start..self.end, 0);
            self.fwd -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
        &mut buf[self.end..]
    }

    /// Records `n` bytes read into [`Window::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Returns the buffer to the pool if nothing is held.
    pub fn release(&mut self) {
        if self.start == self.end
            && let Some(b) = self.buf.take()
        {
            give(b);
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_gives_its_buffer_back_only_when_empty_and_released() {
        let mut w = Window::default();
        w.spare()[..3].copy_from_slice(b"abc");
        w.filled(3);
        w.approve(2);
        assert_eq!(w.approved(), b"ab");
        assert_eq!(w.unscanned(), b"c");
        w.consume(2);
        w.release();
        assert!(w.buf.is_some(), "a partial frame keeps the buffer");
        w.approve(1);
        w.consume(1);
        assert!(w.is_empty());
        assert!(w.buf.is_some(), "a busy session keeps it between reads");
        w.release();
        assert!(w.buf.is_none());
    }

    #[test]
    fn a_skipped_message_never_reaches_the_other_side() {
        let mut w = Window::default();
        w.spare()[..6].copy_from_slice(b"abcdef");
        w.filled(6);
        w.skip(2);
        assert_eq!(w.unscanned(), b"cdef");
        w.approve(4);
        assert_eq!(w.approved(), b"cdef");
        w.consume(4);
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_tail_is_compacted_to_the_front() {
        let mut w = Window::default();
        let n = w.spare().len();
        w.filled(n);
        w.approve(n - 2);
        w.consume(n - 2);
        assert!(w.has_room());
        assert_eq!(w.spare().len(), BUF_SIZE - 2);
    }
}
