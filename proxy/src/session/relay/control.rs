//! The futures that stop or pace a relay (drain order, hard stop, grace deadline, metric
//! flush timer), polled with a waker of their own and only after it fired, not on every
//! socket wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::drain::DrainOrder;
use crate::metrics::FLUSH_INTERVAL;

/// Futures that ask the relay to stop or wait.
pub struct Signals<'a> {
    /// Resolves when the session should close at its next idle point.
    pub drain: Pin<Box<dyn Future<Output = DrainOrder> + Send + 'a>>,
    /// Resolves when the session must close now.
    pub hard: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    /// `true` while new transactions are held (`POST /pause`).
    pub paused: watch::Receiver<bool>,
}

pub(super) type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The waker the control futures are polled with: it records that one of
/// them is ready to make progress, then wakes the session's task.
#[derive(Default)]
struct ControlWake {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What the control futures said when polled.
#[derive(Default)]
pub(super) struct ControlEvents {
    pub hard: bool,
    pub order: Option<DrainOrder>,
    pub deadline: bool,
    pub flush: bool,
    pub idle_in_transaction: bool,
}

/// The futures that stop or pace the relay, and their own waker.
pub(super) struct Control<'a> {
    pub signals: Signals<'a>,
    /// Fires when a draining session's grace is over.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Fires when the tally is due to be flushed (armed while it is dirty).
    flush: Option<Pin<Box<Sleep>>>,
    flush_armed: bool,
    /// Fires when a client has sat idle in a transaction too long (pooled sessions).
    idle_tx: Option<Pin<Box<Sleep>>>,
    idle_tx_armed: bool,
    /// A drain order was received: its future is done.
    ordered: bool,
    wake: Arc<ControlWake>,
    waker: Waker,
    /// The task waker `wake.task` holds (until a control future fires and takes it).
    registered: Option<Waker>,
}

impl<'a> Control<'a> {
    pub fn new(signals: Signals<'a>) -> Control<'a> {
        let wake = Arc::new(ControlWake::default());
        // Poll everything once to register the control waker.
        wake.fired.store(true, Ordering::Relaxed);
        Control {
            signals,
            deadline: None,
            flush: None,
            flush_armed: false,
            idle_tx: None,
            idle_tx_armed: false,
            ordered: false,
            waker: Waker::from(wake.clone()),
            wake,
            registered: None,
        }
    }

    /// Registers the task's waker; `true` if a control future fired since
    /// the last [`Control::poll`].
    #[inline]
    pub fn due(&mut self, cx: &Context<'_>) -> bool {
        let fired = self.wake.fired.swap(false, Ordering::Acquire);
        // Not fired since the last registration: the same waker is still there (a firing
        // sets `fired` before it takes the waker), so registering it again would be a no-op.
        let same = self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if fired || !same {
            self.wake.task.register(cx.waker());
            if !same {
                self.registered = Some(cx.waker().clone());
            }
            // A firing between the swap and the registration found no waker to wake.
            return self.wake.fired.swap(false, Ordering::Acquire) || fired;
        }
        false
    }

    pub fn poll(&mut self) -> ControlEvents {
        let mut cx = Context::from_waker(&self.waker);
        let mut ev = ControlEvents {
            hard: self.signals.hard.as_mut().poll(&mut cx).is_ready(),
            ..ControlEvents::default()
        };
        if !self.ordered
            && let Poll::Ready(order) = self.signals.drain.as_mut().poll(&mut cx)
        {
            self.ordered = true;
            ev.order = Some(order);
        }
        if let Some(d) = &mut self.deadline {
            ev.deadline = d.as_mut().poll(&mut cx).is_ready();
        }
        if self.idle_tx_armed
            && let Some(t) = &mut self.idle_tx
            && t.as_mut().poll(&mut cx).is_ready()
        {
            self.idle_tx_armed = false;
            ev.idle_in_transaction = true;
        }
        if self.flush_armed
            && let Some(f) = &mut self.flush
            && f.as_mut().poll(&mut cx).is_ready()
        {
            self.flush_armed = false;
            ev.flush = true;
        }
        ev
    }

    /// Replaces the drain future (a pooled session lent a new server connection): the
    /// previous order, if any, and its grace are forgotten.
    pub fn set_drain(&mut self, drain: Pin<Box<dyn Future<Output = DrainOrder> + Send + 'a>>) {
        self.signals.drain = drain;
        self.ordered = false;
        self.deadline = None;
        self.waker.wake_by_ref();
    }

    /// Starts the grace period of a drain order.
    pub fn start_grace(&mut self, grace: std::time::Duration) {
        let mut sleep = Box::pin(tokio::time::sleep(grace));
        let mut cx = Context::from_waker(&self.waker);
        if sleep.as_mut().poll(&mut cx).is_ready() {
            self.waker.wake_by_ref();
        }
        self.deadline = Some(sleep);
    }

    /// Starts (`Some`) or stops (`None`) the idle-in-transaction clock; a running clock is
    /// left running.
    pub fn idle_in_transaction(&mut self, limit: Option<std::time::Duration>) {
        let Some(limit) = limit else {
            self.idle_tx_armed = false;
            return;
        };
        if self.idle_tx_armed {
            return;
        }
        let at = Instant::now() + limit;
        let sleep = self
            .idle_tx
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().reset(at);
        let mut cx = Context::from_waker(&self.waker);
        if sleep.as_mut().poll(&mut cx).is_ready() {
            self.waker.wake_by_ref();
        }
        self.idle_tx_armed = true;
    }

    /// Makes sure a flush happens within [`FLUSH_INTERVAL`].
    pub fn arm_flush(&mut self) {
        if self.flush_armed {
            return;
        }
        let at = Instant::now() + FLUSH_INTERVAL;
        let sleep = self
            .flush
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        sleep.as_mut().reset(at);
        let mut cx = Context::from_waker(&self.waker);
        if sleep.as_mut().poll(&mut cx).is_ready() {
            self.waker.wake_by_ref();
        }
        self.flush_armed = true;
    }
}
