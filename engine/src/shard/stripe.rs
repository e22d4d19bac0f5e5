//! The driver of one (blob, stripe) swarm on its owner shard: feeds proto's [`Swarm`] with
//! what the connections, the tracker and the clock say, and carries out what it asks
//! (messages to write, dials, closes). It makes no protocol decision of its own.
//!
//! Every input goes through [`Stripe::input`]: one `handle_*` call, then the outputs are
//! drained in the documented order (transmits, events, timeout) while the state is still
//! borrowed, so that no other input can slip in between. Draining never awaits: transmits
//! go to the connection's outbox (its writer task sends them), events that need I/O (dials)
//! are returned and started as tasks afterwards.
//!
//! Per connection there are two tasks (see `conn.rs`): a reader (messages and piece
//! payloads in) and a writer (the outbox out). Closing a connection sets its `closed` flag
//! and wakes both; each drops whatever I/O it was waiting on and ends, and the socket closes
//! when both halves are gone.
//!
//! Bounds: a connection's outbox holds what the swarm queued for it, which the swarm bounds
//! (one handshake, a Have per piece of the stripe at most, requests up to the pipeline
//! depth, uploads up to its upload queue, keepalives at most one per interval); connections
//! per stripe are the swarm's `connections_max`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use event_listener::Event;
use shoal_proto::swarm::{CloseReason, ConnHandle, Event as SwarmEvent, Swarm};
use shoal_proto::wire::Message;
use shoal_proto::{Instant, PeerId, PieceIndex};

use super::Shard;
use super::blob::BlobIo;
use crate::engine::ConnPermit;
use crate::stats::{self, PeerKind};

/// Requests per connection whose answer time is measured (see [`ConnSlot::requested`]).
pub(crate) const REQUESTS_TIMED_MAX: usize = 16;

/// One connection's state shared by the stripe and its two tasks.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    /// Messages the swarm queued, oldest first, each with when it was queued (bounded by the
    /// swarm: see the module docs).
    pub outbox: RefCell<VecDeque<(Message, Instant)>>,
    /// Requests written on this connection and not yet answered by a piece header, with when
    /// they were written; for the request latency counters only. At most
    /// [`REQUESTS_TIMED_MAX`] (the oldest are forgotten: rejected or cancelled requests are
    /// never answered).
    pub requested: RefCell<VecDeque<(PieceIndex, Instant)>>,
    /// Notified when the outbox gains a message or the connection closes.
    pub wake: Event,
    pub closed: Cell<bool>,
    /// Learnt from the remote's handshake (agents until then).
    pub kind: Cell<PeerKind>,
    /// Counts the connection against the host's and the blob's limits until dropped.
    _permit: ConnPermit,
}

impl ConnSlot {
    pub fn new(permit: ConnPermit) -> ConnSlot {
        ConnSlot {
            outbox: RefCell::new(VecDeque::new()),
            requested: RefCell::new(VecDeque::new()),
            wake: Event::new(),
            closed: Cell::new(false),
            kind: Cell::new(PeerKind::Agent),
            _permit: permit,
        }
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.wake.notify(usize::MAX);
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        loop {
            if self.closed.get() {
                return;
            }
            let listener = self.wake.listen();
            if self.closed.get() {
                return;
            }
            listener.await;
        }
    }
}

/// What draining the swarm found that needs a task.
#[derive(Debug, Default)]
struct Effects {
    dials: Vec<PeerId>,
    complete: bool,
}

#[derive(Debug)]
pub(crate) struct StripeState {
    pub swarm: Swarm,
    pub conns: HashMap<ConnHandle, Rc<ConnSlot>>,
    /// When the timer task wakes next (`Swarm::poll_timeout` after the last drain).
    timer_at: Option<Instant>,
}

/// The driver of one (blob, stripe) on its owner shard.
#[derive(Debug)]
pub(crate) struct Stripe {
    pub shard: Rc<Shard>,
    pub io: Rc<BlobIo>,
    state: RefCell<StripeState>,
    /// Wakes the timer task: an earlier deadline, or the stripe stopped.
    timer_wake: Event,
    stopped: Cell<bool>,
}

