//! The bandwidth model: piece payloads as flows sharing each host's uplink and downlink.
//!
//! Every host has an upload capacity and a download capacity (bytes per second). A flow
//! carries one piece payload from an uploader to a downloader; its rate is
//!
//! ```text
//! rate = min(up_src / n_up(src), down_dst / n_down(dst))
//! ```
//!
//! where `n_up(src)` counts the flows `src` is sending and `n_down(dst)` those `dst` is
//! receiving. This is an equal split per endpoint, not max-min fairness: a flow held back by
//! its downloader leaves the rest of its share of the uploader's link unused.
//!
//! A rate changes only when one of its two endpoints gains or loses a flow, so starting,
//! finishing or cancelling a flow re-rates exactly the flows of its uploader's uplink and
//! its downloader's downlink (O(affected flows), nothing global). Each flow keeps its
//! remaining bytes as of its last re-rating; a re-rating that changes the rate first settles
//! the bytes sent since then, then schedules the new completion time. Completion times sit in
//! a binary heap with lazy invalidation: an entry carries the flow's version and is skipped
//! when popped if the flow was re-rated (or ended) since.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shoal_proto::Instant;

/// Names one live flow. Slots are reused once a flow ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowId(pub u32);

#[derive(Debug)]
struct Endpoint {
    up_bytes_per_s: f64,
    down_bytes_per_s: f64,
    /// Flows this host is sending (slot indexes).
    up: Vec<u32>,
    /// Flows this host is receiving.
    down: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Flow<T> {
    src: u32,
    dst: u32,
    bytes: u64,
    /// Bytes still to send as of `updated_at_ns`.
    remaining_bytes: f64,
    rate_bytes_per_s: f64,
    updated_at_ns: u64,
    /// Bumped on every re-rating; heap entries with an older version are stale.
    version: u32,
    /// Positions in `hosts[src].up` and `hosts[dst].down` (for O(1) removal).
    up_position: u32,
    down_position: u32,
    live: bool,
    tag: T,
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

/// All flows of a simulation. `T` is the driver's note about a flow (which connection, which
/// piece), handed back when the flow ends.
#[derive(Debug)]
pub struct FlowNet<T> {
    hosts: Vec<Endpoint>,
    flows: Vec<Flow<T>>,
    free_slots: Vec<u32>,
    /// (completion time in ns, flow slot, flow version), earliest first.
    completions: BinaryHeap<Reverse<(u64, u32, u32)>>,
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
            flows: Vec::new(),
            free_slots: Vec::new(),
            completions: BinaryHeap::new(),
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
            .map(|&slot| (FlowId(slot), &self.flows[slot as usize].tag))
    }

    /// Flows `host` is receiving.
    pub fn flows_down(&self, host: u32) -> impl Iterator<Item = (FlowId, &T)> + '_ {
        self.hosts[host as usize]
            .down
            .iter()
            .map(|&slot| (FlowId(slot), &self.flows[slot as usize].tag))
    }

    /// Current rate of a live flow.
    pub fn rate_bytes_per_s(&self, id: FlowId) -> f64 {
        let flow = &self.flows[id.0 as usize];
        assert!(flow.live, "rate of a finished flow");
        flow.rate_bytes_per_s
    }

