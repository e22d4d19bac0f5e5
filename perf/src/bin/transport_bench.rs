//! Piece transfer over one loopback connection: the transport's two upload paths against a
//! plain blocking `std::net` copy of the same bytes.
//!
//! One sender → one receiver, each its own process (so that each one's CPU time, io_uring
//! kernel workers included, is read from its own `/proc/self/stat`), the sender pinned to
//! CPU 0 and the receiver to CPU 1. The blob is a file on tmpfs cut into pieces; every mode
//! moves the same bytes:
//!
//! - `std`: blocking sender (`read_exact_at` 1 MiB + `write_all`), receiver reads and
//!   discards: the floor.
//! - `std+sha`: the same, the receiver hashing each piece (SHA-256, chunk by chunk as it
//!   arrives) and checking it: the fair baseline for a verifying receiver.
//! - `copy`, `splice`: `PeerConn::send_piece` on [`UploadPath::Copy`] / [`UploadPath::Splice`]
//!   (header frame + payload), receiver `recv` + `recv_piece_payload` (verifying), data
//!   discarded.
//!
//! Modes run interleaved, `ROUNDS` times; the table shows the median of each column.
//!
//! ```text
//! cargo run --release -p shoal-perf --bin transport_bench -- [DIR] [BLOB_MIB] [PIECE_MIB] [ROUNDS]
//! ```
//!
//! Defaults: `/dev/shm`, 1024 MiB, 4 MiB, 3 rounds. Note that on loopback the kernel's TCP
//! work for both ends runs mostly in the sender's context (softirq on transmit), so the
//! sender's system time includes some of what a NIC-backed receiver would pay.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program that prints its figures

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::Digest as _;
use shoal_engine::proto::metainfo::PieceVerifier;
use shoal_engine::proto::wire::{Message, PieceHeader};
use shoal_engine::proto::{PieceIndex, Rng};
use shoal_engine::transport::{PeerConn, UPLOAD_CHUNK_LEN, UploadPath, Verdict};

const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Std,
    StdSha,
    Copy,
    Splice,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Std, Mode::StdSha, Mode::Copy, Mode::Splice];

    fn name(self) -> &'static str {
        match self {
            Mode::Std => "std",
            Mode::StdSha => "std+sha",
            Mode::Copy => "copy",
            Mode::Splice => "splice",
        }
    }

    fn from_name(name: &str) -> Mode {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .expect("a mode name")
    }
}

/// What the blob looks like; passed to the receiver process on its command line.
#[derive(Debug, Clone)]
struct Blob {
    data_path: PathBuf,
    hashes_path: PathBuf,
    len: u64,
    piece_len: usize,
}

impl Blob {
    fn n_pieces(&self) -> usize {
        (self.len / self.piece_len as u64) as usize
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    sender_user_s: f64,
    sender_sys_s: f64,
    receiver_user_s: f64,
    receiver_sys_s: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--receive") {
        receiver_main(&args[1..]);
        return;
    }
    let arg = |i: usize, default: u64| {
        args.get(i)
            .map(|text| text.parse().expect("a number"))
            .unwrap_or(default)
    };
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let blob_mib = arg(1, 1024);
    let piece_mib = arg(2, 4);
    let rounds = arg(3, 3) as usize;
    assert!(blob_mib.is_multiple_of(piece_mib), "whole pieces only");

    let blob = Blob {
        data_path: dir.join(format!("transport-bench-{}.data", std::process::id())),
        hashes_path: dir.join(format!("transport-bench-{}.sha256", std::process::id())),
        len: blob_mib << 20,
        piece_len: (piece_mib << 20) as usize,
    };
    write_blob(&blob);
    let driver = compio::runtime::Runtime::new()
        .expect("runtime")
        .driver_type();
    println!(
        "transport bench: {blob_mib} MiB in {piece_mib} MiB pieces from {}, sender on CPU {SENDER_CPU}, \
         receiver on CPU {RECEIVER_CPU}, compio driver {driver:?}, {rounds} rounds",
        dir.display()
    );
    pin_to(SENDER_CPU);

    let mut runs: Vec<(Mode, Run)> = Vec::new();
    for round in 0..rounds {
        for mode in Mode::ALL {
            let run = measure(mode, &blob);
            println!(
                "  round {round} {:<8} {:>5.2} GB/s  sender {:.2}+{:.2} s  receiver {:.2}+{:.2} s (user+sys)",
                mode.name(),
                blob.len as f64 / run.seconds / 1e9,
                run.sender_user_s,
                run.sender_sys_s,
                run.receiver_user_s,
                run.receiver_sys_s,
            );
            runs.push((mode, run));
        }
    }
    let _ = std::fs::remove_file(&blob.data_path);
    let _ = std::fs::remove_file(&blob.hashes_path);
    print_table(&blob, &runs);
}

