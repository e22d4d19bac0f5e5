//! The bandwidth model: piece payloads as flows sharing each host's uplink and downlink.
//!
//! Every host has an upload capacity and a download capacity (bytes per second). A flow
//! carries one piece payload from an uploader to a downloader. Rates approximate max-min
//! fairness, which is what competing TCP flows converge to. Each flow holds an allotment at
//! each end, and runs at the smaller of the two:
//!
//! ```text
//! rate(f) = min(up_alloc(f), down_alloc(f))
//! Σ_{f sent by h} up_alloc(f) <= up(h)        Σ_{f received by h} down_alloc(f) <= down(h)
//! ```
//!
//! When a flow starts or ends, its uploader water-fills its uplink over its flows, each capped
//! by what the flow could get at its downloader (its allotment there plus that link's unused
//! capacity), and its downloader water-fills its downlink likewise. Each flow of those two
//! hosts then moves its allotment at the far end towards the new one, within the far link's
//! unused capacity. So a flow held back at one end leaves its share of the other end to that
//! end's other flows (an equal split per endpoint would leave it idle), the two allotment sums
//! never exceed a link's capacity (rates are always feasible), and the work per change is the
//! flows of two hosts, nothing global. Hosts further away are brought up to date when their
//! own flows change, so the model errs on the slow side between times.
//!
//! A rate changes only when one of its two endpoints gains or loses a flow, so starting,
//! finishing or cancelling a flow re-rates exactly the flows of its uploader's uplink and
//! its downloader's downlink (O(affected flows), nothing global). Each flow keeps its
//! remaining bytes as of its last re-rating; a re-rating that changes the rate first settles
//! the bytes sent since then, then computes the new completion time.
//!
//! Completion times are kept in two levels, because a re-rating touches dozens of flows and a
//! heap entry per re-rated flow (even lazily invalidated) made the heap the simulator's main
//! cost: each host remembers the earliest completion among the flows it sends, and an indexed
//! min-heap over hosts (one entry per host, updated in place) orders those. A re-rating that
//! makes a flow earlier than its uploader's earliest updates it in O(1); one that delays the
//! uploader's earliest flow marks the uploader for a rescan of its (few) flows, done once per
//! batch of re-ratings.

use shoal_proto::Instant;

/// Names one live flow. Slots are reused once a flow ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowId(pub u32);

const NONE: u32 = u32::MAX;

#[derive(Debug)]
struct Endpoint {
    up_bytes_per_s: f64,
    down_bytes_per_s: f64,
    /// Flows this host is sending: (slot, receiving host).
    up: Vec<(u32, u32)>,
    /// Flows this host is receiving: (slot, sending host).
    down: Vec<(u32, u32)>,
}

/// Per host, kept in its own dense array (every re-rating that changes a rate reads it).
#[derive(Debug, Clone, Copy)]
struct Earliest {
    /// When the earliest-completing flow this host sends completes (`u64::MAX`: none).
    ns: u64,
    /// That flow's slot (`NONE` if the host sends none).
    flow: u32,
    /// On the dirty list of the current batch of re-ratings.
    dirty: bool,
    /// `ns`/`flow` may be too early (the earliest flow was delayed or removed): rescan.
    rescan: bool,
}

/// Aligned to one cache line (56 bytes would straddle two for most slots): a re-rating that
/// changes a flow's rate touches exactly one line of it.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Flow {
    src: u32,
    dst: u32,
    bytes: u64,
    /// Bytes still to send as of `updated_at_ns`.
    remaining_bytes: f64,
    updated_at_ns: u64,
    finish_ns: u64,
    /// Positions in `hosts[src].up` and `hosts[dst].down` (for O(1) removal).
    up_position: u32,
    down_position: u32,
    live: bool,
}

/// A flow that delivered its last byte, or was cancelled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowEnd<T> {
    pub id: FlowId,
    pub src: u32,
    pub dst: u32,
    /// Bytes that crossed the network (all of them for a completed flow).
    pub bytes_sent: u64,
    pub tag: T,
}

