//! Rendezvous (highest random weight) hashing: which origins hold a blob, which tracker serves
//! its swarm, and in what order to fail over.
//!
//! Every member gets a pseudo-random score for every key; the owners of a key are the healthy
//! members with the highest scores, best first. Because each (member, key) score is independent
//! of the other members, adding a member only takes keys for which it now ranks in the top
//! `replicas`, and removing (or marking unhealthy) a member only moves the keys it owned: every
//! other member keeps its relative order. A member that comes back gets exactly its old keys.
//!
//! # Score construction (stable: changing it moves data between origins)
//!
//! ```text
//! member_hash = xxh3_64(member name as UTF-8 bytes)              (seed 0)
//! key_hash    = xxh3_64(key bytes)                               (seed 0)
//! score       = xxh3_64(member_hash.to_le_bytes() ‖ key_hash.to_le_bytes())   (16 bytes, seed 0)
//! ```
//!
//! Members are ranked by `score` descending; equal scores (a 2⁻⁶⁴ event) are ordered by name
//! ascending, so the ranking is a total order that depends only on the names and the key —
//! not on the order members were listed in, the platform, or `std`'s randomly keyed hashers.
//! The test `score_construction_is_pinned` fixes a few values so that an accidental change (of
//! this code or of the xxh3 implementation) fails loudly.
//!
//! xxh3 is not collision-resistant; that is acceptable here because keys are digests already
//! chosen by SHA-256 and member names come from the operator's configuration.

use xxhash_rust::xxh3::xxh3_64;

/// Most members a ring may have. Rings are for origin clusters and tracker groups (tens of
/// members); each lookup scores every member, so the bound also bounds a lookup's work.
pub const RING_MEMBERS_MAX: usize = 1024;

/// Longest member name accepted (a `host:port`, a DNS name is at most 253 bytes).
pub const MEMBER_NAME_LEN_MAX: usize = 300;

/// Error messages quote at most this many bytes of a member name.
const ERROR_QUOTE_LEN_MAX: usize = 64;

/// Why a list of member names does not form a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("hash ring member names must not be empty")]
    EmptyName,
    #[error("hash ring member {0:?} is listed more than once")]
    DuplicateMember(String),
    #[error("hash ring member name {name:?}… is {len} bytes long; the maximum is {max}")]
    NameTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("hash ring has more than {max} members")]
    TooManyMembers { max: usize },
}

#[derive(Clone, Debug)]
struct Member {
    /// What the operator calls it, e.g. `origin-1:7000`; also what `owners` returns.
    name: String,
    /// `xxh3_64(name)`, computed once: the member's half of every score.
    name_hash: u64,
    /// Unhealthy members are skipped by [`HashRing::owners`] but keep their place, so that
    /// marking them healthy again restores the previous placement exactly.
    healthy: bool,
}

/// A set of named members placed by rendezvous hashing. See the module documentation for the
/// exact scoring.
#[derive(Clone, Debug, Default)]
pub struct HashRing {
    /// In the order given to [`HashRing::new`]; the order does not affect placement.
    members: Vec<Member>,
}

impl HashRing {
    /// Builds a ring in which every member starts healthy. An empty ring is allowed (it owns
    /// nothing). Names must be non-empty, unique, at most [`MEMBER_NAME_LEN_MAX`] bytes, and
    /// there may be at most [`RING_MEMBERS_MAX`] of them.
    pub fn new(names: impl IntoIterator<Item = String>) -> Result<HashRing, RingError> {
        let mut members: Vec<Member> = Vec::new();
        for name in names {
            if members.len() == RING_MEMBERS_MAX {
                return Err(RingError::TooManyMembers {
                    max: RING_MEMBERS_MAX,
                });
            }
            if name.is_empty() {
                return Err(RingError::EmptyName);
            }
            if name.len() > MEMBER_NAME_LEN_MAX {
                return Err(RingError::NameTooLong {
                    name: quote_prefix(&name),
                    len: name.len(),
                    max: MEMBER_NAME_LEN_MAX,
                });
            }
            if members.iter().any(|m| m.name == name) {
                return Err(RingError::DuplicateMember(name));
            }
            members.push(Member {
                name_hash: xxh3_64(name.as_bytes()),
                name,
                healthy: true,
            });
        }
        Ok(HashRing { members })
    }

