//! [`OriginCluster`]: the origins as a rendezvous-hash ring, as every client of the origins
//! (proxy, agent, the origins themselves) sees it.
//!
//! - **Members** come from the operator's list of `host:port` entries. An IP address is one
//!   member; a DNS name is as many members as it resolves to, and names are resolved again
//!   every [`ClusterConfig::refresh_interval`], so a DNS record is enough to grow or shrink
//!   the cluster. A member is named by its resolved `ip:port`, the same on every host that
//!   resolves the same addresses, so every host places a blob on the same origins.
//! - **Owners**: the [`ClusterConfig::replicas`] healthy members that score highest for the
//!   blob's digest ([`HashRing`]). Writes go to all of them; reads try them best first, then
//!   the next-ranked members (a blob written while an owner was down, or before a member was
//!   added, lives there), then unhealthy owners as a last resort.
//! - **Health**: [`OriginCluster::spawn_health_checks`] asks every member's
//!   `GET /internal/health` every [`ClusterConfig::health_interval`]; after
//!   [`ClusterConfig::health_failures_max`] consecutive failures a member is out of the
//!   placement, and the first success puts it back (it then owns exactly what it owned
//!   before: rendezvous hashing moves nothing else).
//!
//! Shared state is behind one `std::sync::Mutex` held only for lookups and updates (never
//! across an await), so one cluster value can be cloned into any runtime.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use shoal_proto::Digest;
use shoal_proto::ring::{HashRing, RING_MEMBERS_MAX};

use crate::http::client::{ClientBody, HttpClient};

/// The origin's health endpoint.
pub const HEALTH_PATH: &str = "/internal/health";

/// Default copies of each blob in the cluster.
pub const REPLICAS_DEFAULT: usize = 3;

/// How the cluster is found and watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `host:port` entries: IP addresses, or DNS names standing for every address they
    /// resolve to. At least one.
    pub members: Vec<String>,
    /// Copies of each blob (owners per digest). At least 1.
    pub replicas: usize,
    /// How often DNS names are resolved again.
    pub refresh_interval: Duration,
    /// How often every member's health endpoint is asked.
    pub health_interval: Duration,
    /// Consecutive failed checks that take a member out of the placement.
    pub health_failures_max: u32,
}