/// The largest `level` with `Σ min(level, cap) <= capacity` over `caps` (sorted in place);
/// infinite when the caps alone fit.
fn water_level(capacity: f64, caps: &mut [f64]) -> f64 {
    caps.sort_unstable_by(f64::total_cmp);
    let mut remaining = capacity;
    let mut n_left = caps.len();
    for &cap in caps.iter() {
        let fair = remaining / n_left as f64;
        if cap >= fair {
            return fair;
        }
        remaining -= cap;
        n_left -= 1;
    }
    f64::INFINITY
}

/// A binary min-heap of hosts keyed by their earliest completion, with in-place updates.
/// Ties go to the lower host index, so the order is deterministic.
#[derive(Debug, Default)]
struct HostHeap {
    heap: Vec<u32>,
    key_ns: Vec<u64>,
    position: Vec<u32>,
}

impl HostHeap {
    fn add_host(&mut self) {
        self.key_ns.push(u64::MAX);
        self.position.push(NONE);
    }

    fn less(&self, a: u32, b: u32) -> bool {
        (self.key_ns[a as usize], a) < (self.key_ns[b as usize], b)
    }

    fn peek(&self) -> Option<(u64, u32)> {
        let &host = self.heap.first()?;
        Some((self.key_ns[host as usize], host))
    }

    /// Sets `host`'s key; `u64::MAX` removes it.
    fn set(&mut self, host: u32, key_ns: u64) {
        let index = host as usize;
        let position = self.position[index];
        if key_ns == u64::MAX {
            if position != NONE {
                self.remove_at(position as usize);
            }
            self.key_ns[index] = u64::MAX;
            return;
        }
        let old = self.key_ns[index];
        self.key_ns[index] = key_ns;
        if position == NONE {
            self.heap.push(host);
            let at = self.heap.len() - 1;
            self.position[index] = at as u32;
            self.sift_up(at);
        } else if key_ns < old {
            self.sift_up(position as usize);
        } else if key_ns > old {
            self.sift_down(position as usize);
        }
    }

    fn remove_at(&mut self, at: usize) {
        let removed = self.heap.swap_remove(at);
        self.position[removed as usize] = NONE;
        if at < self.heap.len() {
            self.position[self.heap[at] as usize] = at as u32;
            self.sift_down(at);
            self.sift_up(at);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.position[self.heap[a] as usize] = a as u32;
        self.position[self.heap[b] as usize] = b as u32;
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if !self.less(self.heap[at], self.heap[parent]) {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let left = 2 * at + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let mut child = left;
            if right < self.heap.len() && self.less(self.heap[right], self.heap[left]) {
                child = right;
            }
            if !self.less(self.heap[child], self.heap[at]) {
                break;
            }
            self.swap(at, child);
            at = child;
        }
    }
}

/// All flows of a simulation. `T` is the driver's note about a flow (which connection, which
/// piece), handed back when the flow ends.
#[derive(Debug)]
pub struct FlowNet<T> {
    hosts: Vec<Endpoint>,
    /// Per host: capacity not allotted to any flow, (uplink, downlink).
    spare: Vec<(f64, f64)>,
    /// Per flow slot: its allotments at the uploader and at the downloader.
    up_alloc: Vec<f64>,
    down_alloc: Vec<f64>,
    /// Scratch space for water-filling (caps of one host's flows, sorted).
    scratch: Vec<f64>,
    /// The same caps in flow order (computed once per refill).
    caps: Vec<f64>,
    earliest: Vec<Earliest>,
    flows: Vec<Flow>,
    /// Each slot's current rate, apart from `flows`: most re-ratings only compare the new rate
    /// with this and stop, without touching the flow's cache line.
    rates: Vec<f64>,
    /// The driver's note of each flow slot.
    tags: Vec<T>,
    free_slots: Vec<u32>,
    by_earliest: HostHeap,
    /// Hosts whose earliest completion changed in the current batch.
    dirty: Vec<u32>,
    n_live: usize,
}

impl<T: Copy> Default for FlowNet<T> {
    fn default() -> Self {
        FlowNet::new()
    }
}

impl<T: Copy> FlowNet<T> {
    pub fn new() -> FlowNet<T> {
        FlowNet {
            hosts: Vec::new(),
            spare: Vec::new(),
            up_alloc: Vec::new(),
            down_alloc: Vec::new(),
            scratch: Vec::new(),
            caps: Vec::new(),
            earliest: Vec::new(),
            flows: Vec::new(),
            rates: Vec::new(),
            tags: Vec::new(),
            free_slots: Vec::new(),
            by_earliest: HostHeap::default(),
            dirty: Vec::new(),
            n_live: 0,
        }
    }

