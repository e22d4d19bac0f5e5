//! Real clients against `shoal dev` (every component in one process): skopeo copies a
//! multi-layer image and a two-platform index into the agent's address and back out, byte
//! for byte; a retag is seen at once; a delete removes the tag and the manifest from its
//! repository only; the Docker engine pushes, pulls and runs an image built
//! `FROM scratch` with a static binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_perf::clients::{layout_blobs as blobs, run, skopeo_copy};
use shoal_perf::oci_layout::Layout;
use shoal_perf::procs::{DevCluster, Scratch, Shoal};

const WAIT: Duration = Duration::from_secs(120);

/// A running `shoal dev`; its agent's address.
fn start_dev(scratch: &Scratch, salt: u32) -> DevCluster {
    let mut shoal = Shoal::new(PathBuf::from(env!("CARGO_BIN_EXE_shoal")));
    shoal.log = "warn".to_owned();
    shoal.wait_max = WAIT;
    shoal.dev(scratch, salt).unwrap()
}

#[test]
fn skopeo_round_trips_an_image_and_an_index_byte_for_byte_and_sees_a_retag_at_once() {
    let scratch = Scratch::new("skopeo").unwrap();
    let dev = start_dev(&scratch, 2);
    let source = scratch.path("source");
    let mut layout = Layout::new(&source, 21).unwrap();
    let amd64 = layout.image("amd64", &[2 << 20, 300_000, 17]).unwrap();
    let arm64 = layout.image("arm64", &[1 << 20]).unwrap();
    let index = layout
        .index(&[(amd64.clone(), "amd64"), (arm64.clone(), "arm64")])
        .unwrap();
    layout.tag(&amd64, "single");
    layout.tag(&index, "multi");
    layout.tag(&arm64, "other");
    layout.finish().unwrap();
    let src = |tag: &str| format!("oci:{}:{tag}", source.display());
    let remote = |repo: &str| format!("docker://{}/shoal-test/{repo}", dev.agent);

    // In through the agent's address (pushes are forwarded to the proxy)...
    skopeo_copy(&src("single"), &remote("single:v1"));
    skopeo_copy(&src("multi"), &remote("multi:v1"));
    // ...and out through the agent (blobs through the swarm, manifests from the origin).
    let out = scratch.path("out");
    skopeo_copy(
        &remote("single:v1"),
        &format!("oci:{}:single", out.display()),
    );
    skopeo_copy(&remote("multi:v1"), &format!("oci:{}:multi", out.display()));
    let copied = blobs(&out);
    let original: Vec<(String, Vec<u8>)> = blobs(&source);
    assert!(!copied.is_empty());
    for (name, bytes) in &copied {
        let same = original.iter().find(|(n, _)| n == name);
        assert!(
            same.is_some_and(|(_, b)| b == bytes),
            "blob {name} differs or is new"
        );
    }
    // Every blob of both images came back (the index's and both platforms').
    assert_eq!(copied.len(), original.len());

    // Retag: `latest` moves from one image to another and the next read sees it.
    let digest_of = |reference: &str| {
        let output = run(
            "skopeo",
            &[
                "inspect",
                "--tls-verify=false",
                "--format",
                "{{.Digest}}",
                reference,
            ],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    skopeo_copy(&src("single"), &remote("retag:latest"));
    assert_eq!(digest_of(&remote("retag:latest")), amd64.digest);
    skopeo_copy(&src("other"), &remote("retag:latest"));
    assert_eq!(digest_of(&remote("retag:latest")), arm64.digest);

    // `skopeo delete` resolves the tag and deletes the manifest by digest: the tag and the
    // digest are gone from that repository, and only from it.
    run(
        "skopeo",
        &["delete", "--tls-verify=false", &remote("retag:latest")],
    );
    for reference in [
        remote("retag:latest"),
        format!("{}@{}", remote("retag"), arm64.digest),
    ] {
        let output = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw", &reference])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{reference} is still there");
    }
    assert_eq!(
        digest_of(&format!("{}@{}", remote("multi"), arm64.digest)),
        arm64.digest
    );
}

/// A static binary that prints a line, built with the toolchain running the tests.
fn static_hello(dir: &Path) -> PathBuf {
    let source = dir.join("hello.rs");
    std::fs::write(&source, "fn main() { println!(\"hello from shoal\"); }\n").unwrap();
    let binary = dir.join("hello");
    run(
        "rustc",
        &[
            "-C",
            "target-feature=+crt-static",
            "-O",
            source.to_str().unwrap(),
            "-o",
            binary.to_str().unwrap(),
        ],
    );
    binary
}

#[test]
fn docker_pushes_pulls_and_runs_an_image_through_the_agent() {
    let scratch = Scratch::new("docker").unwrap();
    let dev = start_dev(&scratch, 3);
    let context = scratch.path("context");
    std::fs::create_dir_all(&context).unwrap();
    static_hello(&context);
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY hello /hello\nCMD [\"/hello\"]\n",
    )
    .unwrap();
    let image = format!("{}/shoal-test/hello:{}", dev.agent, std::process::id());
    run(
        "docker",
        &["build", "-q", "-t", &image, context.to_str().unwrap()],
    );
    run("docker", &["push", &image]);
    run("docker", &["rmi", &image]);
    run("docker", &["pull", &image]);
    let output = run("docker", &["run", "--rm", &image]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "hello from shoal"
    );
    let _ = Command::new("docker").args(["rmi", &image]).output();
}
