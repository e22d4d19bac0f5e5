//! What the HTTP tests share: a tracker, engines, a server on its own thread, and `curl` as
//! the client.

#![allow(clippy::unwrap_used, dead_code)]

pub mod fixture;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use shoal_engine::{Engine, EngineConfig};
use shoal_servers::http::{Handler, HttpConfig, serve};
use shoal_servers::tracker::TrackerServerConfig;

/// Longest wait for a raw client's read, or for a condition a test polls.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

pub fn run<F: Future>(body: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(body)
}

/// A tracker on its own thread (for the rest of the test process).
pub fn tracker() -> SocketAddr {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        run(async move {
            let listener = compio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            shoal_servers::tracker::serve(listener, TrackerServerConfig::default(), 7)
                .await
                .unwrap();
        });
    });
    receiver.recv().unwrap()
}

/// A tracker with `config` on `addr` (bound once the address is free, within [`WAIT_MAX`]),
/// on its own thread for the rest of the test process.
pub fn tracker_at(addr: SocketAddr, config: TrackerServerConfig) {
    std::thread::spawn(move || {
        run(async move {
            let deadline = std::time::Instant::now() + WAIT_MAX;
            let listener = loop {
                match compio::net::TcpListener::bind(addr).await {
                    Ok(listener) => break listener,
                    Err(error) => {
                        assert!(std::time::Instant::now() < deadline, "bind {addr}: {error}");
                        compio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            shoal_servers::tracker::serve(listener, config, 7)
                .await
                .unwrap();
        });
    });
}

/// An engine of two unpinned shards storing under `dir/name`.
pub fn engine_config(dir: &Path, name: &str, tracker: SocketAddr) -> EngineConfig {
    let mut config = EngineConfig::new(dir.join(name), vec![tracker]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.shards = 2;
    config.pin_threads = false;
    config
}

pub fn engine(dir: &Path, name: &str, tracker: SocketAddr) -> Engine {
    Engine::start(engine_config(dir, name, tracker)).unwrap()
}

/// A fresh scratch directory (on /dev/shm when there is one).
pub fn scratch(kind: &str, name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("shoal-{kind}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `len` pseudo-random bytes.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// An HTTP server on its own thread and runtime; stopped (and joined) on drop.
pub struct Served {
    pub addr: SocketAddr,
    stop: flume::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// Serves the handler `make` builds (on the server's runtime) on a loopback port.
    pub fn start<H, F, M>(make: M) -> Served
    where
        H: Handler,
        F: Future<Output = H>,
        M: FnOnce() -> F + Send + 'static,
    {
        Served::start_at("127.0.0.1:0".parse().unwrap(), make)
    }

    /// [`Served::start`] on `addr`; a port just released by a stopped server may stay
    /// bound for a few milliseconds (io_uring closes asynchronously): the bind is retried
    /// for at most [`WAIT_MAX`].
    pub fn start_at<H, F, M>(addr: SocketAddr, make: M) -> Served
    where
        H: Handler,
        F: Future<Output = H>,
        M: FnOnce() -> F + Send + 'static,
    {
        let (stop, stopped) = flume::bounded::<()>(1);
        let (ready, address) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            run(async move {
                let deadline = std::time::Instant::now() + WAIT_MAX;
                let listener = loop {
                    match compio::net::TcpListener::bind(addr).await {
                        Ok(listener) => break listener,
                        Err(error) => {
                            assert!(std::time::Instant::now() < deadline, "bind {addr}: {error}");
                            compio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                let handler = make().await;
                ready.send(listener.local_addr().unwrap()).unwrap();
                let config = HttpConfig {
                    connections_max: 8,
                    ..HttpConfig::default()
                };
                let server = compio::runtime::spawn(serve(listener, Rc::new(handler), config));
                let _ = stopped.recv_async().await;
                drop(server);
            });
        });
        Served {
            addr: address.recv().unwrap(),
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One response as curl saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.header("content-type"), Some("application/json"));
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Runs `curl -s -i ARGS…` (`-I` instead of `-i` for a HEAD) and splits its output. Interim
/// `100 Continue` heads are skipped.
pub fn curl(args: &[&str]) -> Reply {
    let head = args.contains(&"-I");
    let mut command = Command::new("curl");
    command.arg("-s").arg("--max-time").arg("60");
    if !head {
        command.arg("-i");
    }
    let output = command.args(args).output().unwrap();
    assert!(output.status.success(), "curl {args:?}: {output:?}");
    let mut text: &[u8] = &output.stdout;
    loop {
        let split = text
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(text.len());
        let head_text = String::from_utf8_lossy(&text[..split]).into_owned();
        let body = text.get(split + 4..).unwrap_or_default();
        let mut lines = head_text.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if status == 100 {
            text = body;
            continue;
        }
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Reply {
            status,
            headers,
            body: body.to_vec(),
        };
    }
}

/// Polls `condition` until it holds, for at most [`WAIT_MAX`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
