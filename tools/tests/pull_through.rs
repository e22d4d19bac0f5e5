//! Pull-through of an image that exists only upstream, as separate `shoal` processes with
//! real servers: Debian's `docker-registry` (CNCF distribution) as the upstream, filled by
//! skopeo; an origin and a build-index whose `[[backend]] kind = "registry"` serves the
//! `pt/**` namespace (`pt/<name>` is pulled as upstream `<name>`), neither of which has seen
//! the images; a tracker; eight agents.
//!
//! - Eight `skopeo copy` started together pull the image by digest through the eight agents:
//!   every copy is byte-identical to what was pushed upstream, and the upstream's access log
//!   shows exactly one GET per layer and per config blob (the agents' metainfo requests
//!   meet at the tracker, the origin fetches each blob once however many ask). The manifest
//!   is read upstream once too (see [`an_image_only_upstream_is_pulled_through_eight_agents_at_once`]).
//! - Eight pulls of another image by tag at once: the build-index resolves the tag upstream
//!   once (and reads the manifest for its media type), and again one GET per blob.
//! - Bad input: repository names outside the grammar are refused (agent, origin) and leave
//!   nothing behind; an upstream that serves bytes that do not hash to their digest is a
//!   clear error for the client, leaves nothing in the origin's store, and a later pull,
//!   once the upstream is right again, works.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_perf::clients::{curl_status, layout_blobs as blobs, run, skopeo_copy};
use shoal_perf::oci_layout::Layout;
use shoal_perf::procs::{
    Proc, ProcGroup, Scratch, cached_blob_path, docker_registry, docker_registry_blob_path,
    free_port, listening_addr, requests_in_log,
};

const WAIT: Duration = Duration::from_secs(120);
const AGENTS: usize = 8;

/// Layer sizes of the pulled image (plus its config and manifest).
const LAYER_SIZES: [usize; 4] = [4 << 20, 3 << 19, 300_000, 20_000];

/// The test's `shoal` processes (their stderr printed if it fails).
fn shoal_procs() -> ProcGroup {
    ProcGroup::new(
        Path::new(env!("CARGO_BIN_EXE_shoal")),
        &[("SHOAL_LOG", "info")],
    )
}

/// The address at the end of a `… listening on ADDR` line.
fn listening(proc: &mut Proc, prefix: &str) -> String {
    listening_addr(proc, prefix, WAIT).unwrap()
}

/// `skopeo copy` from `from` into the OCI layout `to` (tag `pulled`), as a process (killed
/// if the test fails).
fn start_pull(scratch: &Scratch, name: &str, from: &str, to: &Path) -> Proc {
    let dest = format!("oci:{}:pulled", to.display());
    Proc::start(
        name,
        Path::new("skopeo"),
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--quiet",
            "--src-tls-verify=false",
            from,
            &dest,
        ],
        &[],
        scratch.path(&format!("{name}.stderr")),
    )
    .unwrap()
}

/// Every blob of the layout at `pulled` is one of `source`'s, byte for byte; `expected`
/// blobs in all.
fn assert_copy_of(pulled: &Path, source: &[(String, Vec<u8>)], expected: usize) {
    let copied = blobs(pulled);
    assert_eq!(copied.len(), expected, "{}", pulled.display());
    for (hex, bytes) in &copied {
        assert!(
            source.iter().any(|(h, b)| h == hex && b == bytes),
            "{}: blob {hex} differs from upstream",
            pulled.display()
        );
    }
}

/// Waits until `check` holds, at most [`WAIT`].
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The image's manifest, config and layer digests (`sha256:…`), from the source layout.
struct Image {
    /// Its repository upstream.
    repo: &'static str,
    manifest: String,
    config: String,
    layers: Vec<String>,
}

fn image_of(layout: &Path, repo: &'static str, manifest: &str) -> Image {
    let hex = manifest.trim_start_matches("sha256:");
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    Image {
        repo,
        manifest: manifest.to_owned(),
        config: parsed["config"]["digest"].as_str().unwrap().to_owned(),
        layers: parsed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["digest"].as_str().unwrap().to_owned())
            .collect(),
    }
}