    /// Marks a member healthy or not. Returns `false` (and changes nothing) if no member has
    /// that name.
    pub fn set_healthy(&mut self, name: &str, healthy: bool) -> bool {
        match self.members.iter_mut().find(|m| m.name == name) {
            Some(member) => {
                member.healthy = healthy;
                true
            }
            None => false,
        }
    }

    /// Whether a member is healthy; `None` if no member has that name.
    pub fn is_healthy(&self, name: &str) -> Option<bool> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.healthy)
    }

    /// Member names, in the order given to [`HashRing::new`].
    pub fn members(&self) -> impl ExactSizeIterator<Item = &str> {
        self.members.iter().map(|m| m.name.as_str())
    }

    /// Number of members, healthy or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of healthy members.
    pub fn n_healthy(&self) -> usize {
        self.members.iter().filter(|m| m.healthy).count()
    }

    /// The `replicas` healthy members that score highest for `key`, best first: the first is
    /// the primary, the rest are the failover order. Returns fewer if fewer are healthy.
    pub fn owners(&self, key: &[u8], replicas: usize) -> Vec<&str> {
        self.ranked(key, replicas, true)
    }

    /// Like [`HashRing::owners`] but ignoring health: where the key lives when every member is
    /// up (e.g. to know which unhealthy owner a repair should eventually write back to).
    pub fn owners_all_members(&self, key: &[u8], replicas: usize) -> Vec<&str> {
        self.ranked(key, replicas, false)
    }

    /// [`HashRing::owners`] keyed by a digest's raw hash bytes.
    pub fn owners_of_digest(&self, digest: &crate::Digest, replicas: usize) -> Vec<&str> {
        self.owners(digest.as_bytes(), replicas)
    }

    fn ranked(&self, key: &[u8], replicas: usize, healthy_only: bool) -> Vec<&str> {
        if replicas == 0 {
            return Vec::new();
        }
        let key_hash = xxh3_64(key);
        let mut scored: Vec<(u64, &str)> = self
            .members
            .iter()
            .filter(|m| m.healthy || !healthy_only)
            .map(|m| (score(m.name_hash, key_hash), m.name.as_str()))
            .collect();
        let by_rank = |a: &(u64, &str), b: &(u64, &str)| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1));
        if replicas < scored.len() {
            // Only the top `replicas` need ordering.
            scored.select_nth_unstable_by(replicas - 1, by_rank);
            scored.truncate(replicas);
        }
        scored.sort_unstable_by(by_rank);
        debug_assert!(scored.len() <= replicas);
        scored.into_iter().map(|(_, name)| name).collect()
    }
}

/// One member's score for one key; see the module documentation.
fn score(member_hash: u64, key_hash: u64) -> u64 {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&member_hash.to_le_bytes());
    input[8..].copy_from_slice(&key_hash.to_le_bytes());
    xxh3_64(&input)
}

