//! Tracker server tests: a real server on 127.0.0.1 inside a compio runtime, driven by raw
//! protocol clients.

use std::future::Future;
use std::net::SocketAddr;

use compio::io::AsyncWrite;
use compio::net::{TcpListener, TcpStream};
use shoal_engine::tracker::{FrameError, FrameReader, write_frame};
use shoal_proto::metainfo::{Metainfo, MetainfoParams};
use shoal_proto::tracker::PeerInfo;
use shoal_proto::tracker_wire::{self, Announce, ErrorCode, Request, Response};
use shoal_proto::{Digest, InfoHash, PeerId};

use super::*;

fn run<F: Future>(body: F) -> F::Output {
    compio::runtime::Runtime::new()
        .expect("compio runtime")
        .block_on(body)
}

/// Starts a server with `config` but two shards (whatever the machine's cores) on an
/// ephemeral loopback port; returns its address. The server (and its other shard's thread)
/// stops when the test's runtime ends.
async fn start(config: TrackerServerConfig) -> SocketAddr {
    start_sharded(TrackerServerConfig {
        shards: 2,
        ..config
    })
}

/// Starts a server with `config` (its shard count) on an ephemeral loopback port.
fn start_sharded(config: TrackerServerConfig) -> SocketAddr {
    let listeners = bind("127.0.0.1:0".parse().unwrap(), config.shards).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    compio::runtime::spawn(async move {
        serve_sharded(listeners, config, 7).await.unwrap();
    })
    .detach();
    addr
}

/// One client connection speaking the tracker protocol.
struct Client {
    stream: TcpStream,
    reader: FrameReader,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            reader: FrameReader::new(),
        }
    }

    async fn send_raw(&mut self, bytes: Vec<u8>) {
        let (result, _) = write_frame(&mut self.stream, bytes).await;
        result.unwrap();
    }

    async fn recv(&mut self) -> Result<Response, FrameError> {
        self.reader
            .next(&mut self.stream, tracker_wire::parse_response)
            .await
    }

    async fn call(&mut self, request: &Request) -> Response {
        let mut frame = Vec::new();
        tracker_wire::encode_request(request, &mut frame);
        self.send_raw(frame).await;
        self.recv().await.unwrap()
    }
}

fn announce(peer: u64, port: u16, is_complete: bool) -> Request {
    Request::Announce(Announce {
        digest: Digest::sha256_of(b"blob"),
        info_hash: InfoHash([9; 32]),
        peer_id: PeerId::from_u64(peer),
        port,
        is_origin: false,
        is_complete,
    })
}

fn metainfo_of(blob: &[u8]) -> Metainfo {
    Metainfo::build(Digest::sha256_of(blob), blob, &MetainfoParams::default()).unwrap()
}

