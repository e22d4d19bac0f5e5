//! Manifest membership and referrer records on real directories.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const SIG: &str = "application/vnd.example.signature";
const SBOM: &str = "application/vnd.example.sbom";

/// A directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("shoal-member-store-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn digest(n: u64) -> Digest {
    Digest::sha256_of(&n.to_le_bytes())
}

fn open(dir: &TempDir) -> (TagStore, RecoveryReport) {
    TagStore::open(&dir.0).unwrap()
}

fn image(n: u64) -> ManifestRecord {
    ManifestRecord {
        size: Some(100 + n),
        ..ManifestRecord::member(digest(n), OCI)
    }
}

fn referrer(n: u64, subject: u64, artifact_type: &str) -> ManifestRecord {
    ManifestRecord {
        digest: digest(n),
        media_type: OCI.to_string(),
        size: Some(500 + n),
        subject: Some(digest(subject)),
        artifact_type: Some(artifact_type.to_string()),
        annotations: Some(BTreeMap::from([("n".to_string(), n.to_string())])),
    }
}

fn referrer_digests(store: &TagStore, repo: &str, subject: u64) -> Vec<Digest> {
    let mut expected: Vec<Digest> = store
        .referrers(repo, &digest(subject))
        .unwrap()
        .iter()
        .map(|r| r.digest)
        .collect();
    expected.sort_by_key(|d| d.to_string());
    expected
}

fn sorted(mut digests: Vec<Digest>) -> Vec<Digest> {
    digests.sort_by_key(|d| d.to_string());
    digests
}

#[test]
fn membership_is_per_repository() {
    let dir = TempDir::new("membership");
    let (store, _) = open(&dir);
    store.put_manifest("a", &image(1)).unwrap();
    assert_eq!(store.manifest("a", &digest(1)).unwrap(), Some(image(1)));
    assert_eq!(store.manifest("b", &digest(1)).unwrap(), None);
    assert_eq!(store.manifest("a", &digest(2)).unwrap(), None);
    // Idempotent.
    store.put_manifest("a", &image(1)).unwrap();
    assert_eq!(store.manifest("a", &digest(1)).unwrap(), Some(image(1)));
    // A tag makes its manifest a member (bare: no size), and does not replace a record.
    store.put("b", "v1", digest(2), OCI, None).unwrap();
    assert_eq!(
        store.manifest("b", &digest(2)).unwrap(),
        Some(ManifestRecord::member(digest(2), OCI))
    );
    store.put("a", "v1", digest(1), OCI, None).unwrap();
    assert_eq!(store.manifest("a", &digest(1)).unwrap(), Some(image(1)));
    // Bad names are refused, nothing is written.
    assert!(matches!(
        store.put_manifest("../x", &image(3)),
        Err(IndexError::Name(_))
    ));
    assert!(matches!(
        store.manifest("a/../b", &digest(1)),
        Err(IndexError::Name(_))
    ));
    let mut bad = image(4);
    bad.media_type = "nope".to_string();
    assert!(matches!(
        store.put_manifest("c", &bad),
        Err(IndexError::ManifestInvalid { .. })
    ));
    assert!(!dir.0.join("repos/c").exists());
    // Memberships alone do not make a repository a catalog entry; tags do.
    assert_eq!(
        store.list_repositories(None, None).unwrap().repositories,
        ["a", "b"]
    );
}

