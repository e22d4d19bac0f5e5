//! The sharded tracker: handouts over many swarms spread across shards, metainfo across
//! shards, and metainfo fetched from origins (real HTTP servers on loopback playing honest,
//! lying and absent origins).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use http::StatusCode;
use hyper::body::Incoming;
use shoal_proto::ring::HashRing;

use super::*;
use crate::http::{Handler, HttpConfig, LocalBody};

fn info_hash_of(swarm: u32) -> InfoHash {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&swarm.to_be_bytes());
    InfoHash(bytes)
}

/// Peer `k` of swarm `swarm`: id `swarm * 10 + k`, port `10_000 + swarm * 4 + k`.
fn swarm_announce(swarm: u32, k: u32) -> Request {
    Request::Announce(Announce {
        digest: Digest::sha256_of(&swarm.to_be_bytes()),
        info_hash: info_hash_of(swarm),
        peer_id: PeerId::from_u64(u64::from(swarm * 10 + k)),
        port: u16::try_from(10_000 + swarm * 4 + k).unwrap(),
        is_origin: k == 0,
        is_complete: k == 0,
    })
}

/// Every handed-out peer belongs to `swarm`, at the address it announced; returns their `k`s.
#[track_caller]
fn check_handout(response: Response, swarm: u32) -> Vec<u32> {
    let Response::Announce { peers, .. } = response else {
        panic!("swarm {swarm}: not an announce response: {response:?}");
    };
    let mut ks: Vec<u32> = peers
        .iter()
        .map(|peer| {
            let id =
                u32::try_from(u64::from_be_bytes(peer.id.0[12..].try_into().unwrap())).unwrap();
            assert_eq!(id / 10, swarm, "swarm {swarm} handed out {peer:?}");
            let k = id % 10;
            assert_eq!(
                peer.addr,
                SocketAddr::from((
                    [127, 0, 0, 1],
                    u16::try_from(10_000 + swarm * 4 + k).unwrap()
                ))
            );
            k
        })
        .collect();
    ks.sort_unstable();
    ks
}

#[test]
fn many_swarms_over_shards_each_handout_is_its_own() {
    const SWARMS: u32 = 300;
    for shards in [2, 3] {
        run(async {
            let addr = start_sharded(TrackerServerConfig {
                shards,
                ..TrackerServerConfig::default()
            });
            // Peers 0 and 1 of every swarm on fresh connections (accepted by whichever
            // shard the kernel picks), peer 2 of every swarm on one connection (most of its
            // requests belong to another shard than the one that accepted it).
            for swarm in 0..SWARMS {
                for k in 0..2 {
                    let mut client = Client::connect(addr).await;
                    let seen = check_handout(client.call(&swarm_announce(swarm, k)).await, swarm);
                    assert_eq!(seen, (0..k).collect::<Vec<_>>(), "swarm {swarm} peer {k}");
                }
            }
            let mut one = Client::connect(addr).await;
            for swarm in 0..SWARMS {
                let seen = check_handout(one.call(&swarm_announce(swarm, 2)).await, swarm);
                assert_eq!(seen, vec![0, 1], "swarm {swarm} peer 2");
            }
            for swarm in 0..SWARMS {
                let seen = check_handout(one.call(&swarm_announce(swarm, 0)).await, swarm);
                assert_eq!(seen, vec![1, 2], "swarm {swarm} peer 0 again");
            }
        });
    }
}

#[test]
fn metainfo_put_on_one_connection_is_got_on_others() {
    run(async {
        let addr = start_sharded(TrackerServerConfig {
            shards: 3,
            ..TrackerServerConfig::default()
        });
        let metainfos: Vec<Metainfo> = (0..60u32)
            .map(|n| metainfo_of(format!("blob {n}").as_bytes()))
            .collect();
        let mut putter = Client::connect(addr).await;
        for metainfo in &metainfos {
            let put = Request::PutMetainfo {
                metainfo: metainfo.encode(),
            };
            assert_eq!(putter.call(&put).await, Response::Ok);
        }
        for metainfo in &metainfos {
            let mut getter = Client::connect(addr).await;
            let get = Request::GetMetainfo {
                digest: metainfo.digest(),
                repository: None,
            };
            assert_eq!(
                getter.call(&get).await,
                Response::Metainfo(metainfo.encode())
            );
        }
    });
}