fn quote_prefix(name: &str) -> String {
    let mut end = ERROR_QUOTE_LEN_MAX.min(name.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(names: &[&str]) -> HashRing {
        HashRing::new(names.iter().map(|n| n.to_string())).unwrap()
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("origin-{i}:7000")).collect()
    }

    fn key(i: u64) -> [u8; 8] {
        i.to_le_bytes()
    }

    const N_KEYS: u64 = 10_000;

    #[test]
    fn new_rejects_bad_member_lists() {
        fn check(names: Vec<String>, expected: Result<usize, &str>) {
            match (HashRing::new(names.clone()), expected) {
                (Ok(r), Ok(len)) => assert_eq!(r.len(), len, "{names:?}"),
                (Err(e), Err(fragment)) => {
                    let message = e.to_string();
                    assert!(message.contains(fragment), "{names:?}: {message}");
                    assert!(message.len() < 200, "{message}");
                }
                (got, want) => panic!("{names:?}: got {got:?}, want {want:?}"),
            }
        }
        check(vec![], Ok(0));
        check(names(3), Ok(3));
        check(
            vec!["a".into(), "b".into(), "a".into()],
            Err("\"a\" is listed more"),
        );
        check(vec!["a".into(), String::new()], Err("must not be empty"));
        check(vec!["x".repeat(MEMBER_NAME_LEN_MAX)], Ok(1));
        check(
            vec!["é".repeat(MEMBER_NAME_LEN_MAX)],
            Err("the maximum is 300"),
        );
        check(names(RING_MEMBERS_MAX), Ok(RING_MEMBERS_MAX));
        check(names(RING_MEMBERS_MAX + 1), Err("more than 1024 members"));
    }

    #[test]
    fn score_construction_is_pinned() {
        // If this fails, placement changed: every deployed blob would move between origins.
        let r = ring(&[
            "origin-1:7000",
            "origin-2:7000",
            "origin-3:7000",
            "origin-4:7000",
        ]);
        let expected: [(&[u8], [&str; 4]); 3] = [
            (
                b"",
                [
                    "origin-2:7000",
                    "origin-1:7000",
                    "origin-4:7000",
                    "origin-3:7000",
                ],
            ),
            (
                b"blob",
                [
                    "origin-1:7000",
                    "origin-3:7000",
                    "origin-4:7000",
                    "origin-2:7000",
                ],
            ),
            (
                &[0xab; 32],
                [
                    "origin-1:7000",
                    "origin-2:7000",
                    "origin-4:7000",
                    "origin-3:7000",
                ],
            ),
        ];
        for (key, owners) in expected {
            assert_eq!(r.owners(key, 4), owners, "key {key:?}");
        }
        assert_eq!(score(0, 0), 0xd0a6_6a65_c752_8968);
        assert_eq!(
            score(xxh3_64(b"origin-1:7000"), xxh3_64(b"blob")),
            0xdc7a_dff4_0003_a128
        );
    }

    #[test]
    fn placement_ignores_listing_order_and_is_repeatable() {
        let forward = HashRing::new(names(7)).unwrap();
        let backward = HashRing::new(names(7).into_iter().rev()).unwrap();
        for i in 0..1_000 {
            let owners = forward.owners(&key(i), 3);
            assert_eq!(owners.len(), 3);
            assert_eq!(owners, backward.owners(&key(i), 3));
            assert_eq!(owners, forward.owners(&key(i), 3));
            // A smaller replica count is a prefix of a larger one.
            assert_eq!(forward.owners(&key(i), 7)[..3], owners[..]);
        }
    }

    #[test]
    fn primaries_are_spread_evenly() {
        let r = HashRing::new(names(5)).unwrap();
        let mut primary_counts = [0u64; 5];
        let mut replica_counts = [0u64; 5];
        for i in 0..N_KEYS {
            let owners = r.owners(&key(i), 3);
            let index = |name: &str| r.members().position(|m| m == name).unwrap();
            primary_counts[index(owners[0])] += 1;
            for owner in owners {
                replica_counts[index(owner)] += 1;
            }
        }
        let fair_primary = N_KEYS / 5;
        let fair_replica = N_KEYS * 3 / 5;
        for (p, r) in primary_counts.iter().zip(&replica_counts) {
            assert!(
                p.abs_diff(fair_primary) <= fair_primary / 5,
                "{primary_counts:?}"
            );
            assert!(
                r.abs_diff(fair_replica) <= fair_replica / 5,
                "{replica_counts:?}"
            );
        }
    }

    /// `list` with `name` inserted at `position` (if it falls within `replicas`), cut to
    /// `replicas`.
    fn with_inserted<'a>(
        list: &[&'a str],
        name: &'a str,
        position: usize,
        replicas: usize,
    ) -> Vec<&'a str> {
        let mut out = list.to_vec();
        if position <= out.len() {
            out.insert(position, name);
        }
        out.truncate(replicas);
        out
    }

    #[test]
    fn adding_a_member_only_inserts_it() {
        const REPLICAS: usize = 3;
        let before = HashRing::new(names(5)).unwrap();
        let after = HashRing::new(names(6)).unwrap();
        let added = "origin-6:7000";
        let mut n_moved = 0u64;
        for i in 0..N_KEYS {
            let old = before.owners(&key(i), REPLICAS);
            let new = after.owners(&key(i), REPLICAS);
            let rank = after
                .owners(&key(i), 6)
                .iter()
                .position(|m| *m == added)
                .unwrap();
            assert_eq!(new, with_inserted(&old, added, rank, REPLICAS), "key {i}");
            if new != old {
                assert!(new.contains(&added), "key {i}: {old:?} -> {new:?}");
                n_moved += 1;
            }
        }
        // The newcomer owns about REPLICAS/6 of the keys.
        let fair = N_KEYS * REPLICAS as u64 / 6;
        assert!(n_moved.abs_diff(fair) <= fair / 5, "{n_moved}");
    }

    #[test]
    fn removing_a_member_only_removes_it() {
        const REPLICAS: usize = 3;
        let removed = "origin-3:7000";
        let before = HashRing::new(names(5)).unwrap();
        let after = HashRing::new(names(5).into_iter().filter(|n| n != removed)).unwrap();
        for i in 0..N_KEYS {
            let old = before.owners(&key(i), REPLICAS + 1);
            let mut expected: Vec<&str> = old.iter().copied().filter(|m| *m != removed).collect();
            expected.truncate(REPLICAS);
            assert_eq!(after.owners(&key(i), REPLICAS), expected, "key {i}");
            if !old[..REPLICAS].contains(&removed) {
                assert_eq!(expected, old[..REPLICAS], "key {i}");
            }
        }
    }

    #[test]
    fn unhealthy_members_are_skipped_and_restored_exactly() {
        const REPLICAS: usize = 3;
        let sick = "origin-2:7000";
        let mut r = HashRing::new(names(5)).unwrap();
        let without = HashRing::new(names(5).into_iter().filter(|n| n != sick)).unwrap();
        let placement = |r: &HashRing| -> Vec<Vec<String>> {
            (0..N_KEYS)
                .map(|i| {
                    r.owners(&key(i), REPLICAS)
                        .into_iter()
                        .map(String::from)
                        .collect()
                })
                .collect()
        };
        let healthy_placement = placement(&r);

        assert!(r.set_healthy(sick, false));
        assert_eq!(
            (r.is_healthy(sick), r.n_healthy(), r.len()),
            (Some(false), 4, 5)
        );
        assert_eq!(placement(&r), placement(&without));
        for i in 0..100 {
            assert_eq!(
                r.owners_all_members(&key(i), REPLICAS),
                healthy_placement[i as usize]
            );
        }

        assert!(r.set_healthy(sick, true));
        assert_eq!(placement(&r), healthy_placement);

        assert!(!r.set_healthy("origin-9:7000", false));
        assert_eq!(r.is_healthy("origin-9:7000"), None);
        assert_eq!(placement(&r), healthy_placement);
    }

    #[test]
    fn replica_count_edge_cases() {
        // (members, unhealthy, replicas) -> number of owners
        let cases: &[(usize, &[&str], usize, usize)] = &[
            (0, &[], 3, 0),
            (3, &[], 0, 0),
            (3, &[], 3, 3),
            (3, &[], 10, 3),
            (5, &["origin-1:7000", "origin-4:7000"], 10, 3),
            (5, &["origin-1:7000", "origin-4:7000"], 2, 2),
            (2, &["origin-1:7000", "origin-2:7000"], 3, 0),
        ];
        for &(n_members, unhealthy, replicas, n_owners) in cases {
            let mut r = HashRing::new(names(n_members)).unwrap();
            for name in unhealthy {
                assert!(r.set_healthy(name, false));
            }
            for i in 0..50 {
                let owners = r.owners(&key(i), replicas);
                assert_eq!(
                    owners.len(),
                    n_owners,
                    "{n_members} {unhealthy:?} {replicas}"
                );
                assert!(owners.iter().all(|o| !unhealthy.contains(o)));
                let all = r.owners_all_members(&key(i), replicas);
                assert_eq!(all.len(), replicas.min(n_members));
                // Healthy owners keep the relative order they have among all members.
                let filtered: Vec<&str> = r
                    .owners_all_members(&key(i), n_members)
                    .into_iter()
                    .filter(|o| !unhealthy.contains(o))
                    .take(replicas)
                    .collect();
                assert_eq!(owners, filtered);
            }
        }
    }

    #[test]
    fn digest_keys_use_the_hash_bytes() {
        let r = HashRing::new(names(5)).unwrap();
        let digest = crate::Digest::sha256_of(b"layer");
        assert_eq!(
            r.owners_of_digest(&digest, 3),
            r.owners(digest.as_bytes(), 3)
        );
        let members: Vec<&str> = r.members().collect();
        assert_eq!(members.len(), 5);
        assert_eq!(members[0], "origin-1:7000");
    }
}