fn print_table(blob: &Blob, runs: &[(Mode, Run)]) {
    let gib = blob.len as f64 / GIB;
    let median_of = |mode: Mode, f: &dyn Fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, run)| f(run))
            .collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let gbps = |mode: Mode| median_of(mode, &|run| blob.len as f64 / run.seconds / 1e9);
    let std_gbps = gbps(Mode::Std);
    let std_sha_gbps = gbps(Mode::StdSha);
    println!();
    println!("median of each column ({gib:.0} GiB per run); CPU in CPU-seconds per GiB, user+sys");
    println!(
        "{:<8} {:>6} {:>8} {:>9} {:>16} {:>16}",
        "mode", "GB/s", "/ std", "/ std+sha", "sender CPU-s", "receiver CPU-s"
    );
    for mode in Mode::ALL {
        let sender_user = median_of(mode, &|run| run.sender_user_s) / gib;
        let sender_sys = median_of(mode, &|run| run.sender_sys_s) / gib;
        let receiver_user = median_of(mode, &|run| run.receiver_user_s) / gib;
        let receiver_sys = median_of(mode, &|run| run.receiver_sys_s) / gib;
        println!(
            "{:<8} {:>6.2} {:>8.2} {:>9.2} {:>6.2} ({:.2}+{:.2}) {:>6.2} ({:.2}+{:.2})",
            mode.name(),
            gbps(mode),
            gbps(mode) / std_gbps,
            gbps(mode) / std_sha_gbps,
            sender_user + sender_sys,
            sender_user,
            sender_sys,
            receiver_user + receiver_sys,
            receiver_user,
            receiver_sys,
        );
    }
}

/// Writes the blob (pseudo-random pieces) and its piece hashes.
fn write_blob(blob: &Blob) {
    let file = std::fs::File::create(&blob.data_path).expect("create the blob file");
    let mut hashes = Vec::with_capacity(blob.n_pieces() * 32);
    let mut rng = Rng::new(7);
    let mut piece = vec![0u8; blob.piece_len];
    for index in 0..blob.n_pieces() {
        for word in piece.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        hashes.extend_from_slice(&sha2::Sha256::digest(&piece));
        file.write_all_at(&piece, (index * blob.piece_len) as u64)
            .expect("write the blob file");
    }
    std::fs::write(&blob.hashes_path, hashes).expect("write the hashes file");
}

/// Runs one transfer: this process sends, a child process receives.
fn measure(mode: Mode, blob: &Blob) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--receive")
        .arg(mode.name())
        .arg(port.to_string())
        .arg(&blob.data_path)
        .arg(&blob.hashes_path)
        .arg(blob.len.to_string())
        .arg(blob.piece_len.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the receiver");

    let before = cpu_times();
    match mode {
        Mode::Std | Mode::StdSha => {
            let (stream, _) = listener.accept().expect("accept");
            send_std(stream, blob);
        }
        Mode::Copy | Mode::Splice => {
            let path = if mode == Mode::Copy {
                UploadPath::Copy
            } else {
                UploadPath::Splice
            };
            listener.set_nonblocking(true).expect("nonblocking");
            send_compio(listener, path, blob);
        }
    }
    let after = cpu_times();

    let stdout = child.stdout.take().expect("child stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the receiver's result");
    let status = child.wait().expect("wait for the receiver");
    assert!(status.success(), "receiver failed: {status}");
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(|field| field.parse().expect("a figure"))
        .collect();
    let [seconds, receiver_user_s, receiver_sys_s] = fields[..] else {
        panic!("bad receiver output {line:?}");
    };
    Run {
        seconds,
        sender_user_s: after.0 - before.0,
        sender_sys_s: after.1 - before.1,
        receiver_user_s,
        receiver_sys_s,
    }
}

