//! Bandwidth limits: one token bucket per direction (egress, ingress) per process, shared by
//! every shard.
//!
//! # Why one process-wide bucket
//!
//! A stripe lives on one shard, and a small blob has a single stripe, so one shard may carry
//! all of a process's traffic. A static split of the configured rate (`rate / n_shards` each)
//! would cap such a transfer at a fraction of the limit. So every shard draws from the same
//! bucket: a [`RateLimiter`] is an `Arc` of atomics, `Send + Sync`, cloned into each shard.
//!
//! # The bucket (GCRA, with reservations)
//!
//! The bucket is kept as one number, the *theoretical arrival time* `tat_ns` of the generic
//! cell rate algorithm: the clock reading (nanoseconds since the limiter was made) at which
//! every byte granted so far will have been paid for at `bytes_per_s`. Tokens available at
//! `now_ns` are `(now_ns + burst_ns - tat_ns) * bytes_per_s`, at most `burst_bytes`; they go
//! negative (debt) after a request bigger than what was there.
//!
//! [`RateLimiter::acquire`] *reserves* first and then sleeps: it moves `tat_ns` to
//! `max(tat_ns, now_ns) + cost_ns` with two wait-free atomic operations (`fetch_max(now)`,
//! then `fetch_add(cost)`: no compare-and-swap loop, so no retry under contention), and the
//! value it moved it from says when its bytes may go:
//! - a request of at most `burst_bytes` goes once the bucket holds its bytes;
//! - a bigger one (a 64 MiB piece under a 5 MiB burst) goes once the bucket before it is
//!   full, and leaves the bucket in debt by the excess, which the requests after it wait out.
//!   So it never deadlocks, and the long-run rate stays at `bytes_per_s`.
//!
//! Reservations are served in the order they were made, so a big request is never starved by
//! a stream of small ones. Over any run, the bytes released by time `t` are at most
//! `bytes_per_s * t + max(burst_bytes, largest request)`; with requests of at most
//! `burst_bytes`, at most `bytes_per_s * t + burst_bytes` (the tests check it with several
//! threads). Costs are rounded up to whole nanoseconds, so rounding never adds bandwidth.
//!
//! A reservation is made before the sleep: a caller dropped while sleeping has still used its
//! share (its bytes count as sent). Callers should acquire just before writing (or just after
//! reading) the bytes, in chunks of at most the burst, which also keeps the shards' shares
//! fine-grained.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nanoseconds per second.
const NS_PER_S: u128 = 1_000_000_000;

/// The smallest default burst: one piece of the smallest size (1 MiB).
pub const BURST_BYTES_MIN_DEFAULT: u64 = 1 << 20;

/// The most one request can cost, in nanoseconds of bucket time (about 11.6 days). Keeps
/// `tat_ns` far from overflow whatever is asked: it grows at most by this per outstanding
/// request beyond real time. A request bigger than `bytes_per_s` times this is charged only
/// this much.
const COST_NS_MAX: u64 = 1_000_000 * 1_000_000_000;

/// The default burst for a rate: a tenth of a second of traffic, and at least 1 MiB
/// ([`BURST_BYTES_MIN_DEFAULT`]) so that a whole smallest piece can go at once.
pub fn default_burst_bytes(bytes_per_s: u64) -> u64 {
    (bytes_per_s / 10).max(BURST_BYTES_MIN_DEFAULT)
}

/// A process-wide token bucket for one direction of traffic, shared by every shard. Cheap to
/// clone (an `Arc`), `Send + Sync`. See the module docs for the algorithm.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// `None`: unlimited, and `acquire` touches nothing.
    bucket: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    bytes_per_s: u64,
    burst_bytes: u64,
    /// `burst_bytes` in nanoseconds at `bytes_per_s`, rounded down (so the burst never
    /// grants more than `burst_bytes`).
    burst_ns: u64,
    /// Where `now_ns` counts from.
    epoch: Instant,
    /// Theoretical arrival time, nanoseconds since `epoch`: see the module docs. Only ever
    /// increases. Starts at 0: a full bucket.
    tat_ns: AtomicU64,
}

