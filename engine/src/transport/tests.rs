//! Transport tests: real sockets on 127.0.0.1 and real files under /tmp, inside compio
//! runtimes (io_uring unless a test forces the polling driver).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use compio::driver::DriverType;
use compio::io::AsyncWriteExt;
use compio::net::{TcpListener, TcpStream};
use compio::runtime::Runtime;
use shoal_proto::metainfo::{Metainfo, MetainfoParams, PieceLengthTable, PieceVerifier};
use shoal_proto::wire::{self, Handshake, Message, PieceHeader, WireError};
use shoal_proto::{Bitfield, Digest, InfoHash, PeerId, PieceIndex, Rng, StripeIndex, limits};

use super::*;

// ---- harness ------------------------------------------------------------------------------

use crate::test_runtime::{run, runtime};

/// A connected pair of sockets on loopback: (dialler, acceptor).
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The kernel completes the handshake from its backlog: connect before accept is fine.
    let dialled = TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (dialled, accepted)
}

/// Two connected `PeerConn`s.
async fn conn_pair(upload_path: UploadPath) -> (PeerConn, PeerConn) {
    let (a, b) = socket_pair().await;
    (
        PeerConn::new(a, upload_path).unwrap(),
        PeerConn::new(b, upload_path).unwrap(),
    )
}

/// A raw socket to write arbitrary bytes from, and a `PeerConn` reading them.
async fn raw_pair() -> (TcpStream, PeerConn) {
    let (raw, b) = socket_pair().await;
    (raw, PeerConn::new(b, UploadPath::Copy).unwrap())
}

