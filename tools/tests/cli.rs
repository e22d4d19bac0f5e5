//! The `shoal` binary as a user runs it.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn binary(name: &str) -> PathBuf {
    assert_eq!(name, "shoal");
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name)).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn info_hash_line(text: &str) -> String {
    text.lines()
        .find(|line| line.starts_with("info_hash"))
        .unwrap()
        .to_owned()
}

#[test]
fn metainfo_round_trips_through_a_file() {
    let dir = scratch_dir("roundtrip");
    let blob = dir.join("blob");
    // 3 MiB + 5 bytes: three whole pieces and a short one.
    let bytes: Vec<u8> = (0..(3 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&blob, &bytes).unwrap();
    let encoded = dir.join("blob.metainfo");
    let built = run(
        "shoal",
        &[
            "metainfo",
            blob.to_str().unwrap(),
            "--out",
            encoded.to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let text = stdout(&built);
    assert!(text.contains("pieces            4"), "{text}");
    assert!(text.contains("blob_bytes        3145733"), "{text}");
    assert!(text.contains("piece_check       sha256-chain"), "{text}");
    let inspected = run("shoal", &["inspect-metainfo", encoded.to_str().unwrap()]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    assert_eq!(info_hash_line(&text), info_hash_line(&stdout(&inspected)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_digest_and_damaged_metainfo_are_clear_errors() {
    let dir = scratch_dir("errors");
    let blob = dir.join("blob");
    std::fs::write(&blob, b"hello").unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let mismatch = run(
        "shoal",
        &["metainfo", blob.to_str().unwrap(), "--digest", &wrong],
    );
    assert!(!mismatch.status.success());
    assert!(
        stderr(&mismatch).contains("digest"),
        "{}",
        stderr(&mismatch)
    );

    let bad_digest = run(
        "shoal",
        &["metainfo", blob.to_str().unwrap(), "--digest", "md5:abc"],
    );
    assert!(!bad_digest.status.success());
    assert!(
        stderr(&bad_digest).contains("not supported"),
        "{}",
        stderr(&bad_digest)
    );

    let encoded = dir.join("m");
    let built = run(
        "shoal",
        &[
            "metainfo",
            blob.to_str().unwrap(),
            "--out",
            encoded.to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let full = std::fs::read(&encoded).unwrap();
    std::fs::write(&encoded, &full[..full.len() - 1]).unwrap();
    let truncated = run("shoal", &["inspect-metainfo", encoded.to_str().unwrap()]);
    assert!(!truncated.status.success());
    assert!(
        stderr(&truncated).contains("truncated"),
        "{}",
        stderr(&truncated)
    );
    std::fs::write(&encoded, b"not a metainfo at all").unwrap();
    let garbage = run("shoal", &["inspect-metainfo", encoded.to_str().unwrap()]);
    assert!(!garbage.status.success());
    assert!(!stderr(&garbage).is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tracker_prints_its_address_and_answers() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    use shoal_proto::tracker_wire::{self, Request, Response};

    // The shipped config file, with the command line overriding its address.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/tracker.toml");
    let mut child = Command::new(binary("shoal"))
        .args(["tracker", "--config", config, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line.strip_prefix("tracker listening on ").unwrap();

    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut frame = Vec::new();
    let digest = shoal_proto::Digest::sha256_of(b"nothing stored");
    tracker_wire::encode_request(
        &Request::GetMetainfo {
            digest,
            repository: None,
        },
        &mut frame,
    );
    stream.write_all(&frame).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    let response = loop {
        if let Some((response, _)) = tracker_wire::parse_response(&reply).unwrap() {
            break response;
        }
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "tracker closed early");
        reply.push(byte[0]);
    };
    assert_eq!(response, Response::NotFound);

    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn tracker_refuses_a_bad_listen_address() {
    let output = run("shoal", &["tracker", "--listen", "not-an-address"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--listen"), "{}", stderr(&output));
}

#[test]
fn tracker_config_files_with_unknown_keys_or_bad_values_are_refused_by_name() {
    let dir = scratch_dir("tracker-config");
    for (text, named) in [
        (
            "[tracker]\nannounce_intervall = \"5s\"\n",
            "announce_intervall",
        ),
        ("[tracker]\npeer_ttl = \"soon\"\n", "peer_ttl"),
        ("[tracker]\npeer_ttl = \"1s\"\n", "peer_ttl"),
    ] {
        let file = dir.join("tracker.toml");
        std::fs::write(&file, text).unwrap();
        let output = run("shoal", &["tracker", "--config", file.to_str().unwrap()]);
        assert!(!output.status.success(), "{text:?} was accepted");
        let message = stderr(&output);
        assert!(message.contains(named), "{text:?}: {message}");
        assert!(message.contains("tracker.toml"), "{text:?}: {message}");
    }
    let missing = run(
        "shoal",
        &["tracker", "--config", "/nonexistent/tracker.toml"],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nonexistent/tracker.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- `--config FILE` for every component: defaults < file < flags. ---

use std::io::{Read as _, Write as _};
use std::time::Duration;

use shoal_perf::procs::{Proc, Scratch};

/// The longest a component may take to say it serves.
const WAIT_MAX: Duration = Duration::from_secs(60);

/// The longest one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `text` to `scratch/name` and gives its path.
fn config_file(scratch: &Scratch, name: &str, text: &str) -> String {
    let path = scratch.path(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Starts `shoal ARGS…`; returns it and the address it printed after `prefix`.
fn start(scratch: &Scratch, name: &str, args: &[&str], prefix: &str) -> (Proc, String) {
    let stderr = scratch.path(&format!("{name}.stderr"));
    let mut proc = Proc::start(name, &binary("shoal"), args, &[], stderr).unwrap();
    let line = proc.line_starting(prefix, WAIT_MAX).unwrap();
    let addr = line.strip_prefix(prefix).unwrap();
    let addr = addr.split(' ').next().unwrap().to_owned();
    (proc, addr)
}

/// `GET path` over HTTP/1.1 (`Connection: close`): the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs `shoal ARGS…` to its end (for commands that refuse to start): exit code and stderr.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = run("shoal", args);
    (output.status.code(), stderr(&output))
}

#[test]
fn config_files_with_unknown_keys_or_bad_values_are_refused_naming_key_file_and_line() {
    let scratch = Scratch::new("cli-config-errors").unwrap();
    let dir = scratch.root().to_string_lossy().into_owned();
    // A file with everything required, so that only the case's key is at fault.
    let engine = format!("[engine]\ndata_dir = \"{dir}/e\"\ntrackers = [\"127.0.0.1:9\"]\n");
    let proxy = format!(
        "[proxy]\ndata_dir = \"{dir}/p\"\norigin = \"127.0.0.1:9\"\nbuild_index = \"127.0.0.1:9\"\n"
    );
    let index = format!("[build_index]\ndata_dir = \"{dir}/b\"\n");
    // (component, file, the key the message must name, the line of an unknown key).
    let cases: Vec<(&str, String, &str, Option<u32>)> = vec![
        // Unknown keys and sections.
        (
            "agent",
            "[agent]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n".into(),
            "lisen",
            Some(3),
        ),
        (
            "agent",
            "[engine.store]\nevict = 1\n".into(),
            "evict",
            Some(2),
        ),
        (
            "origin",
            "[origin]\nblob_max = 1\n".into(),
            "blob_max",
            Some(2),
        ),
        ("origin", "[agent]\n".into(), "agent", Some(1)),
        (
            "build-index",
            "[build_index]\ndata-dir = \"x\"\n".into(),
            "data-dir",
            Some(2),
        ),
        (
            "proxy",
            "\n[proxy.uploads]\nsession_max = 1\n".into(),
            "session_max",
            Some(3),
        ),
        (
            "dev",
            "[dev]\nport_from = 7100\n".into(),
            "port_from",
            Some(2),
        ),
        // Bad values: units, addresses, ranges.
        (
            "agent",
            "[engine]\negress_limit = \"fast\"\n".into(),
            "egress_limit",
            None,
        ),
        (
            "agent",
            format!("{engine}connections_max = 0\n"),
            "connections_max",
            None,
        ),
        (
            "agent",
            format!("{engine}tcp_congestion = \"warp\"\n"),
            "engine.tcp_congestion",
            None,
        ),
        (
            "origin",
            format!("{engine}[engine.store]\nevict_interval = \"1m\"\n"),
            "evict_interval",
            None,
        ),
        (
            "origin",
            format!("{engine}tcp_congestion = \"\"\n"),
            "engine.tcp_congestion",
            None,
        ),
        (
            "agent",
            "[agent]\nproxy = \"127.0.0.1\"\n".into(),
            "proxy",
            None,
        ),
        (
            "origin",
            "[origin]\nblob_bytes_max = \"lots\"\n".into(),
            "blob_bytes_max",
            None,
        ),
        (
            "origin",
            format!("{engine}[origin]\nblob_bytes_max = 0\n"),
            "blob_bytes_max",
            None,
        ),
        (
            "build-index",
            "[build_index]\nlisten = \"nowhere\"\n".into(),
            "listen",
            None,
        ),
        (
            "build-index",
            format!("{index}[http]\nconnections_max = 0\n"),
            "connections_max",
            None,
        ),
        (
            "proxy",
            "[proxy.uploads]\nidle_timeout = \"forever\"\n".into(),
            "idle_timeout",
            None,
        ),
        (
            "proxy",
            format!("{proxy}[proxy.uploads]\nsessions_max = 0\n"),
            "sessions_max",
            None,
        ),
        (
            "dev",
            "[dev]\nports_from = 70000\n".into(),
            "ports_from",
            None,
        ),
        ("dev", "[dev]\nshards = 0\n".into(), "dev.shards", None),
        (
            "dev",
            format!("[dev]\ndata_dir = \"{dir}/d\"\n[engine]\ndata_dir = \"{dir}/d2\"\n"),
            "engine.data_dir",
            None,
        ),
        (
            "dev",
            format!("[dev]\ndata_dir = \"{dir}/d\"\n[engine]\nconnections_max = 0\n"),
            "connections_max",
            None,
        ),
    ];
    for (n, (component, text, key, line)) in cases.iter().enumerate() {
        let file = config_file(&scratch, &format!("{component}-{n}.toml"), text);
        let (code, message) = refused(&[component, "--config", &file]);
        assert_eq!(code, Some(1), "{component} {text:?}: {message}");
        assert!(message.contains(key), "{component} {text:?}: {message}");
        assert!(message.contains(&file), "{component} {text:?}: {message}");
        if let Some(line) = line {
            let at = format!("line {line}");
            assert!(message.contains(&at), "{component} {text:?}: {message}");
        }
    }
    // Nothing was created for the refused configurations.
    for dir in ["e", "p", "b", "d", "d2"] {
        assert!(!scratch.path(dir).exists(), "{dir} was created");
    }
}

#[test]
fn a_missing_config_file_is_refused_naming_its_path() {
    for component in ["agent", "origin", "build-index", "proxy", "dev", "tracker"] {
        let path = format!("/nonexistent/{component}.toml");
        let (code, message) = refused(&[component, "--config", &path]);
        assert_eq!(code, Some(1), "{component}: {message}");
        assert!(message.contains(&path), "{component}: {message}");
    }
}

#[test]
fn a_required_setting_missing_from_flags_and_file_names_both() {
    let scratch = Scratch::new("cli-config-required").unwrap();
    let dir = scratch.root().to_string_lossy().into_owned();
    let no_trackers = config_file(
        &scratch,
        "agent.toml",
        &format!("[engine]\ndata_dir = \"{dir}/agent\"\n"),
    );
    let half_registry = config_file(
        &scratch,
        "agent-registry.toml",
        "[agent]\norigin = \"127.0.0.1:9\"\n",
    );
    let no_origin = config_file(
        &scratch,
        "proxy.toml",
        &format!("[proxy]\ndata_dir = \"{dir}/proxy\"\nbuild_index = \"127.0.0.1:9\"\n"),
    );
    let empty = config_file(&scratch, "empty.toml", "");
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["agent", "--config", &no_trackers],
            &["--tracker", "engine.trackers"],
        ),
        (
            &["agent", "--tracker", "127.0.0.1:9"],
            &["--data-dir", "engine.data_dir"],
        ),
        (
            &[
                "agent",
                "--config",
                &half_registry,
                "--data-dir",
                &dir,
                "--tracker",
                "127.0.0.1:9",
            ],
            &["--build-index", "agent.build_index"],
        ),
        (
            &["origin", "--config", &empty],
            &["--data-dir", "engine.data_dir"],
        ),
        (
            &["build-index", "--config", &empty],
            &["--data-dir", "build_index.data_dir"],
        ),
        (
            &["proxy", "--config", &no_origin],
            &["--origin", "proxy.origin"],
        ),
        (
            &["proxy", "--origin", "127.0.0.1:9"],
            &["--data-dir", "proxy.data_dir"],
        ),
    ];
    for (args, named) in cases {
        let (code, message) = refused(args);
        assert_eq!(code, Some(1), "{args:?}: {message}");
        for name in named {
            assert!(message.contains(name), "{args:?}: {message}");
        }
    }
    assert!(!scratch.path("agent").exists());
    assert!(!scratch.path("proxy").exists());
}

#[test]
fn build_index_runs_from_its_config_file_alone() {
    let scratch = Scratch::new("cli-config-build-index").unwrap();
    let data = scratch.path("tags");
    let file = config_file(
        &scratch,
        "build-index.toml",
        &format!(
            "[build_index]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[http]\nconnections_max = 8\n",
            data.display()
        ),
    );
    let (_index, addr) = start(
        &scratch,
        "build-index",
        &["build-index", "--config", &file],
        "build-index listening on ",
    );
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let (status, body) = http_get(&addr, "/internal/repositories");
    assert_eq!(status, 200, "{body}");
    assert!(data.is_dir(), "the file's data_dir was not used");
}

#[test]
fn a_flag_overrides_the_files_listen_address() {
    let scratch = Scratch::new("cli-config-precedence").unwrap();
    // The file says 127.0.0.2 (loopback too), the flag 127.0.0.1: the printed address tells
    // which one was used.
    let data = scratch.path("tags");
    let file = config_file(
        &scratch,
        "build-index.toml",
        &format!(
            "[build_index]\nlisten = \"127.0.0.2:0\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    );
    let (_alone, addr) = start(
        &scratch,
        "build-index-file",
        &["build-index", "--config", &file],
        "build-index listening on ",
    );
    assert!(addr.starts_with("127.0.0.2:"), "{addr}");
    let other = scratch.path("other-tags");
    let other = other.to_string_lossy();
    let (_overridden, addr) = start(
        &scratch,
        "build-index-flag",
        &[
            "build-index",
            "--config",
            &file,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &other,
        ],
        "build-index listening on ",
    );
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(http_get(&addr, "/internal/repositories").0, 200);
    assert!(scratch.path("other-tags").is_dir());

    // The agent: its address, its engine and its HTTP bounds from the file, the address
    // overridden by the flag. No tracker is needed until a blob is fetched.
    let agent = config_file(
        &scratch,
        "agent.toml",
        &format!(
            "[agent]\nlisten = \"127.0.0.2:0\"\n[engine]\ndata_dir = \"{}\"\ntrackers = [\"127.0.0.1:9\"]\npeer_listen = \"127.0.0.1:0\"\nshards = 1\npin_threads = false\n",
            scratch.path("agent").display()
        ),
    );
    let (_agent, addr) = start(
        &scratch,
        "agent-file",
        &["agent", "--config", &agent],
        "agent listening on ",
    );
    assert!(addr.starts_with("127.0.0.2:"), "{addr}");
    assert_eq!(http_get(&addr, "/v2/").0, 200);
    let (_agent, addr) = start(
        &scratch,
        "agent-flag",
        &[
            "agent",
            "--config",
            &agent,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &scratch.path("agent-2").to_string_lossy(),
        ],
        "agent listening on ",
    );
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(http_get(&addr, "/v2/").0, 200);
    assert!(scratch.path("agent").is_dir() && scratch.path("agent-2").is_dir());
}

#[test]
fn origin_and_proxy_run_from_their_config_files() {
    let scratch = Scratch::new("cli-config-origin-proxy").unwrap();
    let origin = config_file(
        &scratch,
        "origin.toml",
        &format!(
            "[origin]\nlisten = \"127.0.0.1:0\"\nblob_bytes_max = \"1MiB\"\n[engine]\ndata_dir = \"{}\"\ntrackers = [\"127.0.0.1:9\"]\npeer_listen = \"127.0.0.1:0\"\nshards = 1\npin_threads = false\n",
            scratch.path("origin").display()
        ),
    );
    let (_origin, origin_addr) = start(
        &scratch,
        "origin",
        &["origin", "--config", &origin],
        "origin listening on ",
    );
    let digest = format!("sha256:{}", "0".repeat(64));
    let (status, _) = http_get(&origin_addr, &format!("/internal/blobs/{digest}"));
    assert_eq!(status, 404);
    assert!(scratch.path("origin").is_dir());

    let proxy = config_file(
        &scratch,
        "proxy.toml",
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\norigin = \"{origin_addr}\"\nbuild_index = \"127.0.0.1:9\"\n[proxy.uploads]\nsessions_max = 4\nblob_bytes_max = \"1MiB\"\n",
            scratch.path("proxy").display()
        ),
    );
    let (_proxy, addr) = start(
        &scratch,
        "proxy",
        &["proxy", "--config", &proxy],
        "proxy listening on ",
    );
    assert_eq!(http_get(&addr, "/v2/").0, 200);
    assert!(scratch.path("proxy").join("uploads").is_dir());
}

#[test]
fn dev_runs_from_its_config_file() {
    const ATTEMPTS: u32 = 8;
    let scratch = Scratch::new("cli-config-dev").unwrap();
    let pid = std::process::id();
    for attempt in 0..ATTEMPTS {
        // A port range derived from the process id (another one if it is taken), as
        // `procs::Shoal::dev` does.
        let slot = pid.wrapping_mul(11).wrapping_add(attempt * 1009 + 37) % 70;
        let ports_from = 20_000 + (slot as u16) * 500;
        let agent = format!("127.0.0.1:{}", ports_from + 450);
        let data = scratch.path(&format!("dev-{attempt}"));
        let file = config_file(
            &scratch,
            &format!("dev-{attempt}.toml"),
            &format!(
                "[dev]\ndata_dir = \"{}\"\nagent_listen = \"{agent}\"\nports_from = {ports_from}\nshards = 1\n[engine]\ndriver = \"poll\"\nupload_path = \"copy\"\n",
                data.display()
            ),
        );
        let stderr = scratch.path(&format!("dev-{attempt}.stderr"));
        let mut dev = Proc::start(
            "dev",
            &binary("shoal"),
            &["dev", "--config", &file],
            &[],
            stderr,
        )
        .unwrap();
        let Ok(line) = dev.line_starting("shoal dev ready", WAIT_MAX) else {
            continue;
        };
        assert!(line.contains(&data.display().to_string()), "{line}");
        assert_eq!(http_get(&agent, "/v2/").0, 200);
        let tracker = format!("127.0.0.1:{ports_from}");
        assert!(std::net::TcpStream::connect(&tracker).is_ok(), "{tracker}");
        assert!(data.join("agent").is_dir() && data.join("origin").is_dir());
        return;
    }
    panic!("shoal dev did not start on any of {ATTEMPTS} port ranges");
}
