//! The engine's tracker client against real tracker servers on loopback: failover past a
//! dead tracker, and a lying tracker caught out.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use compio::net::TcpListener;
use shoal_engine::tracker::{
    Announce, AttemptError, FrameReader, TrackerClient, TrackerClientConfig, TrackerClientError,
    write_frame,
};
use shoal_proto::metainfo::{Metainfo, MetainfoParams};
use shoal_proto::tracker_wire::{self, Response};
use shoal_proto::{Digest, PeerId};
use shoal_servers::tracker::{TrackerServerConfig, serve};

fn run<F: Future>(body: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(body)
}

/// A real tracker server on an ephemeral loopback port.
async fn start_tracker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    compio::runtime::spawn(async move {
        serve(listener, TrackerServerConfig::default(), 1)
            .await
            .unwrap();
    })
    .detach();
    addr
}

/// An address nothing listens on (bound, then released).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A tracker that answers every request with `response`.
async fn start_fixed_tracker(response: Response) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    compio::runtime::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let response = response.clone();
            compio::runtime::spawn(async move {
                let mut reader = FrameReader::new();
                while reader
                    .next(&mut stream, tracker_wire::parse_request)
                    .await
                    .is_ok()
                {
                    let mut frame = Vec::new();
                    tracker_wire::encode_response(&response, &mut frame);
                    let (result, _) = write_frame(&mut stream, frame).await;
                    if result.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    })
    .detach();
    addr
}

fn client(trackers: Vec<SocketAddr>) -> TrackerClient {
    TrackerClient::new(TrackerClientConfig {
        trackers,
        timeout: Duration::from_secs(5),
        ..TrackerClientConfig::default()
    })
    .unwrap()
}

/// A metainfo whose digest the ring places on `first` before any other tracker of `client`.
fn metainfo_placed_first(client: &TrackerClient, first: SocketAddr) -> Metainfo {
    (0u32..)
        .map(|n| {
            let blob = format!("blob number {n}").into_bytes();
            Metainfo::build(Digest::sha256_of(&blob), &blob, &MetainfoParams::default()).unwrap()
        })
        .find(|metainfo| client.trackers_for(&metainfo.digest())[0] == first)
        .unwrap()
}

fn announce(metainfo: &Metainfo, peer: u64, port: u16) -> Announce {
    Announce {
        digest: metainfo.digest(),
        info_hash: metainfo.info_hash(),
        peer_id: PeerId::from_u64(peer),
        port,
        is_origin: peer == 1,
        is_complete: peer == 1,
    }
}

#[test]
fn client_fails_over_past_a_dead_tracker() {
    run(async {
        let dead = dead_addr().await;
        let live = start_tracker().await;
        let client = client(vec![dead, live]);
        let metainfo = metainfo_placed_first(&client, dead);
        assert_eq!(client.trackers_for(&metainfo.digest()), vec![dead, live]);

        client.put_metainfo(&metainfo).await.unwrap();
        let fetched = client.get_metainfo(&metainfo.digest()).await.unwrap();
        assert_eq!(fetched, Some(metainfo.clone()));

        let origin = client
            .announce(&announce(&metainfo, 1, 7001))
            .await
            .unwrap();
        assert!(origin.peers.is_empty());
        let peer = client
            .announce(&announce(&metainfo, 2, 7002))
            .await
            .unwrap();
        assert_eq!(peer.peers.len(), 1);
        assert_eq!(peer.peers[0].id, PeerId::from_u64(1));
        assert_eq!(peer.peers[0].addr, "127.0.0.1:7001".parse().unwrap());
        assert!(peer.peers[0].is_origin);

        let unknown = Digest::sha256_of(b"never stored");
        assert_eq!(client.get_metainfo(&unknown).await.unwrap(), None);
    });
}