fn send_std(mut stream: TcpStream, blob: &Blob) {
    let file = std::fs::File::open(&blob.data_path).expect("open the blob");
    let mut buf = vec![0u8; UPLOAD_CHUNK_LEN];
    let mut offset = 0;
    while offset < blob.len {
        let n = (blob.len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset).expect("read");
        stream.write_all(&buf[..n]).expect("send");
        offset += n as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    // Wait for the receiver to close, so that the whole transfer is inside the measurement.
    let _ = stream.read(&mut [0u8; 1]);
}

fn send_compio(listener: TcpListener, path: UploadPath, blob: &Blob) {
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let listener = compio::net::TcpListener::from_std(listener).expect("listener");
        let (stream, _) = listener.accept().await.expect("accept");
        let mut conn = PeerConn::new(stream, path).expect("conn");
        assert_eq!(conn.upload_path(), path, "path in effect");
        let file = compio::fs::File::open(&blob.data_path)
            .await
            .expect("open the blob");
        for index in 0..blob.n_pieces() {
            let header = PieceHeader {
                piece: PieceIndex(index as u32),
                length: blob.piece_len as u32,
            };
            let offset = (index * blob.piece_len) as u64;
            conn.send_piece(header, &file, offset).await.expect("send");
        }
        conn.send_message(&Message::Complete).await.expect("send");
        // Wait for the receiver's Complete: the whole transfer is inside the measurement.
        let reply = conn.recv().await.expect("the receiver's reply");
        assert_eq!(reply, Message::Complete);
    });
}

// ---- the receiver process -----------------------------------------------------------------

fn receiver_main(args: &[String]) {
    let [mode, port, data_path, hashes_path, len, piece_len] = args else {
        panic!("receiver: bad arguments {args:?}");
    };
    let mode = Mode::from_name(mode);
    let blob = Blob {
        data_path: PathBuf::from(data_path),
        hashes_path: PathBuf::from(hashes_path),
        len: len.parse().expect("length"),
        piece_len: piece_len.parse().expect("piece length"),
    };
    let hashes = read_hashes(&blob.hashes_path);
    assert_eq!(hashes.len(), blob.n_pieces());
    pin_to(RECEIVER_CPU);
    let addr = format!("127.0.0.1:{port}");

    let before = cpu_times();
    let start = Instant::now();
    match mode {
        Mode::Std => receive_std(&addr, &blob, None),
        Mode::StdSha => receive_std(&addr, &blob, Some(&hashes)),
        Mode::Copy | Mode::Splice => receive_compio(&addr, &blob, &hashes),
    }
    let seconds = start.elapsed().as_secs_f64();
    let after = cpu_times();
    println!("{seconds} {} {}", after.0 - before.0, after.1 - before.1);
}

fn read_hashes(path: &Path) -> Vec<[u8; 32]> {
    let bytes = std::fs::read(path).expect("read the hashes");
    bytes
        .chunks_exact(32)
        .map(|chunk| chunk.try_into().expect("32 bytes"))
        .collect()
}

/// Reads the stream to its end in reads of up to one upload chunk; with `hashes`, hashes
/// every read as it arrives and checks each piece.
fn receive_std(addr: &str, blob: &Blob, hashes: Option<&[[u8; 32]]>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut buf = vec![0u8; UPLOAD_CHUNK_LEN];
    let mut hasher = sha2::Sha256::new();
    let mut in_piece = 0;
    let mut piece = 0;
    let mut total = 0u64;
    loop {
        let want = match hashes {
            Some(_) => buf.len().min(blob.piece_len - in_piece),
            None => buf.len(),
        };
        let n = stream.read(&mut buf[..want]).expect("recv");
        if n == 0 {
            break;
        }
        total += n as u64;
        if let Some(hashes) = hashes {
            hasher.update(&buf[..n]);
            in_piece += n;
            if in_piece == blob.piece_len {
                let actual: [u8; 32] = hasher.finalize_reset().into();
                assert_eq!(actual, hashes[piece], "piece {piece}");
                piece += 1;
                in_piece = 0;
            }
        }
    }
    assert_eq!(total, blob.len);
}

fn receive_compio(addr: &str, blob: &Blob, hashes: &[[u8; 32]]) {
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let stream = compio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let mut conn = PeerConn::new(stream, UploadPath::Copy).expect("conn");
        let mut piece_buf = Vec::with_capacity(blob.piece_len);
        let mut n_verified = 0;
        loop {
            match conn.recv().await.expect("recv") {
                Message::Piece(header) => {
                    let expected =
                        PieceVerifier::sha256(hashes[header.piece.0 as usize], header.length);
                    let (verdict, buf) = conn.recv_piece_payload(expected, piece_buf).await;
                    piece_buf = buf;
                    assert_eq!(verdict.expect("payload"), Verdict::Verified);
                    n_verified += 1;
                }
                Message::Complete => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(n_verified, blob.n_pieces());
        conn.send_message(&Message::Complete).await.expect("reply");
    });
}

// ---- helpers ------------------------------------------------------------------------------

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

/// (user, system) CPU seconds of this whole process so far, every thread (io_uring workers
/// included), from `/proc/self/stat`.
fn cpu_times() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let field = |i: usize| fields[i - 3].parse::<f64>().expect("a tick count") / ticks;
    (field(14), field(15))
}