/// A file or directory under /tmp, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    /// A fresh path; nothing is created.
    fn new(name: &str) -> TempPath {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join("shoal-transport-tests");
        std::fs::create_dir_all(&dir).unwrap();
        TempPath(dir.join(format!("{name}-{}-{n}", std::process::id())))
    }

    fn with_contents(name: &str, contents: &[u8]) -> TempPath {
        let path = TempPath::new(name);
        std::fs::write(&path.0, contents).unwrap();
        path
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn blob_of_len(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut blob = Vec::with_capacity(len + 8);
    while blob.len() < len {
        blob.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    blob.truncate(len);
    blob
}

fn metainfo_of(blob: &[u8], piece_len: u32) -> Metainfo {
    let params = MetainfoParams {
        piece_lengths: PieceLengthTable::uniform(piece_len).unwrap(),
        pieces_per_stripe: 16,
        ..MetainfoParams::default()
    };
    Metainfo::build(Digest::sha256_of(blob), blob, &params).unwrap()
}

fn header_of(metainfo: &Metainfo, piece: u32) -> PieceHeader {
    PieceHeader {
        piece: PieceIndex(piece),
        length: metainfo.piece_len_of(PieceIndex(piece)),
    }
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(message, &mut out);
    out
}

async fn write_raw(raw: &mut TcpStream, bytes: Vec<u8>) {
    let compio::BufResult(result, _) = raw.write_all(bytes).await;
    result.unwrap();
}

/// Every message kind but Piece (which travels with its payload).
fn control_messages() -> Vec<Message> {
    let mut bitfield = Bitfield::new(21);
    for i in [0, 3, 8, 20] {
        bitfield.set(i);
    }
    let handshake = |is_origin, bitfield| {
        Message::Handshake(Handshake {
            info_hash: InfoHash([7; 32]),
            stripe: StripeIndex(3),
            peer_id: PeerId::from_u64(42),
            is_origin,
            bitfield,
        })
    };
    vec![
        handshake(false, bitfield),
        handshake(true, Bitfield::full(limits::STRIPE_PIECES_MAX as usize)),
        handshake(false, Bitfield::new(0)),
        Message::Have(PieceIndex(5)),
        Message::Request(PieceIndex(u32::MAX)),
        Message::Cancel(PieceIndex(0)),
        Message::Reject(PieceIndex(17)),
        Message::Complete,
        Message::Keepalive,
    ]
}

// ---- messages -----------------------------------------------------------------------------

/// Every control message, then a piece (the last, short one) with its payload, `from` → `to`.
async fn round_trip(
    from: &mut PeerConn,
    to: &mut PeerConn,
    blob: &[u8],
    metainfo: &Metainfo,
    file: &compio::fs::File,
) {
    for message in control_messages() {
        from.send_message(&message).await.unwrap();
        assert_eq!(to.recv().await.unwrap(), message);
    }
    let header = header_of(metainfo, 3);
    let offset = metainfo.piece_offset(header.piece);
    from.send_piece(header, file, offset).await.unwrap();
    assert_eq!(to.recv().await.unwrap(), Message::Piece(header));
    let expected = metainfo.piece_verifier(header.piece);
    let piece = Vec::with_capacity(metainfo.piece_len() as usize);
    let (verdict, piece) = to.recv_piece_payload(expected, piece).await;
    assert_eq!(verdict.unwrap(), Verdict::Verified);
    assert_eq!(piece, blob[offset as usize..]);
}

#[test]
fn every_message_kind_round_trips_both_ways() {
    for driver in [None, Some(DriverType::Poll)] {
        runtime(driver).block_on(async {
            let blob = blob_of_len(3 * limits::PIECE_LEN_MIN as usize + 100, 1);
            let metainfo = metainfo_of(&blob, limits::PIECE_LEN_MIN);
            let file = TempPath::with_contents("round-trip", &blob);
            let file = compio::fs::File::open(&file.0).await.unwrap();
            let (mut a, mut b) = conn_pair(UploadPath::Splice).await;
            round_trip(&mut a, &mut b, &blob, &metainfo, &file).await;
            round_trip(&mut b, &mut a, &blob, &metainfo, &file).await;
        });
    }
}

#[test]
fn send_message_refuses_a_piece_header_without_payload() {
    run(async {
        let (mut a, _b) = conn_pair(UploadPath::Copy).await;
        let header = PieceHeader {
            piece: PieceIndex(0),
            length: 10,
        };
        let error = a.send_message(&Message::Piece(header)).await.unwrap_err();
        assert!(
            matches!(error, TransportError::PieceNeedsPayload),
            "{error}"
        );
        // Nothing was written: the connection still works.
        a.send_message(&Message::Keepalive).await.unwrap();
    });
}

#[test]
fn frames_split_across_reads_and_coalesced_in_one_read() {
    run(async {
        let (mut raw, mut conn) = raw_pair().await;
        let messages = control_messages();
        let bytes: Vec<u8> = messages.iter().flat_map(frame).collect();
        // One byte at a time for the first frame, the rest in one write.
        let first_len = frame(&messages[0]).len();
        for byte in &bytes[..first_len] {
            write_raw(&mut raw, vec![*byte]).await;
        }
        write_raw(&mut raw, bytes[first_len..].to_vec()).await;
        for message in &messages {
            assert_eq!(&conn.recv().await.unwrap(), message);
        }
    });
}

#[test]
fn the_receive_buffer_never_grows() {
    run(async {
        let (mut raw, mut conn) = raw_pair().await;
        // Largest frames back to back, far more than the buffer holds, in one write.
        let largest = Message::Handshake(Handshake {
            info_hash: InfoHash([1; 32]),
            stripe: StripeIndex(0),
            peer_id: PeerId::from_u64(1),
            is_origin: false,
            bitfield: Bitfield::full(limits::STRIPE_PIECES_MAX as usize),
        });
        let one = frame(&largest);
        assert_eq!(one.len(), FRAME_TOTAL_LEN_MAX);
        let n_frames = 4 * RECV_BUF_LEN / one.len();
        let bytes: Vec<u8> = (0..n_frames).flat_map(|_| one.clone()).collect();
        let writer = compio::runtime::spawn(async move { write_raw(&mut raw, bytes).await });
        for _ in 0..n_frames {
            assert_eq!(conn.recv().await.unwrap(), largest);
            assert_eq!(conn.reader().recv_buf_capacity(), RECV_BUF_LEN);
        }
        writer.await.unwrap();
    });
}

#[test]
fn a_recv_that_beats_the_timer_leaves_the_reader_usable() {
    run(async {
        let (mut a, mut b) = conn_pair(UploadPath::Copy).await;
        a.send_message(&Message::Have(PieceIndex(1))).await.unwrap();
        let raced = compio::time::timeout(Duration::from_secs(10), b.recv()).await;
        assert_eq!(raced.unwrap().unwrap(), Message::Have(PieceIndex(1)));
        a.send_message(&Message::Complete).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), Message::Complete);
    });
}