#[track_caller]
fn expect_error(response: Response, code: ErrorCode, fragment: &str) {
    match response {
        Response::Error {
            code: actual,
            message,
        } => {
            assert_eq!(actual, code, "{message}");
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn announced_peers_see_each_other_at_their_source_ip() {
    run(async {
        let addr = start(TrackerServerConfig::default()).await;
        let mut a = Client::connect(addr).await;
        let mut b = Client::connect(addr).await;

        let Response::Announce { peers, interval } = a.call(&announce(1, 7001, false)).await else {
            panic!("not an announce response");
        };
        assert!(peers.is_empty());
        assert!(!interval.is_zero());

        let Response::Announce { peers, .. } = b.call(&announce(2, 7002, true)).await else {
            panic!("not an announce response");
        };
        assert_eq!(
            peers,
            vec![PeerInfo {
                id: PeerId::from_u64(1),
                addr: "127.0.0.1:7001".parse().unwrap(),
                is_origin: false,
                is_complete: false,
            }]
        );

        // A second request on the same connection.
        let Response::Announce { peers, .. } = a.call(&announce(1, 7001, false)).await else {
            panic!("not an announce response");
        };
        assert_eq!(
            peers,
            vec![PeerInfo {
                id: PeerId::from_u64(2),
                addr: "127.0.0.1:7002".parse().unwrap(),
                is_origin: false,
                is_complete: true,
            }]
        );
    });
}

#[test]
fn announce_port_zero_is_refused() {
    run(async {
        let addr = start(TrackerServerConfig::default()).await;
        let mut client = Client::connect(addr).await;
        expect_error(
            client.call(&announce(1, 0, false)).await,
            ErrorCode::BadRequest,
            "port 0",
        );
        // The connection stays usable.
        let response = client.call(&announce(1, 1, false)).await;
        assert!(
            matches!(response, Response::Announce { .. }),
            "{response:?}"
        );
    });
}

#[test]
fn metainfo_put_then_get() {
    run(async {
        let addr = start(TrackerServerConfig::default()).await;
        let metainfo = metainfo_of(b"some blob bytes");
        let digest = metainfo.digest();
        let mut client = Client::connect(addr).await;
        assert_eq!(
            client
                .call(&Request::GetMetainfo {
                    digest,
                    repository: None,
                })
                .await,
            Response::NotFound
        );
        let put = Request::PutMetainfo {
            metainfo: metainfo.encode(),
        };
        assert_eq!(client.call(&put).await, Response::Ok);
        // Another connection sees it.
        let mut other = Client::connect(addr).await;
        assert_eq!(
            other
                .call(&Request::GetMetainfo {
                    digest,
                    repository: None,
                })
                .await,
            Response::Metainfo(metainfo.encode())
        );
        assert_eq!(
            other
                .call(&Request::GetMetainfo {
                    digest: Digest::sha256_of(b"another blob"),
                    repository: None,
                })
                .await,
            Response::NotFound
        );
    });
}

#[test]
fn undecodable_metainfo_is_refused_with_the_reason() {
    run(async {
        let addr = start(TrackerServerConfig::default()).await;
        let mut client = Client::connect(addr).await;
        let put = Request::PutMetainfo {
            metainfo: b"not a metainfo".to_vec(),
        };
        expect_error(
            client.call(&put).await,
            ErrorCode::BadRequest,
            "metainfo does not decode",
        );
        let mut truncated = metainfo_of(b"blob").encode();
        truncated.pop();
        expect_error(
            client
                .call(&Request::PutMetainfo {
                    metainfo: truncated,
                })
                .await,
            ErrorCode::BadRequest,
            "metainfo does not decode",
        );
    });
}

#[test]
fn malformed_frame_gets_an_error_then_close_and_others_are_served() {
    run(async {
        let addr = start(TrackerServerConfig::default()).await;
        let mut bystander = Client::connect(addr).await;

        let mut bad = Client::connect(addr).await;
        bad.send_raw(vec![0, 0, 0, 2, 9, 1]).await; // version 9
        expect_error(
            bad.recv().await.unwrap(),
            ErrorCode::Malformed,
            "unsupported tracker wire version 9",
        );
        assert!(matches!(bad.recv().await, Err(FrameError::Closed)));

        // A response kind where a request belongs.
        let mut wrong_way = Client::connect(addr).await;
        wrong_way.send_raw(vec![0, 0, 0, 2, 1, 0x84]).await;
        expect_error(
            wrong_way.recv().await.unwrap(),
            ErrorCode::Malformed,
            "unknown request kind 0x84",
        );

        // A frame claiming 4 GiB is refused from its first four bytes.
        let mut huge = Client::connect(addr).await;
        huge.send_raw(vec![0xff; 4]).await;
        expect_error(
            huge.recv().await.unwrap(),
            ErrorCode::Malformed,
            "exceeds the maximum",
        );

        let response = bystander.call(&announce(1, 7001, false)).await;
        assert!(
            matches!(response, Response::Announce { .. }),
            "{response:?}"
        );
        let mut fresh = Client::connect(addr).await;
        let response = fresh.call(&announce(2, 7002, false)).await;
        assert!(
            matches!(response, Response::Announce { .. }),
            "{response:?}"
        );
    });
}

#[test]
fn a_connection_closing_mid_frame_does_not_disturb_the_server() {
    run(async {
        let addr = start(TrackerServerConfig::default()).await;
        let mut partial = Client::connect(addr).await;
        let mut frame = Vec::new();
        tracker_wire::encode_request(&announce(1, 1, false), &mut frame);
        frame.truncate(10);
        partial.send_raw(frame).await;
        partial.stream.shutdown().await.unwrap();
        assert!(matches!(partial.recv().await, Err(FrameError::Closed)));
        let mut fresh = Client::connect(addr).await;
        let response = fresh.call(&announce(2, 2, false)).await;
        assert!(
            matches!(response, Response::Announce { .. }),
            "{response:?}"
        );
    });
}

#[test]
fn connections_beyond_the_limit_are_refused_with_a_reason() {
    run(async {
        let config = TrackerServerConfig {
            connections_max: 1,
            ..TrackerServerConfig::default()
        };
        let addr = start(config).await;
        let mut first = Client::connect(addr).await;
        // Served: the server has accepted and counted it.
        let response = first.call(&announce(1, 1, false)).await;
        assert!(
            matches!(response, Response::Announce { .. }),
            "{response:?}"
        );

        let mut second = Client::connect(addr).await;
        expect_error(
            second.recv().await.unwrap(),
            ErrorCode::Full,
            "limit of 1 connections",
        );
        assert!(matches!(second.recv().await, Err(FrameError::Closed)));

        // Once the first closes, its slot frees up (the server notices the close on its own
        // schedule, so retry a bounded number of times).
        drop(first);
        let mut served = false;
        for _ in 0..200 {
            let mut next = Client::connect(addr).await;
            let mut frame = Vec::new();
            tracker_wire::encode_request(&announce(3, 3, false), &mut frame);
            next.send_raw(frame).await;
            if let Ok(Response::Announce { .. }) = next.recv().await {
                served = true;
                break;
            }
            compio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(served, "the freed slot was never reused");
    });
}

#[test]
fn idle_connections_are_closed() {
    run(async {
        let config = TrackerServerConfig {
            request_timeout: Duration::from_millis(50),
            ..TrackerServerConfig::default()
        };
        let addr = start(config).await;
        let mut idle = Client::connect(addr).await;
        assert!(matches!(idle.recv().await, Err(FrameError::Closed)));
    });
}

#[test]
fn bad_configs_are_refused() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = TrackerServerConfig {
            connections_max: 0,
            ..TrackerServerConfig::default()
        };
        let error = serve(listener, config, 1).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("connections_max"), "{error}");
    });
    let config = TrackerServerConfig {
        metainfo_bytes_max: 1,
        ..TrackerServerConfig::default()
    };
    assert!(
        config
            .validate()
            .unwrap_err()
            .contains("metainfo_bytes_max")
    );
}

