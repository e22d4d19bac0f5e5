//! The image layouts of `shoal_perf::oci_layout` are accepted by a real client: skopeo (Debian)
//! inspects them and copies a multi-platform index between two layouts.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use shoal_perf::oci_layout::{Layout, OCI_INDEX};

#[test]
fn skopeo_reads_and_copies_the_layouts() {
    let root = std::env::temp_dir().join(format!("shoal-oci-skopeo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let source = root.join("source");
    let mut layout = Layout::new(&source, 11).unwrap();
    let amd64 = layout.image("amd64", &[4096, 100_000, 3]).unwrap();
    let arm64 = layout.image("arm64", &[5000]).unwrap();
    let index = layout
        .index(&[(amd64.clone(), "amd64"), (arm64, "arm64")])
        .unwrap();
    layout.tag(&amd64, "single");
    layout.tag(&index, "multi");
    layout.finish().unwrap();

    let inspect = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci:{}:single", source.display()))
        .output()
        .expect("skopeo is installed (.ci/run installs it)");
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);

    let copy = root.join("copy");
    let status = Command::new("skopeo")
        .args(["copy", "--all", "--preserve-digests", "--quiet"])
        .arg(format!("oci:{}:multi", source.display()))
        .arg(format!("oci:{}:multi", copy.display()))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let copied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(copied["manifests"][0]["mediaType"], OCI_INDEX);
    assert_eq!(copied["manifests"][0]["digest"], index.digest.as_str());
    std::fs::remove_dir_all(&root).unwrap();
}