/// Sends `bytes` from a raw socket and checks the wire error the reader reports; the reader is
/// then poisoned.
fn check_malformed(bytes: &[u8], expected: WireError) {
    let bytes = bytes.to_vec();
    run(async move {
        let (mut raw, mut conn) = raw_pair().await;
        write_raw(&mut raw, bytes).await;
        match conn.recv().await {
            Err(TransportError::Malformed(error)) => assert_eq!(error, expected),
            other => panic!("expected Malformed({expected:?}), got {other:?}"),
        }
        let again = conn.recv().await.unwrap_err();
        assert!(matches!(again, TransportError::Poisoned), "{again}");
    });
}

#[test]
fn malformed_frames_are_reported_with_the_wire_error() {
    let max = wire::FRAME_LEN_MAX;
    let too_long = (max as u32 + 1).to_be_bytes();
    // The length alone condemns it: no body needs to arrive.
    check_malformed(&too_long, WireError::FrameTooLong { len: max + 1, max });
    check_malformed(
        &[0, 0, 0, 1, 1],
        WireError::FrameTooShort {
            len: 1,
            min: wire::FRAME_LEN_MIN,
        },
    );
    check_malformed(&[0, 0, 0, 2, 9, 7], WireError::UnsupportedVersion(9));
    check_malformed(&[0, 0, 0, 2, 1, 200], WireError::UnknownKind(200));
    check_malformed(
        &[0, 0, 0, 3, 1, 1, 0],
        WireError::BodyLength {
            kind: wire::Kind::Have,
            expected: 4,
            actual: 1,
        },
    );
    let mut bad_piece_len = vec![0, 0, 0, 10, 1, 3, 0, 0, 0, 0];
    bad_piece_len.extend_from_slice(&0u32.to_be_bytes());
    check_malformed(
        &bad_piece_len,
        WireError::PieceLength {
            length: 0,
            max: limits::PIECE_LEN_MAX,
        },
    );
    // A valid frame first, then garbage: the first is delivered, then the error.
    let mut bytes = frame(&Message::Keepalive);
    bytes.extend_from_slice(&[0, 0, 0, 2, 1, 99]);
    run(async move {
        let (mut raw, mut conn) = raw_pair().await;
        write_raw(&mut raw, bytes).await;
        assert_eq!(conn.recv().await.unwrap(), Message::Keepalive);
        let error = conn.recv().await.unwrap_err();
        assert!(
            matches!(error, TransportError::Malformed(WireError::UnknownKind(99))),
            "{error}"
        );
    });
}

/// Writes `bytes` from a raw socket, closes it, and returns what `recv` says after reading
/// every complete message.
fn recv_after_close(bytes: Vec<u8>, complete_messages: usize) -> TransportError {
    run(async move {
        let (mut raw, mut conn) = raw_pair().await;
        write_raw(&mut raw, bytes).await;
        raw.close().await.unwrap();
        for _ in 0..complete_messages {
            conn.recv().await.unwrap();
        }
        conn.recv().await.unwrap_err()
    })
}

#[test]
fn clean_close_between_frames_is_closed() {
    let error = recv_after_close(Vec::new(), 0);
    assert!(matches!(error, TransportError::Closed), "{error}");
    let error = recv_after_close(frame(&Message::Complete), 1);
    assert!(matches!(error, TransportError::Closed), "{error}");
}

#[test]
fn close_mid_frame_is_truncated() {
    let have = frame(&Message::Have(PieceIndex(1)));
    // Inside the length prefix, and inside the body.
    for cut in [2, have.len() - 1] {
        let error = recv_after_close(have[..cut].to_vec(), 0);
        match error {
            TransportError::Truncated {
                during: "frame",
                received,
                ..
            } => assert_eq!(received, cut),
            other => panic!("cut at {cut}: expected Truncated, got {other}"),
        }
    }
    let mut bytes = frame(&Message::Keepalive);
    bytes.extend_from_slice(&have[..7]);
    let error = recv_after_close(bytes, 1);
    assert!(
        matches!(error, TransportError::Truncated { during: "frame", received: 7, expected } if expected == have.len()),
        "{error}"
    );
}

// ---- payloads -----------------------------------------------------------------------------