/// An origin's metainfo endpoint as a test wants it to behave; counts its requests.
struct FakeOrigin {
    /// Path → (status, body); any other path is 404.
    answers: Vec<(String, StatusCode, Vec<u8>)>,
    delay: Duration,
    calls: Rc<Cell<usize>>,
    /// Every request's query string ("" without one).
    queries: Rc<RefCell<Vec<String>>>,
}

impl Handler for FakeOrigin {
    async fn handle(&self, request: http::Request<Incoming>) -> http::Response<LocalBody> {
        self.calls.set(self.calls.get() + 1);
        self.queries
            .borrow_mut()
            .push(request.uri().query().unwrap_or("").to_owned());
        if !self.delay.is_zero() {
            compio::time::sleep(self.delay).await;
        }
        let path = request.uri().path();
        let (status, body) = self
            .answers
            .iter()
            .find(|(p, _, _)| p == path)
            .map_or((StatusCode::NOT_FOUND, Vec::new()), |(_, status, body)| {
                (*status, body.clone())
            });
        let mut response = http::Response::new(LocalBody::full(body));
        *response.status_mut() = status;
        response
    }
}

/// Starts an origin that answers `body` (200) for `digest`'s metainfo path; returns its
/// address and request counter.
async fn start_origin(
    digest: &Digest,
    body: Vec<u8>,
    delay: Duration,
) -> (SocketAddr, Rc<Cell<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Rc::new(Cell::new(0));
    let origin = FakeOrigin {
        answers: vec![(format!("/internal/metainfo/{digest}"), StatusCode::OK, body)],
        delay,
        calls: Rc::clone(&calls),
        queries: Rc::default(),
    };
    compio::runtime::spawn(async move {
        crate::http::serve(listener, Rc::new(origin), HttpConfig::default())
            .await
            .unwrap();
    })
    .detach();
    (addr, calls)
}

fn with_origins(origins: Vec<SocketAddr>) -> TrackerServerConfig {
    TrackerServerConfig {
        shards: 2,
        origins,
        ..TrackerServerConfig::default()
    }
}

async fn get(addr: SocketAddr, digest: &Digest) -> Response {
    Client::connect(addr)
        .await
        .call(&Request::GetMetainfo {
            digest: *digest,
            repository: None,
        })
        .await
}

#[test]
fn a_metainfo_never_put_comes_from_an_origin_and_is_cached() {
    run(async {
        let metainfo = metainfo_of(b"pushed to an origin only");
        let digest = metainfo.digest();
        let (origin, calls) = start_origin(&digest, metainfo.encode(), Duration::ZERO).await;
        let tracker = start_sharded(with_origins(vec![origin]));

        assert_eq!(
            get(tracker, &digest).await,
            Response::Metainfo(metainfo.encode())
        );
        assert_eq!(calls.get(), 1);
        // Cached: metainfo is immutable.
        assert_eq!(
            get(tracker, &digest).await,
            Response::Metainfo(metainfo.encode())
        );
        assert_eq!(calls.get(), 1);
        // What no origin has is not found (every origin said 404), and not remembered.
        let unknown = Digest::sha256_of(b"nowhere");
        assert_eq!(get(tracker, &unknown).await, Response::NotFound);
        assert_eq!(get(tracker, &unknown).await, Response::NotFound);
        assert_eq!(calls.get(), 3);
    });
}

#[test]
fn without_origins_a_miss_is_not_found() {
    run(async {
        let tracker = start_sharded(with_origins(Vec::new()));
        assert_eq!(
            get(tracker, &Digest::sha256_of(b"x")).await,
            Response::NotFound
        );
    });
}