    /// Adds a host; hosts are numbered in the order they are added, from 0.
    pub fn add_host(&mut self, up_bytes_per_s: f64, down_bytes_per_s: f64) -> u32 {
        assert!(
            up_bytes_per_s > 0.0 && down_bytes_per_s > 0.0,
            "capacities must be positive"
        );
        self.hosts.push(Endpoint {
            up_bytes_per_s,
            down_bytes_per_s,
            up: Vec::new(),
            down: Vec::new(),
        });
        self.earliest.push(Earliest {
            ns: u64::MAX,
            flow: NONE,
            dirty: false,
            rescan: false,
        });
        self.spare.push((up_bytes_per_s, down_bytes_per_s));
        self.by_earliest.add_host();
        (self.hosts.len() - 1) as u32
    }

    pub fn n_live(&self) -> usize {
        self.n_live
    }

    /// Flows `host` is sending.
    pub fn flows_up(&self, host: u32) -> impl Iterator<Item = (FlowId, &T)> + '_ {
        self.hosts[host as usize]
            .up
            .iter()
            .map(|&(slot, _)| (FlowId(slot), &self.tags[slot as usize]))
    }

    /// Flows `host` is receiving.
    pub fn flows_down(&self, host: u32) -> impl Iterator<Item = (FlowId, &T)> + '_ {
        self.hosts[host as usize]
            .down
            .iter()
            .map(|&(slot, _)| (FlowId(slot), &self.tags[slot as usize]))
    }

    /// Current rate of a live flow.
    pub fn rate_bytes_per_s(&self, id: FlowId) -> f64 {
        let flow = &self.flows[id.0 as usize];
        assert!(flow.live, "rate of a finished flow");
        self.rates[id.0 as usize]
    }

    /// Starts sending `bytes` from `src` to `dst` at `now`.
    pub fn start(&mut self, now: Instant, src: u32, dst: u32, bytes: u64, tag: T) -> FlowId {
        assert_ne!(src, dst, "a host does not send to itself");
        let flow = Flow {
            src,
            dst,
            bytes,
            remaining_bytes: bytes as f64,
            updated_at_ns: now.as_nanos(),
            finish_ns: u64::MAX,
            up_position: self.hosts[src as usize].up.len() as u32,
            down_position: self.hosts[dst as usize].down.len() as u32,
            live: true,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.flows[slot as usize] = flow;
                self.rates[slot as usize] = 0.0;
                self.up_alloc[slot as usize] = 0.0;
                self.down_alloc[slot as usize] = 0.0;
                self.tags[slot as usize] = tag;
                slot
            }
            None => {
                self.flows.push(flow);
                self.rates.push(0.0);
                self.up_alloc.push(0.0);
                self.down_alloc.push(0.0);
                self.tags.push(tag);
                (self.flows.len() - 1) as u32
            }
        };
        self.hosts[src as usize].up.push((slot, dst));
        self.hosts[dst as usize].down.push((slot, src));
        self.n_live += 1;
        self.rerate_endpoints(now, src, dst);
        FlowId(slot)
    }

    /// Stops a live flow before its end; returns what it had sent.
    pub fn cancel(&mut self, now: Instant, id: FlowId) -> FlowEnd<T> {
        let flow = self.flows[id.0 as usize];
        assert!(flow.live, "cancel of a finished flow");
        let elapsed_s = now.as_nanos().saturating_sub(flow.updated_at_ns) as f64 * 1e-9;
        let rate = self.rates[id.0 as usize];
        let remaining = (flow.remaining_bytes - rate * elapsed_s).max(0.0);
        let bytes_sent = flow.bytes - (remaining.ceil() as u64).min(flow.bytes);
        self.remove(now, id);
        FlowEnd {
            id,
            src: flow.src,
            dst: flow.dst,
            bytes_sent,
            tag: self.tags[id.0 as usize],
        }
    }

    /// When the next flow completes, if any flow is live.
    pub fn next_completion(&self) -> Option<Instant> {
        self.by_earliest
            .peek()
            .map(|(at_ns, _)| Instant::from_nanos(at_ns))
    }

    /// Ends the earliest flow if it completes at or before `now`.
    pub fn complete_next(&mut self, now: Instant) -> Option<FlowEnd<T>> {
        let (at_ns, host) = self.by_earliest.peek()?;
        if at_ns > now.as_nanos() {
            return None;
        }
        let slot = self.earliest[host as usize].flow;
        debug_assert_ne!(slot, NONE, "a host in the heap sends a flow");
        let flow = self.flows[slot as usize];
        self.remove(now, FlowId(slot));
        Some(FlowEnd {
            id: FlowId(slot),
            src: flow.src,
            dst: flow.dst,
            bytes_sent: flow.bytes,
            tag: self.tags[slot as usize],
        })
    }

    fn remove(&mut self, now: Instant, id: FlowId) {
        let flow = &mut self.flows[id.0 as usize];
        flow.live = false;
        let (src, dst) = (flow.src, flow.dst);
        let (up_position, down_position) = (flow.up_position, flow.down_position);

        let up = &mut self.hosts[src as usize].up;
        up.swap_remove(up_position as usize);
        if let Some(&(moved, _)) = up.get(up_position as usize) {
            self.flows[moved as usize].up_position = up_position;
        }
        let down = &mut self.hosts[dst as usize].down;
        down.swap_remove(down_position as usize);
        if let Some(&(moved, _)) = down.get(down_position as usize) {
            self.flows[moved as usize].down_position = down_position;
        }
        self.spare[src as usize].0 += self.up_alloc[id.0 as usize];
        self.spare[dst as usize].1 += self.down_alloc[id.0 as usize];
        self.up_alloc[id.0 as usize] = 0.0;
        self.down_alloc[id.0 as usize] = 0.0;
        self.free_slots.push(id.0);
        self.n_live -= 1;
        if self.earliest[src as usize].flow == id.0 {
            self.mark(src, true);
        }
        self.rerate_endpoints(now, src, dst);
    }

    /// Re-rates every flow on `src`'s uplink and `dst`'s downlink, then brings the
    /// earliest-completion index up to date for every uploader touched.
    fn rerate_endpoints(&mut self, now: Instant, src: u32, dst: u32) {
        self.refill(src, true);
        self.refill(dst, false);
        // Far ends follow: each flow of `src` moves its downloader's allotment towards its new
        // uplink allotment, within that downlink's unused capacity; likewise for `dst`.
        for index in 0..self.hosts[src as usize].up.len() {
            let (slot, receiver) = self.hosts[src as usize].up[index];
            if receiver != dst {
                self.follow(slot as usize, receiver, false);
            }
            self.rerate(now, slot);
        }
        for index in 0..self.hosts[dst as usize].down.len() {
            // Including the flows from `src`: their downlink allotment is the newest.
            let (slot, sender) = self.hosts[dst as usize].down[index];
            self.follow(slot as usize, sender, true);
            self.rerate(now, slot);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for &host in &dirty {
            let earliest = &mut self.earliest[host as usize];
            earliest.dirty = false;
            if earliest.rescan {
                earliest.rescan = false;
                let (mut flow, mut ns) = (NONE, u64::MAX);
                for &(slot, _) in &self.hosts[host as usize].up {
                    let finish_ns = self.flows[slot as usize].finish_ns;
                    if finish_ns < ns {
                        (flow, ns) = (slot, finish_ns);
                    }
                }
                (earliest.flow, earliest.ns) = (flow, ns);
            }
            let ns = earliest.ns;
            self.by_earliest.set(host, ns);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Water-fills one link of `host` over its flows: each flow is capped by what it could
    /// get at its other end (its allotment there plus that link's unused capacity).
    fn refill(&mut self, host: u32, up: bool) {
        let endpoint = &self.hosts[host as usize];
        let (capacity, flows) = if up {
            (endpoint.up_bytes_per_s, &endpoint.up)
        } else {
            (endpoint.down_bytes_per_s, &endpoint.down)
        };
        self.caps.clear();
        for &(slot, other) in flows {
            self.caps.push(self.far_cap(slot, other, up));
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.caps);
        let level = water_level(capacity, &mut self.scratch);
        let mut allotted = 0.0;
        for (&(slot, _), &cap) in flows.iter().zip(&self.caps) {
            let alloc = level.min(cap);
            allotted += alloc;
            if up {
                self.up_alloc[slot as usize] = alloc;
            } else {
                self.down_alloc[slot as usize] = alloc;
            }
        }
        let spare = (capacity - allotted).max(0.0);
        if up {
            self.spare[host as usize].0 = spare;
        } else {
            self.spare[host as usize].1 = spare;
        }
    }

    /// What flow `slot` could get at its far end (`other`'s downlink if `up`, else its
    /// uplink): its allotment there plus that link's unused capacity, and at least an equal
    /// share of that link (so that a new flow is never starved by full links at both ends).
    fn far_cap(&self, slot: u32, other: u32, up: bool) -> f64 {
        let endpoint = &self.hosts[other as usize];
        if up {
            let equal = endpoint.down_bytes_per_s / endpoint.down.len().max(1) as f64;
            (self.down_alloc[slot as usize] + self.spare[other as usize].1).max(equal)
        } else {
            let equal = endpoint.up_bytes_per_s / endpoint.up.len().max(1) as f64;
            (self.up_alloc[slot as usize] + self.spare[other as usize].0).max(equal)
        }
    }

    /// Moves flow `slot`'s allotment at its far end (`far`'s downlink if `far_is_up` is false,
    /// its uplink otherwise) towards its allotment at the near end, within `far`'s spare.
    fn follow(&mut self, slot: usize, far: u32, far_is_up: bool) {
        let (near, far_alloc, far_spare) = if far_is_up {
            (
                self.down_alloc[slot],
                &mut self.up_alloc[slot],
                &mut self.spare[far as usize].0,
            )
        } else {
            (
                self.up_alloc[slot],
                &mut self.down_alloc[slot],
                &mut self.spare[far as usize].1,
            )
        };
        if near > *far_alloc {
            let grow = (near - *far_alloc).min(*far_spare);
            *far_alloc += grow;
            *far_spare -= grow;
        } else {
            *far_spare += *far_alloc - near;
            *far_alloc = near;
        }
    }

    fn rerate(&mut self, now: Instant, slot: u32) {
        let rate = self.up_alloc[slot as usize].min(self.down_alloc[slot as usize]);
        if rate != self.rates[slot as usize] {
            self.set_rate(now, slot, rate);
        }
    }

    fn mark(&mut self, host: u32, rescan: bool) {
        let earliest = &mut self.earliest[host as usize];
        earliest.rescan |= rescan;
        if !earliest.dirty {
            earliest.dirty = true;
            self.dirty.push(host);
        }
    }

    /// Settles the bytes sent at the old rate, then schedules completion at the new one.
    fn set_rate(&mut self, now: Instant, slot: u32, rate: f64) {
        let old_rate = std::mem::replace(&mut self.rates[slot as usize], rate);
        let now_ns = now.as_nanos();
        let flow = &mut self.flows[slot as usize];
        let elapsed_s = now_ns.saturating_sub(flow.updated_at_ns) as f64 * 1e-9;
        flow.remaining_bytes = (flow.remaining_bytes - old_rate * elapsed_s).max(0.0);
        flow.updated_at_ns = now_ns;
        // Rounded up (without libm's `ceil`): a flow never completes before its last byte.
        let duration_ns = flow.remaining_bytes / rate * 1e9;
        let whole_ns = duration_ns as u64;
        let duration_ns = whole_ns + u64::from((whole_ns as f64) < duration_ns);
        let finish_ns = now_ns.saturating_add(duration_ns);
        let delayed = finish_ns > flow.finish_ns;
        flow.finish_ns = finish_ns;
        let src = flow.src;
        let earliest = &mut self.earliest[src as usize];
        if earliest.flow == slot {
            if delayed {
                self.mark(src, true);
            } else {
                earliest.ns = finish_ns;
                self.mark(src, false);
            }
        } else if finish_ns < earliest.ns {
            (earliest.flow, earliest.ns) = (slot, finish_ns);
            self.mark(src, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn at(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    /// Runs the network to quiescence; returns (tag, completion ns) in completion order.
    fn drain(net: &mut FlowNet<u32>) -> Vec<(u32, u64)> {
        let mut done = Vec::new();
        while let Some(when) = net.next_completion() {
            let end = net.complete_next(when).expect("the next completion is due");
            done.push((end.tag, when.as_nanos()));
        }
        done
    }

    #[test]
    fn two_flows_share_an_uplink() {
        let mut net = FlowNet::new();
        let src = net.add_host(100.0, 1e9);
        let a = net.add_host(1e9, 1e9);
        let b = net.add_host(1e9, 1e9);
        net.start(at(0), src, a, 100, 1);
        net.start(at(0), src, b, 100, 2);
        // 50 B/s each: both need 2 s.
        assert_eq!(drain(&mut net), vec![(1, 2 * SECOND), (2, 2 * SECOND)]);
        assert_eq!(net.n_live(), 0);
    }

    #[test]
    fn rate_recomputed_when_a_flow_ends() {
        let mut net = FlowNet::new();
        let src = net.add_host(100.0, 1e9);
        let a = net.add_host(1e9, 1e9);
        let b = net.add_host(1e9, 1e9);
        net.start(at(0), src, a, 50, 1);
        let long = net.start(at(0), src, b, 150, 2);
        assert_eq!(net.rate_bytes_per_s(long), 50.0);
        // Flow 1 ends at 1 s (50 B at 50 B/s); flow 2 has 100 B left, alone at 100 B/s.
        let first = net.next_completion().expect("flow 1 pending");
        assert_eq!(first, at(SECOND));
        let end = net.complete_next(first).expect("flow 1 due");
        assert_eq!((end.tag, end.bytes_sent), (1, 50));
        assert_eq!(net.rate_bytes_per_s(long), 100.0);
        assert_eq!(drain(&mut net), vec![(2, 2 * SECOND)]);
    }

    #[test]
    fn late_joiner_slows_the_first_flow() {
        let mut net = FlowNet::new();
        let src = net.add_host(100.0, 1e9);
        let a = net.add_host(1e9, 1e9);
        let b = net.add_host(1e9, 1e9);
        net.start(at(0), src, a, 200, 1);
        // After 1 s flow 1 has 100 B left; then both run at 50 B/s.
        net.start(at(SECOND), src, b, 50, 2);
        // Flow 2 ends at 2 s; flow 1 has 50 B left at 100 B/s: ends at 2.5 s.
        assert_eq!(
            drain(&mut net),
            vec![(2, 2 * SECOND), (1, 2 * SECOND + SECOND / 2)]
        );
    }

    #[test]
    fn downlink_share_caps_the_rate() {
        let mut net = FlowNet::new();
        let fast_a = net.add_host(1000.0, 1e9);
        let fast_b = net.add_host(1000.0, 1e9);
        let slow = net.add_host(1e9, 100.0);
        let f1 = net.start(at(0), fast_a, slow, 100, 1);
        let f2 = net.start(at(0), fast_b, slow, 100, 2);
        assert_eq!(net.rate_bytes_per_s(f1), 50.0);
        assert_eq!(net.rate_bytes_per_s(f2), 50.0);
        assert_eq!(drain(&mut net), vec![(1, 2 * SECOND), (2, 2 * SECOND)]);
    }

    #[test]
    fn cancel_frees_bandwidth_and_reports_bytes_sent() {
        let mut net = FlowNet::new();
        let src = net.add_host(100.0, 1e9);
        let a = net.add_host(1e9, 1e9);
        let b = net.add_host(1e9, 1e9);
        let doomed = net.start(at(0), src, a, 1000, 1);
        net.start(at(0), src, b, 100, 2);
        let end = net.cancel(at(SECOND), doomed);
        assert_eq!((end.tag, end.bytes_sent), (1, 50));
        // Flow 2: 50 B sent by 1 s, the other 50 B at 100 B/s.
        assert_eq!(drain(&mut net), vec![(2, SECOND + SECOND / 2)]);
    }

    #[test]
    fn slots_are_reused_without_confusing_stale_entries() {
        let mut net = FlowNet::new();
        let src = net.add_host(100.0, 1e9);
        let dst = net.add_host(1e9, 1e9);
        let first = net.start(at(0), src, dst, 100, 1);
        net.cancel(at(0), first);
        let second = net.start(at(0), src, dst, 300, 2);
        assert_eq!(first, second, "the slot is reused");
        assert_eq!(drain(&mut net), vec![(2, 3 * SECOND)]);
    }

    /// The uploader gives the share a busy downloader cannot take to its other flows.
    #[test]
    fn uploader_water_fills_around_a_busy_downloader() {
        let mut net = FlowNet::new();
        let src = net.add_host(100.0, 1e9);
        let busy = net.add_host(1e9, 40.0);
        let idle = net.add_host(1e9, 1e9);
        let other = net.add_host(1e9, 1e9);
        // `busy` receives 4 flows: its share is 10 B/s.
        for tag in 0..3 {
            net.start(at(0), other, busy, 1000, 10 + tag);
        }
        let to_busy = net.start(at(0), src, busy, 1000, 1);
        let to_idle = net.start(at(0), src, idle, 1000, 2);
        assert_eq!(net.rate_bytes_per_s(to_busy), 10.0);
        assert_eq!(net.rate_bytes_per_s(to_idle), 90.0);
    }

    /// The downloader gives the share a busy uploader cannot send to its other flows.
    #[test]
    fn downloader_water_fills_around_a_busy_uploader() {
        let mut net = FlowNet::new();
        let busy = net.add_host(40.0, 1e9);
        let free = net.add_host(1e9, 1e9);
        let dst = net.add_host(1e9, 100.0);
        let other = net.add_host(1e9, 1e9);
        // `busy` sends 4 flows: 10 B/s each.
        for tag in 0..3 {
            net.start(at(0), busy, other, 1000, 10 + tag);
        }
        let from_busy = net.start(at(0), busy, dst, 1000, 1);
        let from_free = net.start(at(0), free, dst, 1000, 2);
        assert_eq!(net.rate_bytes_per_s(from_busy), 10.0);
        assert_eq!(net.rate_bytes_per_s(from_free), 90.0);
    }

    /// Random flows on random hosts: at every instant no link carries more than its capacity,
    /// and every flow delivers all its bytes.
    #[test]
    fn rates_stay_feasible_and_every_flow_finishes() {
        use shoal_proto::Rng;
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let mut net = FlowNet::new();
            let n_hosts = 2 + rng.index(6) as u32;
            for _ in 0..n_hosts {
                let up = 100.0 * (1 + rng.index(10)) as f64;
                let down = 100.0 * (1 + rng.index(10)) as f64;
                net.add_host(up, down);
            }
            let check_feasible = |net: &FlowNet<u32>| {
                for (host, endpoint) in net.hosts.iter().enumerate() {
                    let up: f64 = endpoint
                        .up
                        .iter()
                        .map(|&(s, _)| net.rates[s as usize])
                        .sum();
                    let down: f64 = endpoint
                        .down
                        .iter()
                        .map(|&(s, _)| net.rates[s as usize])
                        .sum();
                    assert!(
                        up <= endpoint.up_bytes_per_s * (1.0 + 1e-9),
                        "seed {seed} host {host} up {up}"
                    );
                    assert!(
                        down <= endpoint.down_bytes_per_s * (1.0 + 1e-9),
                        "seed {seed} host {host} down {down}"
                    );
                    for &(slot, _) in &endpoint.up {
                        assert!(
                            net.rates[slot as usize] > 0.0,
                            "seed {seed}: a live flow stalls"
                        );
                    }
                }
            };
            let mut now_ns = 0u64;
            let mut finished = Vec::new();
            for tag in 0..60u32 {
                now_ns += rng.below(SECOND);
                while let Some(at) = net.next_completion().filter(|at| at.as_nanos() <= now_ns) {
                    let end = net.complete_next(at).expect("due");
                    finished.push(end.tag);
                    check_feasible(&net);
                }
                let src = rng.index(n_hosts as usize) as u32;
                let dst = (src + 1 + rng.index(n_hosts as usize - 1) as u32) % n_hosts;
                let bytes = 1 + rng.below(500);
                net.start(at(now_ns), src, dst, bytes, tag);
                check_feasible(&net);
            }
            while let Some(at) = net.next_completion() {
                let end = net.complete_next(at).expect("due");
                assert_eq!(end.bytes_sent, net.flows[end.id.0 as usize].bytes);
                finished.push(end.tag);
                check_feasible(&net);
            }
            finished.sort_unstable();
            assert_eq!(finished, (0..60).collect::<Vec<u32>>(), "seed {seed}");
            assert_eq!(net.n_live(), 0);
        }
    }
}
