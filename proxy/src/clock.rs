//! The time relayed traffic is stamped with. A relay reads the clock a few times per
//! transaction (when a request goes out, when its ReadyForQuery comes back, when a pooled
//! connection is given back); in the epoll engine these read the instant its last wait
//! returned, taken once per wake-up, so every event of one batch shares one clock read. An
//! instant is then as late as the processing of the batch before it (microseconds), which
//! the query and transaction histograms (100 µs and up) and the pools' idle and lifetime
//! checks (seconds) cannot tell. Elsewhere [`now`] is [`Instant::now`].

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// The engine's last wake-up, on an engine thread.
    static WOKE_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Now, as the thread's engine saw it at its last wake-up, or the clock outside an engine.
#[inline]
pub fn now() -> Instant {
    WOKE_AT.get().unwrap_or_else(Instant::now)
}

/// An engine woke: the events it handles until its next wait are stamped with this instant.
#[inline]
pub(crate) fn woke() {
    WOKE_AT.set(Some(Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_an_engine_now_reads_the_clock_and_inside_it_stands_until_the_next_wake() {
        let before = Instant::now();
        let read = now();
        assert!(read >= before);
        std::thread::spawn(|| {
            woke();
            let first = now();
            // The clock moves on; the engine's instant does not until it wakes again.
            let later = Instant::now() + std::time::Duration::from_millis(1);
            while Instant::now() < later {
                std::hint::spin_loop();
            }
            assert_eq!(now(), first);
            woke();
            assert!(now() >= later);
        })
        .join()
        .unwrap();
    }
}
