//! Which shard owns a request: announces by info hash, metainfo by digest. Pure functions of
//! the key and the shard count, the same on every shard, so any shard can route a request it
//! accepted.

use std::net::IpAddr;

use shoal_proto::metainfo::Metainfo;
use shoal_proto::tracker_wire::{Announce, ErrorCode, Repository, Request, Response};
use shoal_proto::{Digest, InfoHash};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the placement hash: keeps shard placement independent of the hash ring that
/// picks the tracker (which hashes the digest with xxh3 too).
const SHARD_HASH_SEED: u64 = 0x7472_6163_6b65_7273;

/// The shard (of `n_shards`) that holds the swarm of `info_hash`.
pub fn shard_of_info_hash(info_hash: &InfoHash, n_shards: usize) -> usize {
    shard_of(&info_hash.0, n_shards)
}

/// The shard (of `n_shards`) that holds, and fetches, the metainfo of `digest`.
pub fn shard_of_digest(digest: &Digest, n_shards: usize) -> usize {
    shard_of(digest.as_bytes(), n_shards)
}

fn shard_of(key: &[u8], n_shards: usize) -> usize {
    assert!(n_shards > 0, "a tracker has at least one shard");
    // The remainder is below n_shards, a usize.
    (xxh3_64_with_seed(key, SHARD_HASH_SEED) % n_shards as u64) as usize
}

/// A request checked by the shard that accepted it, ready for its owner.
#[derive(Debug)]
pub(crate) enum Routed {
    /// With the source IP of the connection it came on.
    Announce(Announce, IpAddr),
    /// With the repository that asks, checked against the name grammar.
    Get(Digest, Option<Repository>),
    /// The metainfo decoded (on the accepting shard) to this digest; its encoding.
    Put(Digest, Vec<u8>),
}

impl Routed {
    /// Checks what can be checked without the owner's state: a refusal is the response.
    pub(crate) fn new(request: Request, source_ip: IpAddr) -> Result<Routed, Response> {
        match request {
            Request::Announce(announce) if announce.port == 0 => Err(Response::error(
                ErrorCode::BadRequest,
                "announce port 0 is not dialable",
            )),
            Request::Announce(announce) => Ok(Routed::Announce(announce, source_ip)),
            Request::GetMetainfo { digest, repository } => {
                if let Some(repository) = &repository
                    && let Err(error) = crate::build_index::validate_repository(repository.as_str())
                {
                    return Err(Response::error(
                        ErrorCode::BadRequest,
                        &format!("get-metainfo: {error}"),
                    ));
                }
                Ok(Routed::Get(digest, repository))
            }
            Request::PutMetainfo { metainfo } => match Metainfo::decode(&metainfo) {
                Ok(decoded) => Ok(Routed::Put(decoded.digest(), metainfo)),
                Err(error) => Err(Response::error(
                    ErrorCode::BadRequest,
                    &format!("metainfo does not decode: {error}"),
                )),
            },
        }
    }

    /// The shard that answers it.
    pub(crate) fn owner(&self, n_shards: usize) -> usize {
        match self {
            Routed::Announce(announce, _) => shard_of_info_hash(&announce.info_hash, n_shards),
            Routed::Get(digest, _) | Routed::Put(digest, _) => shard_of_digest(digest, n_shards),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_hash(n: u32) -> InfoHash {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        InfoHash(bytes)
    }

    #[test]
    fn one_shard_owns_everything() {
        for n in 0..100 {
            assert_eq!(shard_of_info_hash(&info_hash(n), 1), 0);
            assert_eq!(shard_of_digest(&Digest::sha256_of(&n.to_le_bytes()), 1), 0);
        }
    }

    #[test]
    fn placement_is_stable_and_in_range() {
        for n_shards in [2, 3, 8, 64] {
            for n in 0..200 {
                let shard = shard_of_info_hash(&info_hash(n), n_shards);
                assert!(shard < n_shards);
                assert_eq!(shard, shard_of_info_hash(&info_hash(n), n_shards));
                let digest = Digest::sha256_of(&n.to_le_bytes());
                assert!(shard_of_digest(&digest, n_shards) < n_shards);
            }
        }
    }

    #[test]
    fn keys_spread_over_every_shard() {
        for n_shards in [2, 4, 8] {
            let mut counts = vec![0usize; n_shards];
            for n in 0..8000 {
                counts[shard_of_info_hash(&info_hash(n), n_shards)] += 1;
            }
            let even = 8000 / n_shards;
            for (shard, count) in counts.iter().enumerate() {
                assert!(
                    *count > even * 8 / 10 && *count < even * 12 / 10,
                    "{n_shards} shards: shard {shard} got {count} of 8000"
                );
            }
        }
    }

    #[test]
    fn requests_route_by_their_key() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let digest = Digest::sha256_of(b"blob");
        let announce = Announce {
            digest,
            info_hash: info_hash(7),
            peer_id: shoal_proto::PeerId::from_u64(1),
            port: 9,
            is_origin: false,
            is_complete: false,
        };
        let routed = Routed::new(Request::Announce(announce.clone()), ip).unwrap();
        assert_eq!(routed.owner(8), shard_of_info_hash(&info_hash(7), 8));
        let routed = Routed::new(
            Request::GetMetainfo {
                digest,
                repository: None,
            },
            ip,
        )
        .unwrap();
        assert_eq!(routed.owner(8), shard_of_digest(&digest, 8));
        let repository = Some(Repository::new("hub/app").unwrap());
        let routed = Routed::new(
            Request::GetMetainfo {
                digest,
                repository: repository.clone(),
            },
            ip,
        )
        .unwrap();
        assert!(matches!(&routed, Routed::Get(d, r) if *d == digest && *r == repository));
        assert_eq!(routed.owner(8), shard_of_digest(&digest, 8));

        let blob = b"some blob bytes";
        let metainfo = Metainfo::build(
            Digest::sha256_of(blob),
            blob,
            &shoal_proto::metainfo::MetainfoParams::default(),
        )
        .unwrap();
        let routed = Routed::new(
            Request::PutMetainfo {
                metainfo: metainfo.encode(),
            },
            ip,
        )
        .unwrap();
        assert!(matches!(&routed, Routed::Put(d, _) if *d == metainfo.digest()));
        assert_eq!(routed.owner(8), shard_of_digest(&metainfo.digest(), 8));
    }

    #[test]
    fn refusals_are_answered_where_accepted() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let port_zero = Request::Announce(Announce {
            digest: Digest::sha256_of(b"x"),
            info_hash: info_hash(1),
            peer_id: shoal_proto::PeerId::from_u64(1),
            port: 0,
            is_origin: false,
            is_complete: false,
        });
        assert!(matches!(
            Routed::new(port_zero, ip),
            Err(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
        // In the wire's alphabet, outside the name grammar.
        for name in ["a//b", "-app", "app/", "a..b", "_a"] {
            let refused = Routed::new(
                Request::GetMetainfo {
                    digest: Digest::sha256_of(b"x"),
                    repository: Some(Repository::new(name).unwrap()),
                },
                ip,
            );
            assert!(
                matches!(
                    &refused,
                    Err(Response::Error {
                        code: ErrorCode::BadRequest,
                        message,
                    }) if message.contains("repository name")
                ),
                "{name}: {refused:?}"
            );
        }
        let garbage = Request::PutMetainfo {
            metainfo: vec![1, 2, 3],
        };
        assert!(matches!(
            Routed::new(garbage, ip),
            Err(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
    }
}