impl RateLimiter {
    /// A limiter of `bytes_per_s` (long-run) that lets up to `burst_bytes` go at once after
    /// an idle spell ([`default_burst_bytes`] is a good default). A rate of 0 means no limit
    /// (as in config files), the same as [`RateLimiter::unlimited`].
    pub fn new(bytes_per_s: u64, burst_bytes: u64) -> RateLimiter {
        if bytes_per_s == 0 {
            return RateLimiter::unlimited();
        }
        let burst_ns = u128::from(burst_bytes) * NS_PER_S / u128::from(bytes_per_s);
        RateLimiter {
            bucket: Some(Arc::new(Bucket {
                bytes_per_s,
                burst_bytes,
                burst_ns: u64::try_from(burst_ns).unwrap_or(u64::MAX).min(COST_NS_MAX),
                epoch: Instant::now(),
                tat_ns: AtomicU64::new(0),
            })),
        }
    }

    /// No limit: [`RateLimiter::acquire`] returns at once.
    pub fn unlimited() -> RateLimiter {
        RateLimiter { bucket: None }
    }

    pub fn is_unlimited(&self) -> bool {
        self.bucket.is_none()
    }

    /// The long-run rate; `None` when unlimited.
    pub fn bytes_per_s(&self) -> Option<u64> {
        self.bucket.as_ref().map(|bucket| bucket.bytes_per_s)
    }

    /// The burst; `None` when unlimited.
    pub fn burst_bytes(&self) -> Option<u64> {
        self.bucket.as_ref().map(|bucket| bucket.burst_bytes)
    }

    /// Takes `bytes` tokens, waiting (`compio::time::sleep` on the caller's runtime) until the
    /// bucket allows it. Requests bigger than the burst are allowed by going into debt, so a
    /// 64 MiB piece does not deadlock; the long-run rate stays at `bytes_per_s`. Requests are
    /// served in the order they reserve; one sleep at most. If the future is dropped while
    /// sleeping, the tokens stay taken.
    pub async fn acquire(&self, bytes: u64) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        if bytes == 0 {
            return;
        }
        let now_ns = bucket.now_ns();
        let wait_ns = bucket.reserve(bytes, now_ns);
        if wait_ns > 0 {
            compio::time::sleep(Duration::from_nanos(wait_ns)).await;
        }
    }

    /// The accounting of [`RateLimiter::acquire`] at a given clock reading (nanoseconds since
    /// the limiter was made), without sleeping: reserves `bytes` and returns how long to wait
    /// before sending them (0: at once). For tests and simulations.
    #[cfg(test)]
    fn reserve_at(&self, bytes: u64, now_ns: u64) -> u64 {
        match &self.bucket {
            Some(bucket) if bytes > 0 => bucket.reserve(bytes, now_ns),
            _ => 0,
        }
    }
}

impl Bucket {
    /// Nanoseconds since `epoch` (monotonic).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// What `bytes` cost in nanoseconds at the rate, rounded up, at most [`COST_NS_MAX`].
    fn cost_ns(&self, bytes: u64) -> u64 {
        let cost = (u128::from(bytes) * NS_PER_S).div_ceil(u128::from(self.bytes_per_s));
        u64::try_from(cost).unwrap_or(u64::MAX).min(COST_NS_MAX)
    }