#[test]
fn every_tracker_down_names_each_one() {
    run(async {
        let first = dead_addr().await;
        let second = dead_addr().await;
        let client = client(vec![first, second]);
        let digest = Digest::sha256_of(b"x");
        let error = client.get_metainfo(&digest).await.unwrap_err();
        let TrackerClientError::AllFailed { attempts, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(attempts.len(), 2);
        assert!(
            attempts
                .iter()
                .all(|a| matches!(a.error, AttemptError::Connect(_)))
        );
        let message = error.to_string();
        for addr in [first, second] {
            assert!(message.contains(&addr.to_string()), "{message}");
        }
        assert!(message.contains(&digest.to_string()), "{message}");
    });
}

#[test]
fn a_lying_tracker_is_not_believed() {
    run(async {
        let other = Metainfo::build(
            Digest::sha256_of(b"another blob"),
            b"another blob",
            &MetainfoParams::default(),
        )
        .unwrap();
        let liar = start_fixed_tracker(Response::Metainfo(other.encode())).await;
        let asked = Digest::sha256_of(b"the blob asked for");

        let alone = client(vec![liar]);
        let error = alone.get_metainfo(&asked).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("another blob"), "{message}");
        assert!(message.contains(&liar.to_string()), "{message}");
        assert!(message.contains(&asked.to_string()), "{message}");

        // With an honest tracker behind it, the honest answer wins.
        let honest = start_tracker().await;
        let both = client(vec![liar, honest]);
        let metainfo = metainfo_placed_first(&both, liar);
        // Store it on the honest tracker only (the liar also "accepts" nothing: it answers
        // every request with the wrong metainfo).
        client(vec![honest]).put_metainfo(&metainfo).await.unwrap();
        let fetched = both.get_metainfo(&metainfo.digest()).await.unwrap();
        assert_eq!(fetched, Some(metainfo));
    });
}

#[test]
fn garbage_from_a_tracker_is_a_failure_not_a_panic() {
    run(async {
        let confused = start_fixed_tracker(Response::NotFound).await;
        let client = client(vec![confused]);
        let metainfo =
            Metainfo::build(Digest::sha256_of(b"b"), b"b", &MetainfoParams::default()).unwrap();
        // NotFound is no answer to an announce or a put.
        let error = client
            .announce(&announce(&metainfo, 2, 1))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("unexpected not-found response"),
            "{error}"
        );
        let error = client.put_metainfo(&metainfo).await.unwrap_err();
        assert!(
            error.to_string().contains("unexpected not-found response"),
            "{error}"
        );
    });
}

#[test]
fn a_silent_tracker_times_out_and_the_next_answers() {
    run(async {
        // Accepts connections (the kernel's backlog does) but never reads or answers.
        let silent_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = silent_listener.local_addr().unwrap();
        let live = start_tracker().await;
        let client = TrackerClient::new(TrackerClientConfig {
            trackers: vec![silent, live],
            timeout: Duration::from_millis(200),
            ..TrackerClientConfig::default()
        })
        .unwrap();
        let metainfo = metainfo_placed_first(&client, silent);
        client.put_metainfo(&metainfo).await.unwrap();
        assert_eq!(
            client.get_metainfo(&metainfo.digest()).await.unwrap(),
            Some(metainfo)
        );
        let alone = TrackerClient::new(TrackerClientConfig {
            trackers: vec![silent],
            timeout: Duration::from_millis(100),
            ..TrackerClientConfig::default()
        })
        .unwrap();
        let error = alone
            .get_metainfo(&Digest::sha256_of(b"y"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("timed out"), "{error}");
        drop(silent_listener);
    });
}

#[test]
fn client_config_is_checked() {
    let error = TrackerClient::new(TrackerClientConfig::default()).unwrap_err();
    assert!(error.to_string().contains("empty"), "{error}");
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let error = TrackerClient::new(TrackerClientConfig {
        trackers: vec![addr, addr],
        ..TrackerClientConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("more than once"), "{error}");
    let error = TrackerClient::new(TrackerClientConfig {
        trackers: vec![addr],
        attempts_max: 0,
        ..TrackerClientConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("attempts_max"), "{error}");
}

#[test]
fn one_client_serves_runtimes_on_other_threads() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<TrackerClient>();
    // The server runs on its own thread and runtime; the client is made here and used from
    // two other threads' runtimes.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(async move {
            addr_tx.send(start_tracker().await).unwrap();
            std::future::pending::<()>().await;
        })
    });
    let client = client(vec![addr_rx.recv().unwrap()]);
    let metainfo =
        Metainfo::build(Digest::sha256_of(b"t"), b"t", &MetainfoParams::default()).unwrap();
    let putter = client.clone();
    let stored = metainfo.clone();
    std::thread::spawn(move || run(async move { putter.put_metainfo(&stored).await.unwrap() }))
        .join()
        .unwrap();
    let fetched = std::thread::spawn(move || {
        run(async move { client.get_metainfo(&metainfo.digest()).await.unwrap() })
    })
    .join()
    .unwrap();
    assert_eq!(fetched.map(|m| m.digest()), Some(Digest::sha256_of(b"t")));
}
