//! `BlobStream` and `Download::wait_piece`: streaming a blob while it downloads.

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;

use super::*;

/// Reads the rest of the stream with buffers of `capacity`, checking that every chunk of a
/// download covers stored pieces only. Returns the bytes and the chunk lengths.
async fn read_to_end(
    stream: &mut BlobStream,
    capacity: usize,
    download: Option<&Download>,
) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut lens = Vec::new();
    let mut buf = Vec::with_capacity(capacity);
    // Every chunk but the last is non-empty: at most one turn per byte, plus the end.
    for _ in 0..=stream.remaining() {
        let offset = out.len();
        let (result, chunk) = stream.next_chunk(buf).await;
        result.unwrap();
        assert!(chunk.len() <= capacity);
        assert_eq!(
            chunk.capacity(),
            capacity,
            "the buffer came back, not a new one"
        );
        if chunk.is_empty() {
            assert_eq!(stream.remaining(), 0);
            return (out, lens);
        }
        if let Some(download) = download {
            assert_chunk_stored(download, offset as u64, chunk.len());
        }
        out.extend_from_slice(&chunk);
        lens.push(chunk.len());
        buf = chunk;
    }
    panic!("the stream did not end");
}

/// Reads one chunk.
async fn chunk(stream: &mut BlobStream, capacity: usize) -> Vec<u8> {
    let (result, chunk) = stream.next_chunk(Vec::with_capacity(capacity)).await;
    result.unwrap();
    chunk
}