impl ClusterConfig {
    /// A cluster of `members` with every other setting at its default.
    pub fn new(members: Vec<String>) -> ClusterConfig {
        ClusterConfig {
            members,
            replicas: REPLICAS_DEFAULT,
            refresh_interval: Duration::from_secs(30),
            health_interval: Duration::from_secs(2),
            health_failures_max: 2,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.members.is_empty() {
            return Err("origin cluster: at least one member is needed".into());
        }
        if self.members.len() > RING_MEMBERS_MAX {
            return Err(format!(
                "origin cluster: {} members, at most {RING_MEMBERS_MAX}",
                self.members.len()
            ));
        }
        if self.replicas == 0 {
            return Err("origin cluster: replicas must be at least 1".into());
        }
        if self.health_failures_max == 0 {
            return Err("origin cluster: health_failures_max must be at least 1".into());
        }
        if self.refresh_interval.is_zero() || self.health_interval.is_zero() {
            return Err("origin cluster: intervals must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State {
    ring: HashRing,
    /// Member name (`ip:port`) → address.
    addrs: HashMap<String, SocketAddr>,
    /// Consecutive failed health checks per member.
    failures: HashMap<String, u32>,
}

/// The origin ring. Cheap to clone; every clone shares the same view.
#[derive(Debug, Clone)]
pub struct OriginCluster {
    config: Arc<ClusterConfig>,
    state: Arc<Mutex<State>>,
}

/// Resolves every entry (blocking: DNS). An entry that does not resolve is an error naming it.
fn resolve(entries: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = Vec::new();
    for entry in entries {
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            addrs.push(addr);
            continue;
        }
        let resolved = entry
            .to_socket_addrs()
            .map_err(|e| format!("origin cluster member {entry:?} does not resolve: {e}"))?;
        let before = addrs.len();
        addrs.extend(resolved);
        if addrs.len() == before {
            return Err(format!(
                "origin cluster member {entry:?} resolves to no address"
            ));
        }
    }
    addrs.sort();
    addrs.dedup();
    if addrs.len() > RING_MEMBERS_MAX {
        return Err(format!(
            "origin cluster: {} addresses, at most {RING_MEMBERS_MAX}",
            addrs.len()
        ));
    }
    Ok(addrs)
}

fn build_state(addrs: &[SocketAddr], old: Option<&State>) -> Result<State, String> {
    let names: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    let mut ring =
        HashRing::new(names.iter().cloned()).map_err(|e| format!("origin cluster: {e}"))?;
    let mut failures = HashMap::new();
    if let Some(old) = old {
        for name in &names {
            if old.ring.is_healthy(name) == Some(false) {
                ring.set_healthy(name, false);
            }
            if let Some(&n) = old.failures.get(name) {
                failures.insert(name.clone(), n);
            }
        }
    }
    Ok(State {
        ring,
        addrs: names.into_iter().zip(addrs.iter().copied()).collect(),
        failures,
    })
}

impl OriginCluster {
    /// Resolves the members (blocking) and builds the ring, every member healthy. Errors name
    /// the entry that does not resolve or the setting that is wrong.
    pub fn resolve(config: ClusterConfig) -> Result<OriginCluster, String> {
        config.validate()?;
        let addrs = resolve(&config.members)?;
        let state = build_state(&addrs, None)?;
        Ok(OriginCluster {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// A cluster of one origin (no DNS, no health checks needed).
    pub fn single(addr: SocketAddr) -> OriginCluster {
        let mut config = ClusterConfig::new(vec![addr.to_string()]);
        config.replicas = 1;
        // One valid name always forms a ring; the empty fallback is never taken.
        let state = build_state(&[addr], None).unwrap_or_else(|_| State {
            ring: HashRing::default(),
            addrs: HashMap::new(),
            failures: HashMap::new(),
        });
        OriginCluster {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is a
        // plain value that stays consistent between statements.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every member's address (healthy or not), in name order.
    pub fn members(&self) -> Vec<SocketAddr> {
        let state = self.state();
        let mut addrs: Vec<SocketAddr> = state.addrs.values().copied().collect();
        addrs.sort();
        addrs
    }

    /// Whether `addr` is a member and healthy (`None`: not a member).
    pub fn is_healthy(&self, addr: SocketAddr) -> Option<bool> {
        self.state().ring.is_healthy(&addr.to_string())
    }

    fn addrs_of(state: &State, names: &[&str]) -> Vec<SocketAddr> {
        names
            .iter()
            .filter_map(|name| state.addrs.get(*name).copied())
            .collect()
    }

    /// Where `digest` is written: its healthy owners, best first (all owners when none is
    /// healthy, so that a write is still attempted).
    pub fn owners(&self, digest: &Digest) -> Vec<SocketAddr> {
        let state = self.state();
        let replicas = self.config.replicas;
        let healthy = state.ring.owners_of_digest(digest, replicas);
        if healthy.is_empty() {
            return Self::addrs_of(
                &state,
                &state.ring.owners_all_members(digest.as_bytes(), replicas),
            );
        }
        Self::addrs_of(&state, &healthy)
    }

    /// Whether `me` owns `digest` when every member is up: what a member keeps and catches up
    /// on after an outage.
    pub fn is_home_owner(&self, me: SocketAddr, digest: &Digest) -> bool {
        let state = self.state();
        let name = me.to_string();
        state
            .ring
            .owners_all_members(digest.as_bytes(), self.config.replicas)
            .contains(&name.as_str())
    }

    /// Where to look for `digest`, in order: healthy members by rank for the digest (owners
    /// first, then the next `replicas` ranked), then the unhealthy ones among those. At most
    /// `2 × replicas` addresses, so a missing blob costs a bounded number of requests.
    pub fn read_order(&self, digest: &Digest) -> Vec<SocketAddr> {
        let state = self.state();
        let ranked = state
            .ring
            .owners_all_members(digest.as_bytes(), self.config.replicas.saturating_mul(2));
        let (healthy, unhealthy): (Vec<&str>, Vec<&str>) = ranked
            .into_iter()
            .partition(|name| state.ring.is_healthy(name) == Some(true));
        let mut order = Self::addrs_of(&state, &healthy);
        order.extend(Self::addrs_of(&state, &unhealthy));
        order
    }

    /// Records one health check's outcome for `addr`. Returns whether the member's health
    /// changed.
    pub fn record_check(&self, addr: SocketAddr, ok: bool) -> bool {
        let mut state = self.state();
        let name = addr.to_string();
        let Some(was_healthy) = state.ring.is_healthy(&name) else {
            return false;
        };
        if ok {
            state.failures.remove(&name);
            if !was_healthy {
                state.ring.set_healthy(&name, true);
                tracing::info!(origin = %addr, "origin healthy again");
                return true;
            }
            return false;
        }
        let failures = state.failures.entry(name.clone()).or_insert(0);
        *failures = failures.saturating_add(1);
        if was_healthy && *failures >= self.config.health_failures_max {
            state.ring.set_healthy(&name, false);
            tracing::warn!(origin = %addr, "origin unhealthy: out of the placement");
            return true;
        }
        false
    }

    /// Resolves the member entries again (blocking: DNS) and replaces the ring, keeping the
    /// health of members that stay. A failure keeps the current ring.
    pub fn refresh(&self) -> Result<(), String> {
        let addrs = resolve(&self.config.members)?;
        let mut state = self.state();
        let next = build_state(&addrs, Some(&state))?;
        if next.addrs.len() != state.addrs.len()
            || next
                .addrs
                .keys()
                .any(|name| !state.addrs.contains_key(name))
        {
            tracing::info!(
                members = next.addrs.len(),
                "origin cluster membership changed"
            );
        }
        *state = next;
        Ok(())
    }

    /// Asks every member's health endpoint once, concurrently; returns the members that did
    /// not answer 200, with why.
    pub async fn check_all(&self, client: &HttpClient) -> Vec<(SocketAddr, String)> {
        let members = self.members();
        let checks = members.iter().map(|&addr| async move {
            let outcome = match client
                .request(
                    Method::GET,
                    addr,
                    HEALTH_PATH,
                    HeaderMap::new(),
                    ClientBody::empty(),
                )
                .await
            {
                Ok(response) if response.status() == StatusCode::OK => Ok(()),
                Ok(response) => Err(format!("answered {}", response.status())),
                Err(error) => Err(error.to_string()),
            };
            (addr, outcome)
        });
        let mut failed = Vec::new();
        for (addr, outcome) in futures_util::future::join_all(checks).await {
            self.record_check(addr, outcome.is_ok());
            if let Err(why) = outcome {
                failed.push((addr, why));
            }
        }
        failed
    }

    /// Starts the health checks and DNS refreshes on the current compio runtime; they run
    /// until the runtime ends.
    pub fn spawn_health_checks(&self, client: HttpClient) {
        let cluster = self.clone();
        compio::runtime::spawn(async move {
            let mut since_refresh = Duration::ZERO;
            loop {
                compio::time::sleep(cluster.config.health_interval).await;
                since_refresh += cluster.config.health_interval;
                if since_refresh >= cluster.config.refresh_interval {
                    since_refresh = Duration::ZERO;
                    let refreshing = cluster.clone();
                    match compio::runtime::spawn_blocking(move || refreshing.refresh()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(%error, "origin cluster refresh failed"),
                        Err(_) => tracing::warn!("origin cluster refresh panicked"),
                    }
                }
                cluster.check_all(&client).await;
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::Sha256([n; 32])
    }

    fn cluster(n: u16, replicas: usize) -> OriginCluster {
        let members = (0..n).map(|i| format!("127.0.0.1:{}", 7200 + i)).collect();
        let mut config = ClusterConfig::new(members);
        config.replicas = replicas;
        OriginCluster::resolve(config).expect("cluster")
    }

    #[test]
    fn owners_are_replicas_distinct_members() {
        let c = cluster(5, 3);
        for n in 0..50 {
            let owners = c.owners(&digest(n));
            assert_eq!(owners.len(), 3);
            let mut unique = owners.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 3);
            assert_eq!(c.read_order(&digest(n))[..3], owners[..]);
        }
    }

    #[test]
    fn an_unhealthy_owner_is_replaced_and_gets_its_blobs_back() {
        let c = cluster(4, 2);
        let d = digest(7);
        let before = c.owners(&d);
        let down = before[0];
        assert!(!c.record_check(down, false), "one failure is not enough");
        assert!(c.record_check(down, false));
        let during = c.owners(&d);
        assert_eq!(during.len(), 2);
        assert!(!during.contains(&down));
        assert!(during.contains(&before[1]));
        assert!(c.is_home_owner(down, &d), "still its home");
        assert_eq!(*c.read_order(&d).last().expect("order"), down);
        assert!(c.record_check(down, true));
        assert_eq!(c.owners(&d), before);
    }

    #[test]
    fn unresolvable_and_empty_configs_are_refused_by_name() {
        let error =
            OriginCluster::resolve(ClusterConfig::new(vec!["no-such-host.invalid:7200".into()]))
                .expect_err("refused");
        assert!(error.contains("no-such-host.invalid:7200"), "{error}");
        let error = OriginCluster::resolve(ClusterConfig::new(Vec::new())).expect_err("refused");
        assert!(error.contains("at least one member"), "{error}");
        let mut config = ClusterConfig::new(vec!["127.0.0.1:1".into()]);
        config.replicas = 0;
        assert!(OriginCluster::resolve(config).is_err());
    }

    #[test]
    fn a_name_stands_for_each_address_it_resolves_to() {
        let c = OriginCluster::resolve(ClusterConfig::new(vec![
            "localhost:7200".into(),
            "127.0.0.1:7200".into(),
        ]))
        .expect("cluster");
        assert!(
            c.members()
                .contains(&"127.0.0.1:7200".parse().expect("addr"))
        );
        let before = c.members();
        c.refresh().expect("refresh");
        assert_eq!(c.members(), before);
    }
}