/// A piece of `len` random bytes, its SHA-256, and its header frame as piece 9.
fn piece_of_len(len: usize, seed: u64) -> (Vec<u8>, [u8; 32], Vec<u8>) {
    use sha2::Digest as _;
    let data = blob_of_len(len, seed);
    let hash: [u8; 32] = sha2::Sha256::digest(&data).into();
    let header = frame(&Message::Piece(PieceHeader {
        piece: PieceIndex(9),
        length: len as u32,
    }));
    (data, hash, header)
}

#[test]
fn payloads_verify_and_corrupt_ones_do_not() {
    // Small enough to arrive with the header in one read, and larger than several reads.
    for len in [1, 100, READ_CHUNK_LEN + 3, 3 * PAYLOAD_READ_LEN_MAX + 17] {
        for corrupt in [false, true] {
            run(async move {
                let (data, hash, header) = piece_of_len(len, len as u64);
                let mut sent = data.clone();
                if corrupt {
                    sent[len / 2] ^= 0x40;
                }
                let (mut raw, mut conn) = raw_pair().await;
                let mut bytes = header;
                bytes.extend_from_slice(&sent);
                // A frame right behind the payload, likely in the same read.
                bytes.extend_from_slice(&frame(&Message::Have(PieceIndex(4))));
                let writer = compio::runtime::spawn(async move {
                    write_raw(&mut raw, bytes).await;
                    raw
                });
                let message = conn.recv().await.unwrap();
                assert!(matches!(message, Message::Piece(h) if h.length as usize == len));
                assert_eq!(conn.payload_pending(), len);
                let (verdict, piece) = conn
                    .recv_piece_payload(
                        PieceVerifier::sha256(hash, len as u32),
                        Vec::with_capacity(len),
                    )
                    .await;
                let expected = if corrupt {
                    Verdict::Corrupt
                } else {
                    Verdict::Verified
                };
                assert_eq!(verdict.unwrap(), expected, "len {len}");
                assert_eq!(piece, sent, "the bytes received, whatever the verdict");
                assert_eq!(conn.recv().await.unwrap(), Message::Have(PieceIndex(4)));
                drop(writer.await.unwrap());
            });
        }
    }
}

#[test]
fn close_mid_payload_is_truncated() {
    run(async {
        let len = 2 * READ_CHUNK_LEN;
        let (data, hash, header) = piece_of_len(len, 3);
        let (mut raw, mut conn) = raw_pair().await;
        let mut bytes = header;
        bytes.extend_from_slice(&data[..len - 1]);
        let writer = compio::runtime::spawn(async move {
            write_raw(&mut raw, bytes).await;
            raw.close().await.unwrap();
        });
        assert!(matches!(conn.recv().await.unwrap(), Message::Piece(_)));
        let (result, _) = conn
            .recv_piece_payload(
                PieceVerifier::sha256(hash, len as u32),
                Vec::with_capacity(len),
            )
            .await;
        match result {
            Err(TransportError::Truncated {
                during: "piece payload",
                received,
                expected,
            }) => assert_eq!((received, expected), (len - 1, len)),
            other => panic!("expected Truncated, got {other:?}"),
        }
        writer.await.unwrap();
        let again = conn.recv().await.unwrap_err();
        assert!(matches!(again, TransportError::Poisoned), "{again}");
    });
}

#[test]
fn payload_misuse_is_refused_without_poisoning() {
    run(async {
        let len = 1000;
        let (data, hash, header) = piece_of_len(len, 4);
        let (mut raw, mut conn) = raw_pair().await;
        let (result, _) = conn
            .recv_piece_payload(
                PieceVerifier::sha256(hash, len as u32),
                Vec::with_capacity(len),
            )
            .await;
        assert!(matches!(result, Err(TransportError::NoPayloadPending)));

        let mut bytes = header.clone();
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(&frame(&Message::Complete));
        write_raw(&mut raw, bytes).await;

        assert!(matches!(conn.recv().await.unwrap(), Message::Piece(_)));
        let error = conn.recv().await.unwrap_err();
        assert!(
            matches!(error, TransportError::PayloadPending { length } if length == len),
            "{error}"
        );
        let (result, buf) = conn
            .recv_piece_payload(
                PieceVerifier::sha256(hash, len as u32),
                Vec::with_capacity(len - 1),
            )
            .await;
        assert!(
            matches!(result, Err(TransportError::BufferTooSmall { length, .. }) if length == len)
        );
        assert!(buf.is_empty());
        // Still usable: skip this payload, take the next one.
        conn.skip_piece_payload().await.unwrap();
        assert!(matches!(conn.recv().await.unwrap(), Message::Piece(_)));
        let (verdict, piece) = conn
            .recv_piece_payload(
                PieceVerifier::sha256(hash, len as u32),
                Vec::with_capacity(len),
            )
            .await;
        assert_eq!(verdict.unwrap(), Verdict::Verified);
        assert_eq!(piece, data);
        assert_eq!(conn.recv().await.unwrap(), Message::Complete);
    });
}