impl Stripe {
    pub fn new(shard: Rc<Shard>, io: Rc<BlobIo>, swarm: Swarm) -> Rc<Stripe> {
        let stripe = Rc::new(Stripe {
            shard,
            io,
            state: RefCell::new(StripeState {
                swarm,
                conns: HashMap::new(),
                timer_at: None,
            }),
            timer_wake: Event::new(),
            stopped: Cell::new(false),
        });
        let timer = Rc::clone(&stripe);
        compio::runtime::spawn(async move { timer.run_timer().await }).detach();
        stripe
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Feeds one input to the swarm and drains its outputs. `f` gets the state (to register
    /// a connection in the same step as `handle_connected`) and the current time.
    pub fn input<R>(self: &Rc<Self>, f: impl FnOnce(&mut StripeState, Instant) -> R) -> R {
        let now = self.shard.engine.clock.now();
        let (result, effects) = {
            let mut state = self.state.borrow_mut();
            let result = f(&mut state, now);
            let effects = self.drain(&mut state, now);
            (result, effects)
        };
        self.apply(effects);
        result
    }

    /// Drains transmits, events and the timeout, in that order. Never awaits.
    fn drain(&self, state: &mut StripeState, now: Instant) -> Effects {
        let mut effects = Effects::default();
        while let Some(transmit) = state.swarm.poll_transmit() {
            match state.conns.get(&transmit.conn) {
                Some(slot) => {
                    slot.outbox.borrow_mut().push_back((transmit.message, now));
                    slot.wake.notify(usize::MAX);
                }
                None => debug_assert!(false, "transmit for unknown {:?}", transmit.conn),
            }
        }
        while let Some(event) = state.swarm.poll_event() {
            match event {
                SwarmEvent::Dial(peer) => effects.dials.push(peer),
                SwarmEvent::Close { conn, peer, reason } => {
                    if let Some(slot) = state.conns.remove(&conn) {
                        slot.close();
                    }
                    self.log_close(peer, &reason);
                }
                SwarmEvent::Blacklisted(peer) => {
                    tracing::warn!(digest = %self.io.shared.digest, %peer, "peer blacklisted for a bad piece");
                    stats::add(&self.shard.counters().peers_blacklisted, 1);
                }
                SwarmEvent::Complete => effects.complete = true,
            }
        }
        let next = state.swarm.poll_timeout();
        let earlier = match (next, state.timer_at) {
            (Some(next), Some(at)) => next < at,
            (Some(_), None) => true,
            (None, _) => false,
        };
        state.timer_at = next;
        if earlier {
            self.timer_wake.notify(usize::MAX);
        }
        effects
    }

    fn log_close(&self, peer: Option<PeerId>, reason: &CloseReason) {
        match reason {
            CloseReason::BadPiece(piece) => {
                tracing::warn!(digest = %self.io.shared.digest, ?peer, %piece, "closed: bad piece");
            }
            CloseReason::ProtocolViolation(what) => {
                tracing::warn!(digest = %self.io.shared.digest, ?peer, what, "closed: protocol violation");
            }
            other => {
                tracing::debug!(digest = %self.io.shared.digest, ?peer, reason = ?other, "connection closed")
            }
        }
    }

    fn apply(self: &Rc<Self>, effects: Effects) {
        if self.stopped.get() {
            return; // a stopped stripe starts nothing new
        }
        if effects.complete {
            tracing::debug!(digest = %self.io.shared.digest, "stripe complete");
        }
        for peer in effects.dials {
            let stripe = Rc::clone(self);
            compio::runtime::spawn(async move { super::conn::dial(stripe, peer).await }).detach();
        }
    }

    /// Stops the swarm: closes every connection, ends the timer. Idempotent.
    pub fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let conns: Vec<Rc<ConnSlot>> = {
            let mut state = self.state.borrow_mut();
            state.conns.drain().map(|(_, slot)| slot).collect()
        };
        for slot in conns {
            slot.close();
        }
        self.timer_wake.notify(usize::MAX);
    }

    async fn run_timer(self: Rc<Self>) {
        let clock = self.shard.engine.clock;
        loop {
            if self.stopped.get() {
                return;
            }
            let listener = self.timer_wake.listen();
            let at = self.state.borrow().timer_at;
            match at {
                Some(at) if at <= clock.now() => {
                    drop(listener);
                    self.input(|state, now| state.swarm.handle_timeout(now));
                    // The swarm moves its deadline on; if it did not (nothing due yet by its
                    // exact reckoning), yield once so a busy clock cannot spin us.
                    compio::runtime::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Some(at) => {
                    let sleep = compio::runtime::time::sleep_until(clock.to_std(at));
                    futures_util::future::select(std::pin::pin!(sleep), listener).await;
                }
                None => listener.await,
            }
        }
    }
}