#[test]
fn bad_sharding_configs_are_refused() {
    for (config, fragment) in [
        (
            TrackerServerConfig {
                shards: 0,
                ..TrackerServerConfig::default()
            },
            "shards must be 1 to 256, not 0",
        ),
        (
            TrackerServerConfig {
                shards: SHARDS_MAX + 1,
                ..TrackerServerConfig::default()
            },
            "not 257",
        ),
        (
            TrackerServerConfig {
                origins: vec!["127.0.0.1:1".parse().unwrap(); 2],
                ..TrackerServerConfig::default()
            },
            "origins lists 127.0.0.1:1 twice",
        ),
    ] {
        let error = config.validate().unwrap_err();
        assert!(error.contains(fragment), "{error}");
    }
    run(async {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let config = TrackerServerConfig {
            shards: 2,
            ..TrackerServerConfig::default()
        };
        let error = serve_sharded(listeners, config, 1).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(
            error.to_string().contains("1 listeners for 2 shards"),
            "{error}"
        );
    });
}

#[test]
fn a_second_tracker_cannot_share_a_port_in_use() {
    let first = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = first[0].local_addr().unwrap();
    assert_eq!(first[1].local_addr().unwrap(), addr);
    let error = bind(addr, 2).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    assert!(
        error.to_string().contains(&format!("listening on {addr}")),
        "{error}"
    );
    drop(first);
    assert_eq!(bind(addr, 1).unwrap()[0].local_addr().unwrap(), addr);
}

#[test]
fn each_shard_keeps_its_share_of_metainfo_and_at_least_one_largest() {
    let config = TrackerServerConfig {
        shards: 4,
        metainfo_max: 10,
        metainfo_bytes_max: 1 << 30,
        ..TrackerServerConfig::default()
    };
    assert_eq!(config.metainfo_max_per_shard(), 3);
    assert_eq!(config.metainfo_bytes_max_per_shard(), 1 << 28);
    let config = TrackerServerConfig {
        shards: 64,
        ..config
    };
    assert_eq!(config.metainfo_max_per_shard(), 1);
    assert_eq!(config.metainfo_bytes_max_per_shard(), METAINFO_LEN_MAX);
}

#[test]
fn metainfo_store_evicts_oldest_by_count_and_bytes() {
    let d = |n: u8| Digest::Sha256([n; 32]);
    let mut store = MetainfoStore::new(2, 10);
    store.insert(d(1), vec![1; 4]);
    store.insert(d(2), vec![2; 4]);
    store.insert(d(3), vec![3; 4]); // count: 1 goes
    assert_eq!(store.get(&d(1)), None);
    assert_eq!(store.get(&d(2)), Some(&[2u8; 4][..]));
    assert_eq!(store.get(&d(3)), Some(&[3u8; 4][..]));
    store.insert(d(2), vec![2; 5]); // replace: 2 becomes the newest
    store.insert(d(4), vec![4; 5]); // bytes: 3 goes (oldest), then count still fine
    assert_eq!(store.get(&d(3)), None);
    assert_eq!(store.get(&d(2)), Some(&[2u8; 5][..]));
    assert_eq!(store.get(&d(4)), Some(&[4u8; 5][..]));
    assert_eq!(store.bytes, 10);
    store.insert(d(5), vec![5; 10]); // needs everything
    assert_eq!(store.by_digest.len(), 1);
    assert_eq!(store.bytes, 10);
    assert_eq!(store.by_age.len(), 1);
}

mod shards;