#[test]
fn skip_reads_past_a_large_payload() {
    run(async {
        let len = 3 * READ_CHUNK_LEN + 5;
        let (data, _, header) = piece_of_len(len, 5);
        let (mut raw, mut conn) = raw_pair().await;
        let mut bytes = header;
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(&frame(&Message::Reject(PieceIndex(2))));
        let writer = compio::runtime::spawn(async move { write_raw(&mut raw, bytes).await });
        assert!(matches!(conn.recv().await.unwrap(), Message::Piece(_)));
        conn.skip_piece_payload().await.unwrap();
        assert_eq!(conn.recv().await.unwrap(), Message::Reject(PieceIndex(2)));
        writer.await.unwrap();
    });
}

#[test]
fn a_recv_dropped_by_a_timer_poisons_the_reader() {
    run(async {
        let (_raw, mut conn) = raw_pair().await;
        let raced = compio::time::timeout(Duration::from_millis(20), conn.recv()).await;
        assert!(raced.is_err(), "a silent peer: the timer wins");
        let error = conn.recv().await.unwrap_err();
        assert!(matches!(error, TransportError::Poisoned), "{error}");
    });
}

// ---- uploads ------------------------------------------------------------------------------

/// Uploads every piece of a blob (in a scrambled order) from a file on `upload_path` and
/// checks the receiver gets exactly the blob's bytes, verified. Returns the path in effect.
async fn upload_blob(upload_path: UploadPath) -> UploadPath {
    // Pieces larger than the pipe and the copy chunk, and a short last piece.
    let piece_len = 4 * 1024 * 1024;
    let blob = blob_of_len(3 * piece_len as usize + 12345, 6);
    let metainfo = metainfo_of(&blob, piece_len);
    let temp = TempPath::with_contents("upload", &blob);
    let (sender, mut receiver) = conn_pair(upload_path).await;
    let in_effect = sender.upload_path();
    let n_pieces = metainfo.n_pieces();
    let order: Vec<u32> = [3, 0, 2, 1].into_iter().filter(|p| *p < n_pieces).collect();
    assert_eq!(order.len(), n_pieces as usize);

    let sender_metainfo = metainfo.clone();
    let sender_order = order.clone();
    let path = temp.0.clone();
    let sending = compio::runtime::spawn(async move {
        let mut sender = sender;
        let file = compio::fs::File::open(&path).await.unwrap();
        for piece in sender_order {
            let header = header_of(&sender_metainfo, piece);
            let offset = sender_metainfo.piece_offset(header.piece);
            sender.send_piece(header, &file, offset).await.unwrap();
        }
        sender.send_message(&Message::Complete).await.unwrap();
        sender
    });

    let mut received = vec![0; blob.len()];
    let mut piece_buf = Vec::with_capacity(piece_len as usize);
    for piece in order {
        let header = header_of(&metainfo, piece);
        assert_eq!(receiver.recv().await.unwrap(), Message::Piece(header));
        let (verdict, buf) = receiver
            .recv_piece_payload(metainfo.piece_verifier(header.piece), piece_buf)
            .await;
        piece_buf = buf;
        assert_eq!(verdict.unwrap(), Verdict::Verified, "piece {piece}");
        let offset = metainfo.piece_offset(header.piece) as usize;
        received[offset..offset + piece_buf.len()].copy_from_slice(&piece_buf);
    }
    assert_eq!(receiver.recv().await.unwrap(), Message::Complete);
    assert!(received == blob, "uploaded bytes differ from the file");
    drop(sending.await.unwrap());
    in_effect
}

