//! Piece-write throughput of the store, by number of concurrent writers.
//!
//! Writes a synthetic blob through `Download::write_piece` (each call returns once the piece
//! and its bit are durable) with 1, 4 and 16 concurrent writer tasks on one compio runtime,
//! then completes it (which re-hashes the whole blob). With one writer every piece pays two
//! fdatasyncs; with more, the group commit shares them.
//!
//! ```text
//! cargo run --release -p shoal-perf --bin store_write_bench -- DIR [BLOB_MIB] [PIECE_KIB]
//! ```
//!
//! DIR is the filesystem to measure (a fresh subdirectory is used and removed). Every piece
//! of the synthetic blob has the same content, so no time goes into generating data.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program that prints its figures

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use sha2::Digest as _;
use shoal_engine::proto::metainfo::Metainfo;
use shoal_engine::proto::{Digest, PieceIndex};
use shoal_engine::store::{Store, StoreConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: store_write_bench DIR [BLOB_MIB] [PIECE_KIB]");
        std::process::exit(2);
    };
    let parse = |arg: Option<String>, default: u64| {
        arg.map(|text| text.parse().expect("a number"))
            .unwrap_or(default)
    };
    let blob_mib = parse(args.next(), 512);
    let piece_kib = parse(args.next(), 1024);
    let piece_len = (piece_kib * 1024) as u32;
    let blob_len = blob_mib << 20;
    assert!(
        blob_len.is_multiple_of(u64::from(piece_len)),
        "whole pieces only"
    );
    let n_pieces = (blob_len / u64::from(piece_len)) as u32;

    let piece: Vec<u8> = (0..piece_len).map(|i| (i * 7 + 3) as u8).collect();
    let piece_hash: [u8; 32] = sha2::Sha256::digest(&piece).into();
    let mut blob_hasher = sha2::Sha256::new();
    for _ in 0..n_pieces {
        blob_hasher.update(&piece);
    }
    let digest = Digest::Sha256(blob_hasher.finalize().into());
    let metainfo = Metainfo::from_parts(
        digest,
        blob_len,
        piece_len,
        128,
        vec![piece_hash; n_pieces as usize],
    )
    .expect("valid metainfo");

    let root = dir.join(format!("store-write-bench-{}", std::process::id()));
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    println!(
        "store write: {blob_mib} MiB blob, {piece_kib} KiB pieces, {n_pieces} pieces, driver {:?}, under {}",
        runtime.driver_type(),
        dir.display()
    );
    for n_writers in [1u32, 4, 16] {
        let _ = std::fs::remove_dir_all(&root);
        let (write_s, complete_s) = runtime.block_on(measure(
            root.clone(),
            metainfo.clone(),
            piece.clone(),
            n_writers,
        ));
        let mib_per_s = blob_mib as f64 / write_s;
        println!(
            "  {n_writers:>2} writers: write_piece {write_s:.2} s = {mib_per_s:.0} MiB/s \
             ({:.2} ms per piece); complete (fsync, re-hash, rename) {complete_s:.2} s",
            write_s * 1000.0 / f64::from(n_pieces)
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

async fn measure(root: PathBuf, metainfo: Metainfo, piece: Vec<u8>, n_writers: u32) -> (f64, f64) {
    let (store, _) = Store::open(&root, StoreConfig::default())
        .await
        .expect("store opens");
    let download = store.begin_download(&metainfo).await.expect("begins");
    let next = Rc::new(Cell::new(0u32));
    let n_pieces = metainfo.n_pieces();
    let start = Instant::now();
    let writers: Vec<_> = (0..n_writers)
        .map(|_| {
            let download = download.clone();
            let next = Rc::clone(&next);
            let mut buffer = piece.clone();
            compio::runtime::spawn(async move {
                loop {
                    let index = next.get();
                    if index == n_pieces {
                        break;
                    }
                    next.set(index + 1);
                    let (result, returned) = download.write_piece(PieceIndex(index), buffer).await;
                    result.expect("piece written");
                    buffer = returned;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let write_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    download.complete().await.expect("completes");
    (write_s, start.elapsed().as_secs_f64())
}