#[test]
fn concurrent_misses_for_one_digest_make_one_origin_fetch() {
    run(async {
        let metainfo = metainfo_of(b"asked by many at once");
        let digest = metainfo.digest();
        let (origin, calls) =
            start_origin(&digest, metainfo.encode(), Duration::from_millis(300)).await;
        let tracker = start_sharded(with_origins(vec![origin]));
        let askers: Vec<_> = (0..16)
            .map(|_| compio::runtime::spawn(async move { get(tracker, &digest).await }))
            .collect();
        for asker in askers {
            assert_eq!(asker.await.unwrap(), Response::Metainfo(metainfo.encode()));
        }
        assert_eq!(calls.get(), 1, "one fetch for every concurrent miss");
    });
}

async fn get_for(addr: SocketAddr, digest: &Digest, repository: &str) -> Response {
    Client::connect(addr)
        .await
        .call(&Request::GetMetainfo {
            digest: *digest,
            repository: Some(tracker_wire::Repository::new(repository).unwrap()),
        })
        .await
}

#[test]
fn the_repository_that_asks_reaches_the_origin() {
    run(async {
        let metainfo = metainfo_of(b"held by one repository's upstream");
        let digest = metainfo.digest();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = listener.local_addr().unwrap();
        let (calls, queries) = (Rc::new(Cell::new(0)), Rc::new(RefCell::new(Vec::new())));
        let fake = FakeOrigin {
            answers: vec![(
                format!("/internal/metainfo/{digest}"),
                StatusCode::OK,
                metainfo.encode(),
            )],
            delay: Duration::from_millis(300),
            calls: Rc::clone(&calls),
            queries: Rc::clone(&queries),
        };
        compio::runtime::spawn(async move {
            crate::http::serve(listener, Rc::new(fake), HttpConfig::default())
                .await
                .unwrap();
        })
        .detach();
        let tracker = start_sharded(with_origins(vec![origin]));
        // Concurrent misses for one repository share a fetch; another repository's is its
        // own (its backend may answer otherwise).
        let askers: Vec<_> = ["hub/app", "hub/app", "hub/app", "team/x"]
            .into_iter()
            .map(|repo| {
                compio::runtime::spawn(async move { get_for(tracker, &digest, repo).await })
            })
            .collect();
        for asker in askers {
            assert_eq!(asker.await.unwrap(), Response::Metainfo(metainfo.encode()));
        }
        assert_eq!(calls.get(), 2);
        let mut asked = queries.borrow().clone();
        asked.sort();
        assert_eq!(asked, ["repo=hub%2Fapp", "repo=team%2Fx"]);
        // Once cached, whoever asks is answered from the cache.
        assert_eq!(
            get_for(tracker, &digest, "other/repo").await,
            Response::Metainfo(metainfo.encode())
        );
        assert_eq!(calls.get(), 2);
    });
}

/// Starts an origin that answers `digest`'s metainfo path with `status` and an OCI error
/// body carrying `message`; returns its address.
async fn start_failing_origin(digest: &Digest, status: StatusCode, message: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let error = crate::http::OciError::new(crate::http::ErrorCode::Unavailable, message);
    let fake = FakeOrigin {
        answers: vec![(
            format!("/internal/metainfo/{digest}"),
            status,
            error.to_json().into_bytes(),
        )],
        delay: Duration::ZERO,
        calls: Rc::default(),
        queries: Rc::default(),
    };
    compio::runtime::spawn(async move {
        crate::http::serve(listener, Rc::new(fake), HttpConfig::default())
            .await
            .unwrap();
    })
    .detach();
    addr
}

#[test]
fn an_origins_error_message_reaches_the_peer() {
    run(async {
        let digest = Digest::sha256_of(b"an upstream that lies");
        let origin = start_failing_origin(
            &digest,
            StatusCode::SERVICE_UNAVAILABLE,
            "the storage backend failed: the upstream's bytes do not match the digest",
        )
        .await;
        let tracker = start_sharded(with_origins(vec![origin]));
        let response = get_for(tracker, &digest, "hub/app").await;
        expect_error(
            response,
            ErrorCode::Internal,
            "answered 503: the storage backend failed: the upstream's bytes do not match",
        );
    });
}