#[test]
fn upload_by_splice_and_by_copy_deliver_the_same_bytes() {
    run(async {
        let driver = Runtime::with_current(|runtime| runtime.driver_type());
        let spliced = upload_blob(UploadPath::Splice).await;
        let expected = if driver == DriverType::IoUring {
            UploadPath::Splice
        } else {
            UploadPath::Copy
        };
        assert_eq!(spliced, expected, "driver {driver:?}");
        assert_eq!(upload_blob(UploadPath::Copy).await, UploadPath::Copy);
    });
}

#[test]
fn polling_driver_uploads_by_copy() {
    runtime(Some(DriverType::Poll)).block_on(async {
        assert_eq!(upload_blob(UploadPath::Splice).await, UploadPath::Copy);
    });
}

#[test]
fn upload_past_the_end_of_the_file_fails_and_poisons_the_writer() {
    for upload_path in [UploadPath::Splice, UploadPath::Copy] {
        run(async move {
            let temp = TempPath::with_contents("short", &[1; 1000]);
            let file = compio::fs::File::open(&temp.0).await.unwrap();
            let (mut a, _b) = conn_pair(upload_path).await;
            let header = PieceHeader {
                piece: PieceIndex(0),
                length: 2000,
            };
            let error = a.send_piece(header, &file, 0).await.unwrap_err();
            assert!(
                matches!(&error, TransportError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof),
                "{upload_path:?}: {error}"
            );
            let again = a.send_message(&Message::Keepalive).await.unwrap_err();
            assert!(matches!(again, TransportError::Poisoned), "{again}");
        });
    }
}

// ---- with the store -----------------------------------------------------------------------

/// The path a piece takes through a relaying host: received from one peer and verified,
/// written to a download, then uploaded to another peer from the download's file (refused
/// before it is stored).
#[test]
fn a_relayed_piece_is_served_from_the_download_only_once_stored() {
    for upload_path in [UploadPath::Splice, UploadPath::Copy] {
        run(async move {
            let piece_len = 2 * 1024 * 1024;
            let blob = blob_of_len(2 * piece_len as usize + 999, 8);
            let metainfo = metainfo_of(&blob, piece_len);
            let source = TempPath::with_contents("relay-source", &blob);
            let root = TempPath::new("relay-store");
            let (store, _) = crate::store::Store::open(&root.0, Default::default())
                .await
                .unwrap();
            let download = store.begin_download(&metainfo).await.unwrap();
            let piece = PieceIndex(1);
            let header = header_of(&metainfo, 1);
            assert!(matches!(
                download.piece_source(piece),
                Err(crate::store::StoreError::PieceMissing { .. })
            ));

            // Origin → relay.
            let (mut origin, mut relay_in) = conn_pair(upload_path).await;
            let file = compio::fs::File::open(&source.0).await.unwrap();
            let offset = metainfo.piece_offset(piece);
            let sending = compio::runtime::spawn(async move {
                origin.send_piece(header, &file, offset).await.unwrap();
                origin
            });
            assert_eq!(relay_in.recv().await.unwrap(), Message::Piece(header));
            let buf = Vec::with_capacity(piece_len as usize);
            let (verdict, buf) = relay_in
                .recv_piece_payload(metainfo.piece_verifier(piece), buf)
                .await;
            assert_eq!(verdict.unwrap(), Verdict::Verified);
            let (written, _) = download.write_piece(piece, buf).await;
            written.unwrap();
            drop(sending.await.unwrap());

            // Relay → leecher, from the download's data file.
            let (mut relay_out, mut leecher) = conn_pair(upload_path).await;
            let (file, offset) = download.piece_source(piece).unwrap();
            assert_eq!(offset, metainfo.piece_offset(piece));
            let expected = metainfo.piece_verifier(piece);
            let receiving = compio::runtime::spawn(async move {
                let message = leecher.recv().await.unwrap();
                let buf = Vec::with_capacity(piece_len as usize);
                let (verdict, buf) = leecher.recv_piece_payload(expected, buf).await;
                (message, verdict.unwrap(), buf)
            });
            relay_out.send_piece(header, file, offset).await.unwrap();
            let (message, verdict, received) = receiving.await.unwrap();
            assert_eq!(message, Message::Piece(header));
            assert_eq!(verdict, Verdict::Verified);
            let start = offset as usize;
            assert!(received == blob[start..start + piece_len as usize]);
            drop(download);
            drop(store);
        });
    }
}