#[test]
fn referrers_are_listed_by_subject_and_bounded() {
    let dir = TempDir::new("referrers");
    let (store, _) = open(&dir);
    // Pushed before their subject exists.
    store.put_manifest("app", &referrer(10, 1, SIG)).unwrap();
    store.put_manifest("app", &referrer(11, 1, SBOM)).unwrap();
    store.put_manifest("app", &referrer(12, 2, SIG)).unwrap();
    store.put_manifest("other", &referrer(13, 1, SIG)).unwrap();
    assert_eq!(
        referrer_digests(&store, "app", 1),
        sorted(vec![digest(10), digest(11)])
    );
    assert_eq!(referrer_digests(&store, "app", 2), [digest(12)]);
    assert_eq!(referrer_digests(&store, "other", 1), [digest(13)]);
    assert!(referrer_digests(&store, "app", 3).is_empty());
    assert!(referrer_digests(&store, "nobody", 1).is_empty());
    let listed = store.referrers("app", &digest(2)).unwrap();
    assert_eq!(listed, [referrer(12, 2, SIG)]);
    // A referrer is a member of its repository.
    assert_eq!(
        store.manifest("app", &digest(10)).unwrap(),
        Some(referrer(10, 1, SIG))
    );

    // At most REFERRERS_PER_SUBJECT_MAX per subject; a present one may be put again.
    for n in 0..REFERRERS_PER_SUBJECT_MAX as u64 - 2 {
        store
            .put_manifest("app", &referrer(1000 + n, 1, SIG))
            .unwrap();
    }
    assert_eq!(
        store.referrers("app", &digest(1)).unwrap().len(),
        REFERRERS_PER_SUBJECT_MAX
    );
    match store.put_manifest("app", &referrer(5000, 1, SIG)) {
        Err(IndexError::TooManyReferrers { max, .. }) => {
            assert_eq!(max, REFERRERS_PER_SUBJECT_MAX)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.manifest("app", &digest(5000)).unwrap(), None);
    store.put_manifest("app", &referrer(10, 1, SIG)).unwrap();
    // Another subject is not affected.
    store.put_manifest("app", &referrer(5001, 2, SIG)).unwrap();
}

#[test]
fn delete_removes_tags_referrer_and_membership() {
    let dir = TempDir::new("delete");
    let (store, _) = open(&dir);
    store.put_manifest("app", &referrer(10, 1, SIG)).unwrap();
    store.put("app", "sig", digest(10), OCI, None).unwrap();
    store.put("app", "sig2", digest(10), OCI, None).unwrap();
    store.put("app", "keep", digest(11), OCI, None).unwrap();
    store.put_manifest("other", &referrer(10, 1, SIG)).unwrap();

    let deleted = store.delete_manifest("app", &digest(10)).unwrap().unwrap();
    assert!(deleted.was_member && deleted.referrer_removed);
    let mut tags = deleted.tags.clone();
    tags.sort();
    assert_eq!(tags, ["sig", "sig2"]);
    assert_eq!(store.manifest("app", &digest(10)).unwrap(), None);
    assert_eq!(store.get("app", "sig").unwrap(), None);
    assert_eq!(
        store.get("app", "keep").unwrap().unwrap().digest,
        digest(11)
    );
    assert!(referrer_digests(&store, "app", 1).is_empty());
    assert!(!dir.0.join("repos/app/_referrers").exists());
    // The same manifest in another repository is untouched.
    assert_eq!(referrer_digests(&store, "other", 1), [digest(10)]);
    // Twice: nothing left.
    assert_eq!(store.delete_manifest("app", &digest(10)).unwrap(), None);
    // A tag-only manifest (bare membership) goes with its tag.
    let deleted = store.delete_manifest("app", &digest(11)).unwrap().unwrap();
    assert_eq!(deleted.tags, ["keep"]);
    assert!(!deleted.referrer_removed);
    assert!(
        !dir.0.join("repos/app").exists(),
        "empty directories remain"
    );
    assert_eq!(
        store.list_repositories(None, None).unwrap().repositories,
        Vec::<String>::new()
    );
}

#[test]
fn memberships_and_referrers_survive_a_restart() {
    let dir = TempDir::new("restart");
    {
        let (store, _) = open(&dir);
        store.put_manifest("app", &image(1)).unwrap();
        store.put_manifest("app", &referrer(10, 1, SIG)).unwrap();
        store.put("app", "v1", digest(1), OCI, None).unwrap();
    }
    let (store, report) = open(&dir);
    assert_eq!(report.n_manifests, 2, "{report:#?}");
    assert_eq!(report.n_referrers, 1);
    assert_eq!(report.n_manifests_restored, 0);
    assert_eq!(report.n_unexpected_paths, 0, "{report:#?}");
    assert_eq!(store.manifest("app", &digest(1)).unwrap(), Some(image(1)));
    assert_eq!(
        store.referrers("app", &digest(1)).unwrap(),
        [referrer(10, 1, SIG)]
    );
}

#[test]
fn tags_from_before_memberships_get_one_at_start_up() {
    let dir = TempDir::new("migrate");
    {
        let (store, _) = open(&dir);
        store.put("app", "v1", digest(1), OCI, None).unwrap();
        store.put("app", "v2", digest(1), OCI, None).unwrap();
        store.put("lib/x", "v1", digest(2), OCI, None).unwrap();
    }
    // A store written before memberships: tags only.
    fs::remove_dir_all(dir.0.join("repos/app/_manifests")).unwrap();
    fs::remove_dir_all(dir.0.join("repos/lib/x/_manifests")).unwrap();
    let (store, report) = open(&dir);
    assert_eq!(report.n_manifests_restored, 2, "{report:#?}");
    assert_eq!(
        store.manifest("app", &digest(1)).unwrap(),
        Some(ManifestRecord::member(digest(1), OCI))
    );
    assert!(store.manifest("lib/x", &digest(2)).unwrap().is_some());
    drop(store);
    let (_, report) = open(&dir);
    assert_eq!(report.n_manifests_restored, 0);
    assert_eq!(report.n_manifests, 2);
}

#[test]
fn corrupt_records_are_counted_at_start_up_and_skipped() {
    let dir = TempDir::new("corrupt");
    {
        let (store, _) = open(&dir);
        store.put_manifest("app", &image(1)).unwrap();
        store.put_manifest("app", &referrer(10, 1, SIG)).unwrap();
        store.put_manifest("app", &referrer(11, 1, SBOM)).unwrap();
    }
    let name = |n: u64| digest_file_name(&digest(n));
    let referrers_dir = dir.0.join("repos/app/_referrers").join(name(1));
    // A flipped bit in one referrer record, a truncated membership, a referrer record
    // copied under another subject, a temporary left by a crash, a stray name.
    let flipped = referrers_dir.join(name(11));
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[30] ^= 0x01;
    fs::write(&flipped, bytes).unwrap();
    let membership = dir.0.join("repos/app/_manifests").join(name(1));
    let bytes = fs::read(&membership).unwrap();
    fs::write(&membership, &bytes[..bytes.len() - 5]).unwrap();
    let elsewhere = dir.0.join("repos/app/_referrers").join(name(2));
    fs::create_dir_all(&elsewhere).unwrap();
    fs::copy(referrers_dir.join(name(10)), elsewhere.join(name(10))).unwrap();
    fs::write(referrers_dir.join(".tmp-x"), b"half").unwrap();
    fs::write(referrers_dir.join("stray"), b"x").unwrap();

    let (store, report) = open(&dir);
    assert_eq!(report.n_corrupt_manifest_records, 3, "{report:#?}");
    assert_eq!(report.corrupt_manifest_records.len(), 3);
    assert_eq!(report.n_referrers, 1);
    assert_eq!(report.n_temporary_removed, 1);
    assert_eq!(report.n_unexpected_paths, 1);
    assert!(!referrers_dir.join(".tmp-x").exists());
    // The listing skips the corrupt ones.
    assert_eq!(
        store.referrers("app", &digest(1)).unwrap(),
        [referrer(10, 1, SIG)]
    );
    assert!(store.referrers("app", &digest(2)).unwrap().is_empty());
    // A corrupt membership is an error, never served; a put replaces it.
    assert!(matches!(
        store.manifest("app", &digest(1)),
        Err(IndexError::CorruptManifest { .. })
    ));
    store.put_manifest("app", &image(1)).unwrap();
    assert_eq!(store.manifest("app", &digest(1)).unwrap(), Some(image(1)));
    // A delete removes a corrupt referrer record too.
    assert!(store.delete_manifest("app", &digest(11)).unwrap().is_some());
    assert!(!flipped.exists());
}

/// A tmpfs of `size` at a fresh directory, unmounted on drop (mounting needs root, as the
/// CI runs).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Every file under `root` with its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn a_full_disk_fails_the_put_and_leaves_nothing_half_written() {
    let dir = TempDir::new("full");
    let small = Tmpfs::mount(dir.0.join("small"), "256k");
    let root = small.0.join("store");
    let (store, _) = TagStore::open(&root).unwrap();
    store.put_manifest("app", &image(1)).unwrap();
    store.put_manifest("app", &referrer(10, 1, SIG)).unwrap();
    let filler = small.0.join("filler");
    {
        let mut file = File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let before = snapshot(&root);

    let mut big = referrer(11, 1, SBOM);
    big.annotations = Some(BTreeMap::from([("k".to_string(), "v".repeat(6000))]));
    match store.put_manifest("app", &big) {
        Err(IndexError::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(28), "{source}") // ENOSPC
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        snapshot(&root),
        before,
        "a put on a full disk changed the store"
    );
    assert_eq!(store.manifest("app", &digest(11)).unwrap(), None);
    assert_eq!(
        store.referrers("app", &digest(1)).unwrap(),
        [referrer(10, 1, SIG)]
    );

    // Room again: the store was not poisoned (nothing became visible), the put goes through.
    fs::remove_file(&filler).unwrap();
    store.put_manifest("app", &big).unwrap();
    assert_eq!(store.referrers("app", &digest(1)).unwrap().len(), 2);
    drop(store);
    let (_, report) = TagStore::open(&root).unwrap();
    assert_eq!(report.n_referrers, 2);
    assert_eq!(report.n_temporary_removed, 0);
}