/// Every piece under blob bytes `start..start + len` is stored.
fn assert_chunk_stored(download: &Download, start: u64, len: usize) {
    let first = start / P64;
    let last = (start + len as u64 - 1) / P64;
    for piece in first..=last {
        assert!(
            download.has_piece(PieceIndex(piece as u32)),
            "chunk {start}+{len} reaches {piece}, which is not stored"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// `write_piece` of this piece returned.
    Written(u32),
    /// The stream handed out bytes `offset..offset + len`.
    Chunk { offset: u64, len: usize },
}

/// A stream started on an empty download yields exactly the blob while a concurrent task
/// writes the pieces out of order; its first bytes come before the last piece is written.
#[test]
fn a_stream_follows_a_download_written_out_of_order() {
    run(check_stream_follows_download());
}

#[test]
fn a_stream_follows_a_download_on_the_polling_driver() {
    runtime(Some(DriverType::Poll)).block_on(check_stream_follows_download());
}

async fn check_stream_follows_download() {
    let dir = TempDir::new("stream-follow");
    let (store, _) = open_store(dir.path(), test_config()).await;
    let blob = TestBlob::new(12 * P as usize + 345, 80, 4);
    let download = store.begin_download(&blob.metainfo).await.unwrap();
    let mut stream =
        BlobStream::from_download(download.clone(), 0..blob.data.len() as u64).unwrap();
    assert_eq!(stream.remaining(), blob.data.len() as u64);

    // Piece 0 comes early but not first; the writer holds back its last piece until the
    // stream has handed out bytes (a stream that waited for the whole blob would keep it
    // waiting: the timeout only turns that hang into a failed assertion below).
    let mut order = shuffled(blob.n_pieces(), 81);
    let zero = order.iter().position(|&index| index == 0).unwrap();
    order.remove(zero);
    order.insert(2, 0);
    let last = *order.last().unwrap();
    assert_ne!(last, 0);

    let log = Rc::new(RefCell::new(Vec::new()));
    let first_bytes = Rc::new((Cell::new(false), event_listener::Event::new()));
    let writer = {
        let (download, log, first_bytes) =
            (download.clone(), Rc::clone(&log), Rc::clone(&first_bytes));
        let pieces: Vec<(u32, Vec<u8>)> = order
            .iter()
            .map(|&index| (index, blob.piece(index)))
            .collect();
        compio::runtime::spawn(async move {
            for (index, data) in pieces {
                if index == last {
                    let listener = first_bytes.1.listen();
                    if !first_bytes.0.get() {
                        let _ = compio::time::timeout(Duration::from_secs(60), listener).await;
                    }
                }
                let (result, _) = download.write_piece(PieceIndex(index), data).await;
                result.unwrap();
                log.borrow_mut().push(Event::Written(index));
            }
        })
    };

    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(3 * P as usize);
    for _ in 0..=blob.data.len() {
        let (result, chunk) = stream.next_chunk(buf).await;
        result.unwrap();
        if chunk.is_empty() {
            break;
        }
        assert_chunk_stored(&download, out.len() as u64, chunk.len());
        log.borrow_mut().push(Event::Chunk {
            offset: out.len() as u64,
            len: chunk.len(),
        });
        if !first_bytes.0.replace(true) {
            first_bytes.1.notify(usize::MAX);
        }
        out.extend_from_slice(&chunk);
        buf = chunk;
    }
    writer.await.unwrap();
    assert!(out == blob.data, "the stream yields exactly the blob");
    assert_eq!(stream.remaining(), 0);

    let log = log.borrow().clone();
    let first_chunk = log
        .iter()
        .position(|event| matches!(event, Event::Chunk { .. }))
        .unwrap();
    let last_written = log
        .iter()
        .position(|event| *event == Event::Written(last))
        .unwrap();
    assert!(
        first_chunk < last_written,
        "first bytes before the last piece: {log:?}"
    );
    assert!(matches!(log[first_chunk], Event::Chunk { offset: 0, .. }));
    download.complete().await.unwrap();
}

/// A chunk stops at the first piece that is not stored, and continues once it is.
#[test]
fn a_chunk_ends_at_a_missing_piece() {
    run(async {
        let dir = TempDir::new("stream-gap");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(6 * P as usize, 82, 4);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_pieces_concurrently(&download, &blob, &[0, 1, 3]).await;
        let len = blob.data.len() as u64;
        let capacity = 6 * P as usize;

        // From mid-piece 0: the rest of 0 and all of 1, then piece 2 is missing.
        let mut stream = BlobStream::from_download(download.clone(), 100..len).unwrap();
        let first = chunk(&mut stream, capacity).await;
        assert!(first == blob.data[100..2 * P as usize]);
        assert_eq!(stream.remaining(), len - 2 * P64);
        write_piece(&download, &blob, 2).await;
        // 2 and 3, then 4 is missing.
        let second = chunk(&mut stream, capacity).await;
        assert!(second == blob.data[2 * P as usize..4 * P as usize]);
        write_pieces_concurrently(&download, &blob, &[4, 5]).await;
        let (rest, _) = read_to_end(&mut stream, capacity, Some(&download)).await;
        assert!(rest == blob.data[4 * P as usize..]);
    });
}

/// The byte ranges of a stream, from a download with every piece stored and from the complete
/// blob: chunks of several sizes give exactly the range's bytes.
#[test]
fn stream_ranges() {
    run(async {
        let dir = TempDir::new("stream-ranges");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(5 * P as usize + 1000, 83, 2);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let all: Vec<u32> = (0..blob.n_pieces()).collect();
        write_pieces_concurrently(&download, &blob, &all).await;
        let len = blob.data.len() as u64;
        let ranges = [
            0..len,
            0..0,
            len..len,
            P64..P64,
            7..P64 - 3,
            P64 / 2..3 * P64 + 17,
            P64..2 * P64,
            len - 1..len,
            5 * P64 + 10..len,
            123..len,
        ];
        let capacities = [1000, P as usize, 2 * P as usize + 3, 16 * P as usize];

        let check = |stream_bytes: (Vec<u8>, Vec<usize>), range: &Range<u64>, capacity: usize| {
            let (bytes, lens) = stream_bytes;
            let expected = &blob.data[range.start as usize..range.end as usize];
            assert!(bytes == expected, "range {range:?}, capacity {capacity}");
            // Every piece is stored: every chunk but the last fills the buffer.
            if let Some((_, full)) = lens.split_last() {
                assert!(full.iter().all(|&n| n == capacity), "{range:?}: {lens:?}");
            }
        };
        for range in &ranges {
            for &capacity in &capacities {
                let mut stream =
                    BlobStream::from_download(download.clone(), range.clone()).unwrap();
                assert_eq!(stream.remaining(), range.end - range.start);
                check(
                    read_to_end(&mut stream, capacity, Some(&download)).await,
                    range,
                    capacity,
                );
            }
        }

        // Errors: past the end, inverted, a zero-capacity buffer.
        // Inverted: built from variables, as a literal `10..9` is a lint error.
        let (ten, nine) = (10, 9);
        for bad in [0..len + 1, len + 1..len + 2, ten..nine] {
            let error = BlobStream::from_download(download.clone(), bad.clone()).unwrap_err();
            assert!(
                matches!(error, StoreError::InvalidRange { start, end, blob_len, .. }
                    if start == bad.start && end == bad.end && blob_len == len),
                "{error}"
            );
            assert!(error.to_string().contains(&blob.digest().to_string()));
        }
        let mut stream = BlobStream::from_download(download.clone(), 0..len).unwrap();
        let (result, _) = stream.next_chunk(Vec::new()).await;
        assert!(matches!(result, Err(StoreError::EmptyBuffer { .. })));
        assert_eq!(stream.remaining(), len, "an error does not move the stream");
        let mut empty = BlobStream::from_download(download.clone(), 3..3).unwrap();
        let (result, buf) = empty.next_chunk(Vec::new()).await;
        result.unwrap();
        assert!(
            buf.is_empty(),
            "an empty range ends at once, whatever the buffer"
        );

        // The same from the complete blob.
        download.complete().await.unwrap();
        drop(download);
        for range in &ranges {
            for &capacity in &capacities {
                let file = store.open_blob(&blob.digest()).await.unwrap().unwrap();
                let mut stream = BlobStream::from_blob(file, range.clone()).unwrap();
                check(
                    read_to_end(&mut stream, capacity, None).await,
                    range,
                    capacity,
                );
            }
        }
        for bad in [0..len + 1, ten..nine] {
            let file = store.open_blob(&blob.digest()).await.unwrap().unwrap();
            let error = BlobStream::from_blob(file, bad).unwrap_err();
            assert!(matches!(error, StoreError::InvalidRange { .. }), "{error}");
        }
    });
}

/// A stream from a complete blob keeps it pinned against eviction.
#[test]
fn a_stream_from_a_blob_pins_it() {
    run(async {
        let dir = TempDir::new("stream-blob");
        let config = StoreConfig {
            evict_idle_after: Some(Duration::from_secs(100)),
            ..test_config()
        };
        let (store, _) = open_store(dir.path(), config).await;
        let blob = TestBlob::new(3 * P as usize + 5, 84, 2);
        let now = complete_blobs(&store, &[&blob]).await;
        let file = store.open_blob(&blob.digest()).await.unwrap().unwrap();
        let mut stream = BlobStream::from_blob(file, 0..blob.data.len() as u64).unwrap();
        let first = chunk(&mut stream, P as usize).await;
        assert!(first == blob.data[..P as usize]);

        let later = now + Duration::from_secs(1000);
        let report = store.evict_with_usage(later, None).await;
        assert!(report.evicted.is_empty());
        assert_eq!(report.n_pinned_skipped, 1);
        let (rest, _) = read_to_end(&mut stream, 4096, None).await;
        assert!(rest == blob.data[P as usize..]);
        drop(stream);
        let report = store.evict_with_usage(later, None).await;
        assert_eq!(evicted(&report), vec![(blob.digest(), EvictReason::Idle)]);
    });
}

/// The download completes mid-stream: `data` is renamed into `blobs/` and the directory
/// removed, and the stream's descriptor keeps reading the same file.
#[test]
fn a_stream_continues_across_completion() {
    run(async {
        let dir = TempDir::new("stream-complete");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(8 * P as usize + 9, 85, 4);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let data_path = store.inner.layout.download_dir(&blob.digest()).join("data");
        write_pieces_concurrently(&download, &blob, &[0, 1, 2]).await;
        let mut stream =
            BlobStream::from_download(download.clone(), 10..blob.data.len() as u64).unwrap();
        let first = chunk(&mut stream, 2 * P as usize).await;
        assert!(first == blob.data[10..10 + 2 * P as usize]);

        let rest: Vec<u32> = (3..blob.n_pieces()).collect();
        write_pieces_concurrently(&download, &blob, &rest).await;
        let path = download.complete().await.unwrap();
        assert!(!data_path.exists(), "data was renamed");
        assert!(dir_entries(&dir.path().join("downloads")).is_empty());
        // Failing a completed download changes nothing.
        download.fail("too late".to_owned());
        assert_eq!(download.complete().await.unwrap(), path);
        download.wait_piece(PieceIndex(0)).await.unwrap();
        // Only this stream's handle is left: the stream still pins the blob.
        drop(download);

        let (rest, _) = read_to_end(&mut stream, P as usize, None).await;
        assert!(rest == blob.data[10 + 2 * P as usize..]);
        drop(stream);
        assert_eq!(file_digest(&path), blob.digest());
    });
}

/// `fail` wakes a stream waiting for a piece (and a waiter on another thread): both get the
/// reason. Stored pieces stay readable; writes are refused.
#[test]
fn fail_wakes_waiting_streams() {
    let dir = TempDir::new("stream-fail");
    run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(4 * P as usize, 86, 2);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        write_piece(&download, &blob, 0).await;

        // A waiter on another runtime, through the Send handle.
        let handle = download.handle();
        let other_thread = std::thread::spawn(move || run(handle.wait_piece(PieceIndex(3))));

        // The reader signals after its first chunk and then, without yielding, parks in
        // `wait_piece(1)`: when this task runs again, the reader is waiting.
        let got_first = Rc::new((Cell::new(false), event_listener::Event::new()));
        let listener = got_first.1.listen();
        let reader = {
            let got_first = Rc::clone(&got_first);
            let mut stream =
                BlobStream::from_download(download.clone(), 0..blob.data.len() as u64).unwrap();
            compio::runtime::spawn(async move {
                let first = chunk(&mut stream, 4 * P as usize).await;
                got_first.0.set(true);
                got_first.1.notify(usize::MAX);
                let (result, _) = stream.next_chunk(Vec::with_capacity(P as usize)).await;
                (first, result, stream.remaining())
            })
        };
        listener.await;
        assert!(got_first.0.get());

        download.fail("disk full".to_owned());
        let (first, result, remaining) = reader.await.unwrap();
        assert!(first == blob.data[..P as usize]);
        let error = result.unwrap_err();
        assert!(
            matches!(&error, StoreError::Poisoned { reason, .. } if reason == "disk full"),
            "{error}"
        );
        assert_eq!(remaining, 3 * P64);
        let error = other_thread.join().unwrap().unwrap_err();
        assert!(matches!(error, StoreError::Poisoned { .. }), "{error}");

        // A stored piece still resolves and reads; a missing one errors at once; writes and
        // completion are refused; the first reason stays.
        download.wait_piece(PieceIndex(0)).await.unwrap();
        download.fail("second reason".to_owned());
        let error = download.wait_piece(PieceIndex(2)).await.unwrap_err();
        assert!(error.to_string().contains("disk full"), "{error}");
        let (result, _) = download.write_piece(PieceIndex(1), blob.piece(1)).await;
        assert!(matches!(result, Err(StoreError::Poisoned { .. })));
        assert!(matches!(
            download.complete().await,
            Err(StoreError::Poisoned { .. })
        ));
        let mut stream = BlobStream::from_download(download.clone(), 0..P64).unwrap();
        let (bytes, _) = read_to_end(&mut stream, P as usize, Some(&download)).await;
        assert!(bytes == blob.data[..P as usize]);

        // The files stay until discarded, once every handle is gone.
        let digest = blob.digest();
        drop((stream, download));
        store.discard_download(&digest).await.unwrap();
        assert!(dir_entries(&dir.path().join("downloads")).is_empty());
    });
}