#[test]
fn an_origin_that_cannot_tell_keeps_a_miss_from_being_not_found() {
    run(async {
        let digest = Digest::sha256_of(b"only in a bucket that is down");
        // One origin's storage backend is down (503); the other does not hold the blob (404).
        let mut origins = Vec::new();
        for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::NOT_FOUND] {
            let message = "the storage backend is unavailable (whether it holds it is unknown)";
            origins.push(start_failing_origin(&digest, status, message).await);
        }
        // The peer hears an error it retries, not that the blob does not exist.
        let tracker = start_sharded(with_origins(origins.clone()));
        expect_error(
            get(tracker, &digest).await,
            ErrorCode::Internal,
            "answered 503: the storage backend is unavailable",
        );
        // Only 404s (the origin that could not tell is gone): not found.
        let tracker = start_sharded(with_origins(vec![origins[1]]));
        assert_eq!(get(tracker, &digest).await, Response::NotFound);
    });
}

/// A digest whose ring order over `origins` puts `last` last.
fn digest_with_last(origins: &[SocketAddr], last: SocketAddr) -> Metainfo {
    let ring = HashRing::new(origins.iter().map(SocketAddr::to_string)).unwrap();
    (0u32..)
        .map(|n| metainfo_of(format!("ordered blob {n}").as_bytes()))
        .find(|metainfo| {
            let order = ring.owners_all_members(metainfo.digest().as_bytes(), origins.len());
            order.last() == Some(&last.to_string().as_str())
        })
        .unwrap()
}

#[test]
fn lying_origins_are_not_believed_and_the_next_is_tried() {
    run(async {
        // Bound to their ports first, so that the digest can be chosen by their order.
        let listeners = [
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ];
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let (garbage, liar, honest) = (addrs[0], addrs[1], addrs[2]);
        let metainfo = digest_with_last(&addrs, honest);
        let digest = metainfo.digest();
        let path = format!("/internal/metainfo/{digest}");
        let other = metainfo_of(b"another blob altogether");
        let bodies = [
            b"this is not a metainfo".to_vec(),
            other.encode(),
            metainfo.encode(),
        ];
        let mut counters = Vec::new();
        for (listener, body) in listeners.into_iter().zip(bodies) {
            let calls = Rc::new(Cell::new(0));
            counters.push(Rc::clone(&calls));
            let origin = FakeOrigin {
                answers: vec![(path.clone(), StatusCode::OK, body)],
                delay: Duration::ZERO,
                calls,
                queries: Rc::default(),
            };
            compio::runtime::spawn(async move {
                crate::http::serve(listener, Rc::new(origin), HttpConfig::default())
                    .await
                    .unwrap();
            })
            .detach();
        }

        // Every lying origin fails: a clear error naming each, and nothing cached.
        let liars_only = start_sharded(with_origins(vec![garbage, liar]));
        for round in 1..=2 {
            let response = get(liars_only, &digest).await;
            let Response::Error { code, message } = response else {
                panic!("lying origins believed: {response:?}");
            };
            assert_eq!(code, ErrorCode::Internal);
            assert!(
                message.contains(&format!("{garbage}: undecodable metainfo")),
                "{message}"
            );
            assert!(
                message.contains(&format!("{liar}: metainfo of another blob")),
                "{message}"
            );
            assert_eq!(counters[0].get(), round, "asked again: nothing was cached");
            assert_eq!(counters[1].get(), round);
        }

        // With an honest origin last in the ring order, both liars are tried first.
        let tracker = start_sharded(with_origins(addrs.clone()));
        assert_eq!(
            get(tracker, &digest).await,
            Response::Metainfo(metainfo.encode())
        );
        assert_eq!(
            counters.iter().map(|c| c.get()).collect::<Vec<_>>(),
            vec![3, 3, 1]
        );

        // An origin that is not there is a failure like any other, named.
        let dead = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let nobody = start_sharded(with_origins(vec![dead]));
        let response = get(nobody, &digest).await;
        expect_error(response, ErrorCode::Internal, &format!("{dead}: connect: "));
    });
}