/// The origin's data directory holds nothing of `digest`: not stored, no download, nothing
/// left in `incoming/`.
fn assert_nothing_of(origin_dir: &Path, digest: &str) {
    assert!(
        !cached_blob_path(origin_dir, digest).exists(),
        "{digest} stored"
    );
    let hex = digest.trim_start_matches("sha256:");
    assert!(
        !origin_dir
            .join("downloads")
            .join(format!("sha256-{hex}"))
            .exists(),
        "{digest}: a download was left"
    );
    let incoming: Vec<PathBuf> = std::fs::read_dir(origin_dir.join("incoming"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(incoming.is_empty(), "left in incoming/: {incoming:?}");
}

#[test]
fn an_image_only_upstream_is_pulled_through_eight_agents_at_once() {
    let scratch = Scratch::new("pull-through").unwrap();

    // The upstream, with two images no Shoal component has seen.
    let upstream_port = free_port().unwrap();
    let upstream_storage = scratch.path("upstream-storage");
    let _upstream =
        docker_registry(&scratch, "upstream", upstream_port, &upstream_storage, "").unwrap();
    let upstream_log = scratch.path("upstream.log");
    let source = scratch.path("source");
    let mut layout = Layout::new(&source, 5).unwrap();
    let app = layout.image("amd64", &LAYER_SIZES).unwrap();
    let liar = layout.image("arm64", &[1 << 20, 5_000]).unwrap();
    let tagged = layout.image("ppc64le", &[2 << 20, 700_000, 9_000]).unwrap();
    layout.tag(&app, "app");
    layout.tag(&liar, "liar");
    layout.tag(&tagged, "tagged");
    layout.finish().unwrap();
    let original = blobs(&source);
    for (tag, repo) in [
        ("app", "team/app"),
        ("liar", "team/liar"),
        ("tagged", "team/tagged"),
    ] {
        skopeo_copy(
            &format!("oci:{}:{tag}", source.display()),
            &format!("docker://127.0.0.1:{upstream_port}/{repo}:v1"),
        );
    }
    let app = image_of(&source, "team/app", &app.digest);
    let liar = image_of(&source, "team/liar", &liar.digest);
    let tagged = image_of(&source, "team/tagged", &tagged.digest);
    // A marker request after the pushes: what the log holds up to it is the pushes'
    // (skopeo's HEADs and uploads), what follows is the pulls'.
    let marker = "/v2/pushes-done/tags/list";
    curl_status(&[], &format!("http://127.0.0.1:{upstream_port}{marker}"));
    wait_until("the marker in the upstream's log", || {
        requests_in_log(&upstream_log, "GET", marker) == 1
    });
    let pushes = std::fs::read_to_string(&upstream_log)
        .unwrap()
        .lines()
        .count();
    let pulled = |method: &str, path: &str| {
        let log = std::fs::read_to_string(&upstream_log).unwrap();
        let needle = format!("\"{method} {path} ");
        log.lines()
            .skip(pushes)
            .filter(|line| line.contains(&needle))
            .count()
    };

    // Shoal: tracker, origin (the registry backend for pt/**), build-index, eight agents.
    let origin = format!("127.0.0.1:{}", free_port().unwrap());
    let tracker = format!("127.0.0.1:{}", free_port().unwrap());
    let tracker_file = scratch.path("tracker.toml");
    std::fs::write(
        &tracker_file,
        format!("[tracker]\nlisten = \"{tracker}\"\norigins = [\"{origin}\"]\nshards = 1\n"),
    )
    .unwrap();
    let backend = format!(
        "[[backend]]\nnamespace = \"pt/**\"\nkind = \"registry\"\n\
         url = \"http://127.0.0.1:{upstream_port}\"\nstrip_prefix = \"pt/\"\n"
    );
    let origin_file = scratch.path("origin.toml");
    std::fs::write(
        &origin_file,
        format!("[origin]\nlisten = \"{origin}\"\n\n{backend}"),
    )
    .unwrap();
    let index_file = scratch.path("build-index.toml");
    std::fs::write(&index_file, &backend).unwrap();
    // Eight agents and eight skopeo processes share two cores here: a tracker request that
    // waits for the origin's upstream fetch gets more than the default 2 s.
    let agent_file = scratch.path("agent.toml");
    std::fs::write(&agent_file, "[engine]\ntracker_timeout = \"20s\"\n").unwrap();
    let origin_dir = scratch.path("origin");
    let mut procs = shoal_procs();
    listening(
        procs.start(
            "tracker",
            &["tracker", "--config", tracker_file.to_str().unwrap()],
            &scratch,
        ),
        "tracker listening on ",
    );
    listening(
        procs.start(
            "origin",
            &[
                "origin",
                "--config",
                origin_file.to_str().unwrap(),
                "--data-dir",
                origin_dir.to_str().unwrap(),
                "--tracker",
                &tracker,
                "--peer-listen",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--no-pin",
            ],
            &scratch,
        ),
        "origin listening on ",
    );
    let index_dir = scratch.path("build-index");
    let build_index = listening(
        procs.start(
            "build-index",
            &[
                "build-index",
                "--config",
                index_file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                index_dir.to_str().unwrap(),
            ],
            &scratch,
        ),
        "build-index listening on ",
    );
    let agents: Vec<String> = (0..AGENTS)
        .map(|i| {
            let dir = scratch.path(&format!("agent-{i}"));
            let args = [
                "agent",
                "--config",
                agent_file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.to_str().unwrap(),
                "--tracker",
                &tracker,
                "--origin",
                &origin,
                "--build-index",
                &build_index,
                "--shards",
                "1",
                "--no-pin",
            ];
            let name = format!("agent-{i}");
            listening(procs.start(&name, &args, &scratch), "agent listening on ")
        })
        .collect();

    // Eight pulls by digest at once, one per agent.
    let reference = |agent: &str, image: &Image| {
        format!("docker://{agent}/pt/{}@{}", image.repo, image.manifest)
    };
    let started = Instant::now();
    let mut pulls: Vec<(PathBuf, Proc)> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let dest = scratch.path(&format!("pulled-{i}"));
            let proc = start_pull(
                &scratch,
                &format!("skopeo-{i}"),
                &reference(agent, &app),
                &dest,
            );
            (dest, proc)
        })
        .collect();
    for (i, (_, pull)) in pulls.iter_mut().enumerate() {
        let exit = pull.wait_exit(WAIT);
        assert_eq!(exit, Some(true), "skopeo-{i}: {}", pull.stderr_tail(20));
    }
    let elapsed = started.elapsed();
    let n_blobs = 2 + app.layers.len();
    for (dest, _) in &pulls {
        assert_copy_of(dest, &original, n_blobs);
    }
    drop(pulls);

    // Upstream reads: the log line of a request is written once it is answered, and every
    // read the pulls needed was answered before they could finish; wait for each, then
    // count.
    let blob_path = |digest: &str| format!("/v2/team/app/blobs/{digest}");
    let manifest_path = format!("/v2/team/app/manifests/{}", app.manifest);
    for digest in app.layers.iter().chain([&app.config]) {
        wait_until(&format!("the upstream GET of {digest}"), || {
            pulled("GET", &blob_path(digest)) >= 1
        });
    }
    wait_until("the upstream GET of the manifest", || {
        pulled("GET", &manifest_path) >= 1
    });
    for digest in app.layers.iter().chain([&app.config]) {
        assert_eq!(
            pulled("GET", &blob_path(digest)),
            1,
            "upstream GETs of {digest}"
        );
        assert_eq!(
            pulled("HEAD", &blob_path(digest)),
            0,
            "upstream HEADs of {digest}"
        );
    }
    // The manifest: the origin asks the blob endpoint first (a registry keeps manifests
    // apart from blobs: 404), then the manifest endpoint, once. An agent whose read arrives
    // after that fetch finds it stored for this very repository; one that arrives while it
    // is still running has the origin ask the upstream whether the repository holds it (a
    // HEAD, no bytes): at most one per other agent, how many depends on timing.
    let manifest_gets = pulled("GET", &manifest_path);
    let manifest_blob_gets = pulled("GET", &blob_path(&app.manifest));
    let manifest_heads = pulled("HEAD", &manifest_path) + pulled("HEAD", &blob_path(&app.manifest));
    assert_eq!(manifest_gets, 1, "upstream GETs of the manifest");
    assert!(
        manifest_blob_gets <= 1,
        "{manifest_blob_gets} manifest GETs at the blob endpoint"
    );
    assert!(
        manifest_heads < AGENTS,
        "{manifest_heads} upstream HEADs of the manifest"
    );
    let log = std::fs::read_to_string(&upstream_log).unwrap();
    let pull_requests: Vec<&str> = log
        .lines()
        .skip(pushes)
        .filter(|l| l.contains(" /v2/team/app/"))
        .collect();
    eprintln!(
        "{AGENTS} pulls of {} blobs ({} bytes) in {elapsed:?}; upstream requests for team/app: {} \
         (layer and config GETs: 1 each; manifest: {manifest_gets} GET, {manifest_blob_gets} \
         404 at the blob endpoint, {manifest_heads} HEAD)",
        n_blobs,
        LAYER_SIZES.iter().sum::<usize>(),
        pull_requests.len()
    );

    // Eight pulls of the third image by tag at once: the build-index resolves the tag
    // upstream (concurrent misses share the read) and learns the manifest's membership.
    let tag_started = Instant::now();
    let mut pulls: Vec<(PathBuf, Proc)> = agents
        .iter()
        .enumerate()
        .map(|(i, agent)| {
            let dest = scratch.path(&format!("pulled-tag-{i}"));
            let from = format!("docker://{agent}/pt/{}:v1", tagged.repo);
            (
                dest.clone(),
                start_pull(&scratch, &format!("skopeo-tag-{i}"), &from, &dest),
            )
        })
        .collect();
    for (i, (_, pull)) in pulls.iter_mut().enumerate() {
        let exit = pull.wait_exit(WAIT);
        assert_eq!(exit, Some(true), "skopeo-tag-{i}: {}", pull.stderr_tail(20));
    }
    let tag_elapsed = tag_started.elapsed();
    for (dest, _) in &pulls {
        assert_copy_of(dest, &original, 2 + tagged.layers.len());
    }
    drop(pulls);
    let tagged_path = |digest: &str| format!("/v2/team/tagged/blobs/{digest}");
    let tagged_manifest = format!("/v2/team/tagged/manifests/{}", tagged.manifest);
    for digest in tagged.layers.iter().chain([&tagged.config]) {
        wait_until(&format!("the upstream GET of {digest}"), || {
            pulled("GET", &tagged_path(digest)) >= 1
        });
    }
    for digest in tagged.layers.iter().chain([&tagged.config]) {
        assert_eq!(
            pulled("GET", &tagged_path(digest)),
            1,
            "upstream GETs of {digest}"
        );
    }
    // The tag: resolved once (HEAD, the digest from Docker-Content-Digest). The manifest:
    // read once by the build-index (its media type and membership) and once by the origin
    // (its bytes, for the agents), each after a 404 at the blob endpoint.
    let tag_heads = pulled("HEAD", "/v2/team/tagged/manifests/v1");
    let tag_gets = pulled("GET", "/v2/team/tagged/manifests/v1");
    let tagged_manifest_gets = pulled("GET", &tagged_manifest);
    let tagged_manifest_blob_gets = pulled("GET", &tagged_path(&tagged.manifest));
    assert_eq!((tag_heads, tag_gets), (1, 0), "upstream tag resolutions");
    assert_eq!(
        tagged_manifest_gets, 2,
        "upstream GETs of the tagged manifest"
    );
    assert!(tagged_manifest_blob_gets <= 2);
    eprintln!(
        "{AGENTS} pulls by tag of {} blobs in {tag_elapsed:?}: tag {tag_heads} HEAD; manifest \
         {tagged_manifest_gets} GET ({tagged_manifest_blob_gets} 404 at the blob endpoint); \
         layer and config GETs: 1 each",
        2 + tagged.layers.len()
    );

    // Bad input: names outside the grammar, to the agent and to the origin.
    let (agent, layer) = (&agents[0], &liar.layers[0]);
    assert_eq!(
        curl_status(
            &[],
            &format!("http://{agent}/v2/pt/Team/liar/blobs/{layer}")
        ),
        "400"
    );
    assert_eq!(
        curl_status(
            &[],
            &format!(
                "http://{agent}/v2/pt/team//liar/manifests/{}",
                liar.manifest
            )
        ),
        "400"
    );
    for query in [
        "repo=pt%2FTeam%2Fliar",
        "repo=..%2Fliar",
        "repo=%ff",
        "repo=",
    ] {
        for path in ["/internal/blobs/", "/internal/metainfo/"] {
            let url = format!("http://{origin}{path}{layer}?{query}");
            assert_eq!(curl_status(&[], &url), "400", "{url}");
        }
    }
    assert_nothing_of(&origin_dir, layer);

    // A lying upstream: the layer's bytes replaced by others of the same length.
    let stored = docker_registry_blob_path(&upstream_storage, layer);
    let good = std::fs::read(&stored).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&stored, &bad).unwrap();
    let dest = scratch.path("pulled-liar-1");
    let mut pull = start_pull(&scratch, "skopeo-liar-1", &reference(agent, &liar), &dest);
    assert_eq!(
        pull.wait_exit(WAIT),
        Some(false),
        "a pull of lying bytes succeeded"
    );
    let output = run(
        "curl",
        &[
            "-s",
            "--max-time",
            "60",
            &format!("http://{agent}/v2/pt/team/liar/blobs/{layer}"),
        ],
    );
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(body.contains("do not match"), "{body}");
    assert_nothing_of(&origin_dir, layer);
    assert!(
        procs.stderr_of("origin").contains("do not match"),
        "the origin's log names the mismatch"
    );

    // The upstream is right again: the same agent pulls the image whole.
    std::fs::write(&stored, &good).unwrap();
    let dest = scratch.path("pulled-liar-2");
    let mut pull = start_pull(&scratch, "skopeo-liar-2", &reference(agent, &liar), &dest);
    assert_eq!(pull.wait_exit(WAIT), Some(true), "{}", pull.stderr_tail(20));
    assert_copy_of(&dest, &original, 2 + liar.layers.len());
    assert!(cached_blob_path(&origin_dir, layer).exists());
}