/// `wait_piece`: at once for a stored piece, an error out of range, woken by a commit on
/// another thread's runtime.
#[test]
fn wait_piece_wakes_across_shards() {
    let dir = TempDir::new("stream-wait");
    run(async {
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = Arc::new(TestBlob::new(3 * P as usize, 87, 1));
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let error = download.wait_piece(PieceIndex(3)).await.unwrap_err();
        assert!(
            matches!(error, StoreError::PieceOutOfRange { .. }),
            "{error}"
        );

        let writer = {
            let handle = download.handle();
            let blob = Arc::clone(&blob);
            std::thread::spawn(move || {
                run(async move {
                    let download = handle.open().await.unwrap();
                    write_piece(&download, &blob, 2).await;
                });
            })
        };
        download.wait_piece(PieceIndex(2)).await.unwrap();
        assert!(download.has_piece(PieceIndex(2)));
        writer.join().unwrap();
        download.wait_piece(PieceIndex(2)).await.unwrap();
        assert!(!download.has_piece(PieceIndex(1)));
    });
}

/// An empty blob streams nothing.
#[test]
fn an_empty_blob_streams_nothing() {
    run(async {
        let dir = TempDir::new("stream-empty");
        let (store, _) = open_store(dir.path(), test_config()).await;
        let blob = TestBlob::new(0, 88, 1);
        let download = store.begin_download(&blob.metainfo).await.unwrap();
        let mut stream = BlobStream::from_download(download.clone(), 0..0).unwrap();
        assert_eq!(chunk(&mut stream, 16).await, Vec::<u8>::new());
        assert!(BlobStream::from_download(download, 0..1).is_err());
    });
}