    /// Reserves `bytes` at `now_ns`; returns the wait before they may go. Wait-free: two
    /// atomic read-modify-writes, whatever the contention.
    fn reserve(&self, bytes: u64, now_ns: u64) -> u64 {
        let cost_ns = self.cost_ns(bytes);
        // Idle time earns at most the burst: the bucket starts no earlier than now.
        self.tat_ns.fetch_max(now_ns, Ordering::AcqRel);
        // `start_ns >= now_ns`: tat only increases, and it was raised to `now_ns` above.
        let start_ns = self.tat_ns.fetch_add(cost_ns, Ordering::AcqRel);
        debug_assert!(start_ns >= now_ns);
        // The bucket at `now_ns` holds `now + burst - start` ns of tokens; wait until it
        // holds this request's cost, or the whole burst for a request bigger than it.
        let needed_ns = cost_ns.min(self.burst_ns);
        let ready_ns = start_ns
            .saturating_add(needed_ns)
            .saturating_sub(self.burst_ns);
        ready_ns.saturating_sub(now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// 1000 B/s with a 100-byte burst: one byte per millisecond.
    fn limiter() -> RateLimiter {
        RateLimiter::new(1000, 100)
    }

    #[test]
    fn unlimited_never_waits() {
        let unlimited = RateLimiter::unlimited();
        assert!(unlimited.is_unlimited());
        assert_eq!(unlimited.reserve_at(u64::MAX, 0), 0);
        assert_eq!(unlimited.bytes_per_s(), None);
        assert!(RateLimiter::new(0, 100).is_unlimited());
        assert!(!limiter().is_unlimited());
        assert_eq!(limiter().bytes_per_s(), Some(1000));
        assert_eq!(limiter().burst_bytes(), Some(100));
    }

    #[test]
    fn default_burst() {
        assert_eq!(default_burst_bytes(0), 1 << 20);
        assert_eq!(default_burst_bytes(50_000_000), 5_000_000);
        assert_eq!(default_burst_bytes(1_000_000), 1 << 20);
    }

    /// (bytes, now_ns, expected wait_ns), applied in order to one fresh limiter.
    fn check(limiter: &RateLimiter, steps: &[(u64, u64, u64)]) {
        for (index, &(bytes, now_ns, expected)) in steps.iter().enumerate() {
            let wait = limiter.reserve_at(bytes, now_ns);
            assert_eq!(wait, expected, "step {index}: {bytes} bytes at {now_ns} ns");
        }
    }

    #[test]
    fn a_full_bucket_gives_the_burst_then_refills_at_the_rate() {
        check(
            &limiter(),
            &[
                // The burst at once, in pieces.
                (60, 0, 0),
                (40, 0, 0),
                // Empty: 10 bytes wait 10 ms.
                (10, 0, 10 * MS),
                // 5 ms later the bucket is still owed 5 ms; 5 more bytes: 10 ms.
                (5, 5 * MS, 10 * MS),
                // Refill: everything reserved was paid for at 115 ms; by 165 ms the bucket is
                // full again, and no fuller than the burst.
                (50, 165 * MS, 0),
                (50, 165 * MS, 0),
                (1, 165 * MS, MS),
            ],
        );
    }

    #[test]
    fn idle_time_refills_at_most_the_burst() {
        check(
            &limiter(),
            &[
                (100, 0, 0),
                // Ten seconds idle: still only 100 bytes at once.
                (100, 10 * S, 0),
                (1, 10 * S, MS),
            ],
        );
    }

    #[test]
    fn a_request_bigger_than_the_burst_goes_into_debt() {
        check(
            &limiter(),
            &[
                // Full bucket: 1000 bytes (ten bursts) go at once...
                (1000, 0, 0),
                // ...and the next byte waits out the debt: 900 ms, plus its own 1 ms.
                (1, 0, 901 * MS),
                // A big request waits until the bucket before it is full: everything
                // reserved before it (1001 ms worth) is paid for.
                (500, 0, 1001 * MS),
                // The requests after it wait for its debt.
                (1, 0, 1501 * MS - 100 * MS + MS),
            ],
        );
        // Not in debt but not full: a big request waits until it is full.
        check(
            &limiter(),
            &[(30, 0, 0), (200, 0, 30 * MS), (1, 40 * MS, 91 * MS)],
        );
    }

    #[test]
    fn reservations_are_served_in_order() {
        // A big request behind small ones is not starved by later small ones.
        let limiter = limiter();
        let mut previous = 0;
        let mut big_ready = None;
        for step in 0..200u64 {
            let bytes = if step == 10 { 5_000 } else { 20 };
            let now = step * MS;
            let ready = now + limiter.reserve_at(bytes, now);
            assert!(
                ready >= previous,
                "step {step}: ready {ready} before {previous}"
            );
            previous = ready;
            if step == 10 {
                big_ready = Some(ready);
            }
        }
        // It went when the 200 bytes reserved before it were paid for: the bucket was full.
        assert_eq!(big_ready, Some(200 * MS));
    }

    #[test]
    fn huge_requests_do_not_overflow() {
        let limiter = RateLimiter::new(1, 1);
        assert_eq!(limiter.reserve_at(u64::MAX, 0), 0);
        // Charged COST_NS_MAX: the next byte waits that long.
        assert_eq!(limiter.reserve_at(1, 0), COST_NS_MAX);
        let fast = RateLimiter::new(u64::MAX, u64::MAX);
        // u64::MAX bytes at u64::MAX B/s: a full bucket, then a second's wait.
        assert_eq!(fast.reserve_at(u64::MAX, 0), 0);
        assert_eq!(fast.reserve_at(u64::MAX, 0), S);
    }

    /// Several threads reserve concurrently at clock readings from a shared virtual clock;
    /// by any time `t`, the bytes released (reserved with `now + wait <= t`) are at most
    /// `rate * t + burst`, and with a request bigger than the burst, at most
    /// `rate * t + that request`.
    #[test]
    fn concurrent_takers_never_exceed_rate_times_time_plus_burst() {
        const N_THREADS: u64 = 4;
        const N_REQUESTS: u64 = 5_000;
        let rate = 1_000_000;
        for (burst, big) in [(10_000, None), (10_000, Some(50_000)), (4_096, Some(4_096))] {
            let limiter = RateLimiter::new(rate, burst);
            let clock = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..N_THREADS)
                .map(|thread| {
                    let (limiter, clock) = (limiter.clone(), Arc::clone(&clock));
                    std::thread::spawn(move || {
                        let mut released = Vec::with_capacity(N_REQUESTS as usize);
                        let mut waits = Vec::with_capacity(N_REQUESTS as usize);
                        for request in 0..N_REQUESTS {
                            // Sizes 1..=burst, and sometimes the big one; the clock moves by
                            // 0–12 ms per request, a little faster than the rate on average, so the
                            // bucket is sometimes idle (refilling) and sometimes in debt.
                            let bytes = match big {
                                Some(big) if request % 97 == thread => big,
                                _ => 1 + (request * 7919 + thread * 104_729) % burst,
                            };
                            let step_ms = (request * 31 + thread * 17) % 13;
                            let now = clock.fetch_add(step_ms * 1_000_000, Ordering::Relaxed);
                            let wait = limiter.reserve_at(bytes, now);
                            released.push((now + wait, bytes));
                            waits.push(wait);
                        }
                        (released, waits)
                    })
                })
                .collect();
            let mut released: Vec<(u64, u64)> = Vec::new();
            let mut waits: Vec<u64> = Vec::new();
            for thread in threads {
                let (thread_released, thread_waits) = thread.join().unwrap();
                released.extend(thread_released);
                waits.extend(thread_waits);
            }
            released.sort_unstable();
            let allowance = u128::from(big.unwrap_or(0).max(burst));
            let mut total: u128 = 0;
            for &(at_ns, bytes) in &released {
                total += u128::from(bytes);
                let bound = u128::from(rate) * u128::from(at_ns) / NS_PER_S + allowance;
                assert!(
                    total <= bound,
                    "burst {burst}: {total} bytes by {at_ns} ns, bound {bound}"
                );
            }
            // Both regimes happened: some requests waited, some went at once.
            let n_waited = waits.iter().filter(|&&wait| wait > 0).count();
            assert!(
                n_waited > waits.len() / 100 && waits.len() - n_waited > waits.len() / 100,
                "burst {burst}: {n_waited} of {} waited",
                waits.len()
            );
        }
    }

    #[test]
    fn acquire_sleeps_on_the_runtime_and_returns() {
        crate::test_runtime::run(async {
            let limiter = RateLimiter::new(1_000_000, 1_000);
            // The burst, then 2 ms of debt, then one more: three acquires, all return.
            limiter.acquire(1_000).await;
            limiter.acquire(2_000).await;
            limiter.acquire(1).await;
            RateLimiter::unlimited().acquire(u64::MAX).await;
            limiter.acquire(0).await;
        });
        assert_send_sync::<RateLimiter>();
    }

    fn assert_send_sync<T: Send + Sync>() {}
}