    /// Starts sending `bytes` from `src` to `dst` at `now`.
    pub fn start(&mut self, now: Instant, src: u32, dst: u32, bytes: u64, tag: T) -> FlowId {
        assert_ne!(src, dst, "a host does not send to itself");
        let flow = Flow {
            src,
            dst,
            bytes,
            remaining_bytes: bytes as f64,
            rate_bytes_per_s: 0.0,
            updated_at_ns: now.as_nanos(),
            version: 0,
            up_position: self.hosts[src as usize].up.len() as u32,
            down_position: self.hosts[dst as usize].down.len() as u32,
            live: true,
            tag,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                let version = self.flows[slot as usize].version;
                self.flows[slot as usize] = Flow { version, ..flow };
                slot
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.hosts[src as usize].up.push(slot);
        self.hosts[dst as usize].down.push(slot);
        self.n_live += 1;
        self.rerate_endpoints(now, src, dst);
        FlowId(slot)
    }

    /// Stops a live flow before its end; returns what it had sent.
    pub fn cancel(&mut self, now: Instant, id: FlowId) -> FlowEnd<T> {
        let flow = self.flows[id.0 as usize];
        assert!(flow.live, "cancel of a finished flow");
        let elapsed_s = now.as_nanos().saturating_sub(flow.updated_at_ns) as f64 * 1e-9;
        let remaining = (flow.remaining_bytes - flow.rate_bytes_per_s * elapsed_s).max(0.0);
        let bytes_sent = flow.bytes - (remaining.ceil() as u64).min(flow.bytes);
        self.remove(now, id);
        FlowEnd {
            id,
            src: flow.src,
            dst: flow.dst,
            bytes_sent,
            tag: flow.tag,
        }
    }

    /// When the next flow completes, if any flow is live and moving.
    pub fn next_completion(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at_ns, slot, version))) = self.completions.peek() {
            let flow = &self.flows[slot as usize];
            if flow.live && flow.version == version {
                return Some(Instant::from_nanos(at_ns));
            }
            self.completions.pop();
        }
        None
    }

    /// Ends the earliest flow if it completes at or before `now`.
    pub fn complete_next(&mut self, now: Instant) -> Option<FlowEnd<T>> {
        let at = self.next_completion()?;
        if at > now {
            return None;
        }
        let Reverse((_, slot, _)) = self.completions.pop()?;
        let flow = self.flows[slot as usize];
        self.remove(now, FlowId(slot));
        Some(FlowEnd {
            id: FlowId(slot),
            src: flow.src,
            dst: flow.dst,
            bytes_sent: flow.bytes,
            tag: flow.tag,
        })
    }

    fn remove(&mut self, now: Instant, id: FlowId) {
        let flow = &mut self.flows[id.0 as usize];
        flow.live = false;
        flow.version = flow.version.wrapping_add(1);
        let (src, dst) = (flow.src, flow.dst);
        let (up_position, down_position) = (flow.up_position, flow.down_position);

        let up = &mut self.hosts[src as usize].up;
        up.swap_remove(up_position as usize);
        if let Some(&moved) = up.get(up_position as usize) {
            self.flows[moved as usize].up_position = up_position;
        }
        let down = &mut self.hosts[dst as usize].down;
        down.swap_remove(down_position as usize);
        if let Some(&moved) = down.get(down_position as usize) {
            self.flows[moved as usize].down_position = down_position;
        }
        self.free_slots.push(id.0);
        self.n_live -= 1;
        self.rerate_endpoints(now, src, dst);
    }

    /// Re-rates every flow on `src`'s uplink and `dst`'s downlink.
    fn rerate_endpoints(&mut self, now: Instant, src: u32, dst: u32) {
        for index in 0..self.hosts[src as usize].up.len() {
            let slot = self.hosts[src as usize].up[index];
            self.rerate(now, slot);
        }
        for index in 0..self.hosts[dst as usize].down.len() {
            let slot = self.hosts[dst as usize].down[index];
            self.rerate(now, slot);
        }
    }

    fn rerate(&mut self, now: Instant, slot: u32) {
        let flow = &self.flows[slot as usize];
        let src = &self.hosts[flow.src as usize];
        let dst = &self.hosts[flow.dst as usize];
        let rate = (src.up_bytes_per_s / src.up.len() as f64)
            .min(dst.down_bytes_per_s / dst.down.len() as f64);
        if rate == flow.rate_bytes_per_s {
            return;
        }
        let now_ns = now.as_nanos();
        let flow = &mut self.flows[slot as usize];
        let elapsed_s = now_ns.saturating_sub(flow.updated_at_ns) as f64 * 1e-9;
        flow.remaining_bytes = (flow.remaining_bytes - flow.rate_bytes_per_s * elapsed_s).max(0.0);
        flow.rate_bytes_per_s = rate;
        flow.updated_at_ns = now_ns;
        flow.version = flow.version.wrapping_add(1);
        let finish_ns = now_ns.saturating_add((flow.remaining_bytes / rate * 1e9).ceil() as u64);
        self.completions
            .push(Reverse((finish_ns, slot, flow.version)));
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
}
